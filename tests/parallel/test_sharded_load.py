"""Loading the transformer sharded, each rank reading only its rows (scail2.parallel.sharded_load): the same
weights and outputs as the whole-model load, about 1/N of the bytes read and held per rank, sharded index files,
bf16 with fp32-kept modules, fused LoRAs, and one-line refusals of what it cannot load."""

from __future__ import annotations

import json

import pytest
import torch

from scail2.errors import Scail2Error
from scail2.parallel.sharded_load import check_shardable, shard_rows
from tests.parallel.launch import spawn
from tests.parallel.sharded_workers import sharded_load_worker, write_lora, write_model

TOLERANCE = 1e-6


def test_shard_rows_split_like_torch_chunk():
    for rows in (0, 1, 5, 58, 64):
        for world in (2, 3, 4):
            chunks = torch.arange(rows).chunk(world) if rows else ()
            expected = [(int(c[0]), int(c[-1]) + 1) for c in chunks if len(c)]
            got = [shard_rows(rows, rank, world) for rank in range(world)]
            assert [r for r in got if r[1] > r[0]] == expected
            assert all(r[1] >= r[0] for r in got)


@pytest.mark.parametrize(
    "world, stored, dtype, max_shard_size",
    [(2, torch.float32, "float32", None), (4, torch.bfloat16, "bfloat16", "20KB")],
    ids=["2-ranks-fp32", "4-ranks-bf16-index"],
)
def test_sharded_load_equals_the_whole_model_load(tmp_path, world, stored, dtype, max_shard_size):
    folder = write_model(tmp_path / "transformer", stored, max_shard_size)
    if max_shard_size:
        assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    lora = write_lora(tmp_path / "style.safetensors")
    out = tmp_path / "result.json"
    spawn(sharded_load_worker, world, str(out), str(folder), dtype, [f"{lora}:0.7"])
    result = json.loads(out.read_text())
    assert result["weight_difference"] == 0 and result["dtypes_match"]
    assert result["output_difference"] <= TOLERANCE
    if dtype == "bfloat16":
        assert result["dtypes"] == ["torch.bfloat16", "torch.float32"]
    for rank in result["ranks"]:  # about 1/N of the whole each, and never a whole tensor at once
        assert rank["read"] <= 1.25 * result["stored"] / world
        assert rank["held"] <= 1.25 * rank["whole"] / world
        # created while loading beyond the shards: FSDP2's padded copies of the shorter ones and the casts and
        # LoRA sums of one tensor's rows at a time, less than the largest whole tensor
        assert rank["peak_created"] - rank["held"] < rank["largest_whole"]
        assert rank["largest_read"] <= rank["largest_whole"] / world + 1024
    assert sum(rank["read"] for rank in result["ranks"]) == result["stored"]


def test_what_cannot_be_loaded_sharded_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "transformer"
    plain = {"_class_name": "SCAIL2Transformer3DModel"}
    cases = [
        ({"_class_name": "DirectAnimatorTransformer3DModel"}, None, "fused", "runs in one process"),
        (plain, "fp8", "fused", "--quantize fp8"),
        ({**plain, "quantization": {"method": "gguf", "weights": {"blocks.0.ffn.0": "Q4_K"}}}, None, "fused", "GGUF"),
        (plain, None, "unfused", "--lora-mode fused"),
    ]
    for config, quantize, lora_mode, words in cases:
        with pytest.raises(Scail2Error, match=words) as error:
            check_shardable(folder, config, quantize, lora_mode)
        assert "\n" not in str(error.value)
