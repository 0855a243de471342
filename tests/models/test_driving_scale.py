"""The transformer's `driving_scale`: 2 (SCAIL-2's half-resolution driving stream) is the default and unchanged;
1 keeps the driving stream at the video latent's size, each driving token on its video token's rotation shifted
by `rope_offset` in width, unpooled."""

from __future__ import annotations

import json

import pytest
import torch

from scail2.models.transformer_scail2 import (
    SCAIL2Transformer3DModel,
    grid_positions,
    rope_rotations,
    scail2_rope_shifts,
    scail2_rope_table,
)
from tests.models.helpers import BATCH, FRAMES, HEIGHT, WIDTH, tiny_inputs, tiny_model
from tests.parallel.launch import spawn
from tests.parallel.workers import TRANSFORMER_CASES, pipeline_cases, pipeline_worker, transformer_worker

HEAD_DIM, THETA, OFFSET = 16, 10000.0, 120
GRID = (FRAMES, HEIGHT // 2, WIDTH // 2)  # the tiny inputs' video patch grid: 3 x 4 x 6


def driving_rows(table: torch.Tensor, frames: int, height: int, width: int, extra: int) -> torch.Tensor:
    """The driving stream's rows: the sequence is [extra refs | reference | video | driving]."""
    return table[(extra + 1 + frames) * height * width :]


def test_default_is_scail2_half_resolution():
    assert SCAIL2Transformer3DModel.from_preset("tiny").config.driving_scale == 2
    model = tiny_model()
    assert model.driving_scale == 2 and tiny_inputs(model)["pose_latents"].shape[-2:] == (HEIGHT // 2, WIDTH // 2)
    default = scail2_rope_table(*GRID, 1, True, HEAD_DIM, THETA, OFFSET)
    assert torch.equal(default, scail2_rope_table(*GRID, 1, True, HEAD_DIM, THETA, OFFSET, driving_scale=2))


def test_only_scales_1_and_2_are_accepted():
    with pytest.raises(ValueError, match="driving_scale must be one of"):
        SCAIL2Transformer3DModel.from_preset("tiny", driving_scale=4)


@pytest.mark.parametrize("replace, extra", [(False, 0), (True, 1)])
def test_scale_1_rope_rows_are_the_unpooled_shifted_table(replace, extra):
    model = tiny_model(driving_scale=1)
    table = model.rope_table(*GRID, extra, replace, torch.device("cpu"))
    frames, height, width = GRID
    assert table.shape == ((extra + 1 + 2 * frames) * height * width, HEAD_DIM // 2, 2)
    shift = scail2_rope_shifts(extra, replace, OFFSET)["driving"]
    unpooled = rope_rotations(grid_positions(frames, height, width, shift), HEAD_DIM, THETA)  # complex128
    torch.testing.assert_close(
        driving_rows(table, *GRID, extra), torch.view_as_real(unpooled).float(), rtol=0, atol=1e-6
    )
    exact = scail2_rope_table(*GRID, extra, replace, HEAD_DIM, THETA, OFFSET, driving_scale=1)
    torch.testing.assert_close(table, torch.view_as_real(exact).float(), rtol=0, atol=1e-6)
    assert torch.allclose(
        driving_rows(exact, *GRID, extra).abs(), torch.ones((), dtype=torch.float64)
    )  # unit rotations, not means


def test_scale_1_driving_token_is_its_video_token_shifted_by_the_offset():
    frames, height, width = GRID
    table = scail2_rope_table(*GRID, 0, False, HEAD_DIM, THETA, OFFSET, driving_scale=1)
    video = table[height * width : (1 + frames) * height * width].reshape(frames, height, width, -1)
    driving = driving_rows(table, *GRID, 0).reshape(frames, height, width, -1)
    t_pairs, h_pairs = 4, 2  # head_dim 16 -> time/height/width pairs 4/2/2
    for t, i, j in [(0, 0, 0), (2, 3, 5), (1, 2, 0)]:
        # time and height rotations are the video token's; width is the video token's at j + offset
        assert torch.equal(driving[t, i, j, : t_pairs + h_pairs], video[t, i, j, : t_pairs + h_pairs])
        shifted = rope_rotations(torch.tensor([[t + 1, i, j + OFFSET]]), HEAD_DIM, THETA)[0]
        assert torch.equal(driving[t, i, j], shifted)


def test_scale_1_forward_shapes_and_the_driving_stream_matters():
    model = tiny_model(driving_scale=1)
    inputs = tiny_inputs(model, history=True, extra_refs=1)
    assert inputs["pose_latents"].shape == (BATCH, 16, FRAMES, HEIGHT, WIDTH)
    with torch.no_grad():
        out = model(**inputs, replace=torch.tensor([True, False])).sample
        zeroed = model(**{**inputs, "pose_latents": torch.zeros_like(inputs["pose_latents"])}).sample
    assert out.shape == (BATCH, 16, FRAMES, HEIGHT, WIDTH) and torch.isfinite(out).all()
    assert (out - zeroed).abs().max() > 1e-3


def test_scale_1_refuses_half_resolution_driving_inputs():
    model = tiny_model(driving_scale=1)
    half = tiny_inputs(tiny_model())
    with pytest.raises(ValueError, match=r"pose_latents has shape .* needs \(2, 16, 3, 8, 12\)"):
        model(**half)


def test_scale_1_save_then_load_keeps_the_scale(tmp_path):
    model = tiny_model(driving_scale=1)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["driving_scale"] == 1
    assert SCAIL2Transformer3DModel.from_pretrained(tmp_path).driving_scale == 1


def test_scale_1_under_sequence_parallelism_equals_one_process(tmp_path):
    out = tmp_path / "result.json"
    spawn(transformer_worker, 2, str(out), 2, False, False, 1)
    result = json.loads(out.read_text())
    for name in TRANSFORMER_CASES:
        assert result[name] < 1e-5, (name, result[name])


def test_scale_1_pipeline_with_guidance_split_over_two_ranks_equals_one_process(tmp_path):
    out = tmp_path / "result.json"
    spawn(pipeline_worker, 2, str(out), False, False, 1)
    result = json.loads(out.read_text())
    assert result["_grid"] == [2, 1]
    for name in pipeline_cases():  # two segments with history, replacement, extra references
        assert result[name] < 1e-5, (name, result[name])
