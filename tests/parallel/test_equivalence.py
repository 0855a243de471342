"""Several CPU ranks (gloo) give what one process gives: the transformer under Ulysses sequence parallelism (with
and without FSDP2-sharded weights, whole and chunked blocks), and the pipeline with guidance split over two rank
groups, alone and combined with sequence parallelism, over two-segment videos (clean history), replacement and
extra references."""

from __future__ import annotations

import json

import pytest

from tests.parallel.launch import spawn
from tests.parallel.workers import (
    TRANSFORMER_CASES,
    pipeline_cases,
    pipeline_worker,
    sharded_bf16_worker,
    transformer_worker,
)

TOLERANCE = 1e-5


@pytest.mark.parametrize(
    "world, heads, shard_weights, chunked",
    [(2, 2, False, False), (4, 4, True, True)],
    ids=["2-ranks", "4-ranks-sharded-chunked"],
)
def test_sequence_parallel_transformer_equals_one_process(tmp_path, world, heads, shard_weights, chunked):
    out = tmp_path / "result.json"
    spawn(transformer_worker, world, str(out), heads, shard_weights, chunked)
    result = json.loads(out.read_text())
    assert result["_ulysses"] == world
    assert result["_last_tokens"] % world  # the odd case's sequence needed padding
    for name in TRANSFORMER_CASES:
        assert result[name] < TOLERANCE, (name, result[name])


def test_sharded_bf16_weights_with_fp32_modules_give_the_same_forward(tmp_path):
    out = tmp_path / "result.json"
    spawn(sharded_bf16_worker, 2, str(out))
    result = json.loads(out.read_text())
    assert result["dtypes"] == ["torch.bfloat16", "torch.float32"] and result["difference"] == 0


@pytest.mark.parametrize("world, shard_weights, grid", [(2, False, [2, 1]), (4, True, [2, 2])], ids=["cfg", "cfg-x-sp"])
def test_parallel_pipeline_equals_one_process(tmp_path, world, shard_weights, grid):
    out = tmp_path / "result.json"
    spawn(pipeline_worker, world, str(out), shard_weights, world == 2)
    result = json.loads(out.read_text())
    assert result["_grid"] == grid
    for name in pipeline_cases():
        assert result[name] < TOLERANCE, (name, result[name])  # against guidance batched in one forward
    if world == 2:  # each rank runs one guidance pass exactly as one process runs them one after the other
        assert all(result[f"{name}_vs_sequential"] == 0 for name in pipeline_cases())
