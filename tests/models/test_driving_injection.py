"""The transformer's `driving_injection`: "append" (SCAIL-2's driving tokens after the video's) is the default and
unchanged; "add" (driving_scale 1 only) sums each driving token into the video token on its cell, so the sequence
is [extra refs | reference | video] and the driving stream has no RoPE rows of its own."""

from __future__ import annotations

import json

import pytest
import torch

from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel, scail2_rope_table
from scail2.pipelines.memory_activations import transformer_tokens
from tests.models.helpers import BATCH, FRAMES, HEIGHT, WIDTH, tiny_inputs, tiny_model
from tests.parallel.launch import spawn
from tests.parallel.workers import TRANSFORMER_CASES, pipeline_cases, pipeline_worker, transformer_worker

HEAD_DIM, THETA, OFFSET = 16, 10000.0, 120
GRID = (FRAMES, HEIGHT // 2, WIDTH // 2)  # the tiny inputs' video patch grid: 3 x 4 x 6
ADD = dict(driving_scale=1, driving_injection="add")


def test_append_is_the_default_and_add_needs_scale_1():
    config = SCAIL2Transformer3DModel.from_preset("tiny").config
    assert config.driving_injection == "append" and config.driving_signal == "frames"
    with pytest.raises(ValueError, match="'add' needs driving_scale 1"):
        SCAIL2Transformer3DModel.from_preset("tiny", driving_injection="add")
    with pytest.raises(ValueError, match="driving_injection must be one of"):
        SCAIL2Transformer3DModel.from_preset("tiny", driving_scale=1, driving_injection="concat")
    with pytest.raises(ValueError, match="driving_signal must be one of"):
        SCAIL2Transformer3DModel.from_preset("tiny", driving_signal="skeleton")


@pytest.mark.parametrize("replace, extra", [(False, 0), (True, 1)])
def test_added_driving_has_no_rope_rows(replace, extra):
    frames, height, width = GRID
    appended = scail2_rope_table(*GRID, extra, replace, HEAD_DIM, THETA, OFFSET, driving_scale=1)
    added = scail2_rope_table(*GRID, extra, replace, HEAD_DIM, THETA, OFFSET, 1, "add")
    assert added.shape[0] == (extra + 1 + frames) * height * width
    assert torch.equal(added, appended[: added.shape[0]])  # the rows before the driving stream, unchanged
    table = tiny_model(**ADD).rope_table(*GRID, extra, replace, torch.device("cpu"))
    torch.testing.assert_close(table, torch.view_as_real(added).float(), rtol=0, atol=1e-6)


def test_a_driving_latent_cell_reaches_only_the_video_token_on_that_cell():
    model = tiny_model(**ADD)
    inputs = tiny_inputs(model, extra_refs=1)
    frames, height, width = GRID
    with torch.no_grad():
        tokens = model.embed_tokens(**{k: inputs.get(k) for k in EMBED_ARGS})
        t, i, j = 2, 3, 7  # latent frame 2, latent row 3, column 7 -> patch row 1, column 3
        bumped = {**inputs, "pose_latents": inputs["pose_latents"].clone()}
        bumped["pose_latents"][:, :, t, i, j] += 1.0
        changed = model.embed_tokens(**{k: bumped.get(k) for k in EMBED_ARGS})
    assert tokens.shape == (BATCH, (1 + 1 + frames) * height * width, model.config.dim)
    rows = (changed - tokens).abs().amax(dim=(0, 2)).nonzero().flatten().tolist()
    assert rows == [(1 + 1 + t) * height * width + (i // 2) * width + j // 2]


EMBED_ARGS = (
    "hidden_states",
    "ref_latents",
    "ref_masks",
    "pose_latents",
    "driving_masks",
    "history_mask",
    "extra_ref_latents",
    "extra_ref_masks",
)


def test_added_driving_matters_and_batch_1_equals_batch_n():
    model = tiny_model(**ADD)
    inputs = tiny_inputs(model, history=True, extra_refs=1)
    replace = torch.tensor([True, False])
    with torch.no_grad():
        out = model(**inputs, replace=replace).sample
        zeroed = model(**{**inputs, "pose_latents": torch.zeros_like(inputs["pose_latents"])}, replace=replace).sample
        alone = [
            model(
                **{k: v[b : b + 1] if torch.is_tensor(v) and v.shape[0] == BATCH else v for k, v in inputs.items()},
                replace=bool(replace[b]),
            ).sample
            for b in range(BATCH)
        ]
    assert out.shape == (BATCH, 16, FRAMES, HEIGHT, WIDTH) and torch.isfinite(out).all()
    assert (out - zeroed).abs().max() > 1e-3
    torch.testing.assert_close(torch.cat(alone), out, rtol=1e-5, atol=1e-5)


def test_add_save_then_load_keeps_the_layout(tmp_path):
    model = tiny_model(**ADD, driving_signal="pose_cue")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["driving_injection"], saved["driving_signal"]) == ("add", "pose_cue")
    loaded = SCAIL2Transformer3DModel.from_pretrained(tmp_path)
    assert (loaded.driving_injection, loaded.driving_signal, loaded.driving_scale) == ("add", "pose_cue", 1)
    inputs = tiny_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)


def test_the_memory_plan_counts_no_driving_tokens_when_added():
    config = dict(tiny_model(**ADD).config)
    tokens = transformer_tokens(config, frames=9, height=64, width=96)
    appended = transformer_tokens({**config, "driving_injection": "append"}, frames=9, height=64, width=96)
    assert tokens.driving == 0 and appended.driving == appended.video == tokens.video == 3 * 4 * 6


def test_add_under_sequence_parallelism_equals_one_process(tmp_path):
    out = tmp_path / "result.json"
    spawn(transformer_worker, 2, str(out), 2, False, False, 1, "add")
    result = json.loads(out.read_text())
    for name in TRANSFORMER_CASES:
        assert result[name] < 1e-5, (name, result[name])


def test_add_pipeline_with_guidance_split_over_two_ranks_equals_one_process(tmp_path):
    out = tmp_path / "result.json"
    spawn(pipeline_worker, 2, str(out), False, False, 1, "add")
    result = json.loads(out.read_text())
    for name in pipeline_cases():  # two segments with history, replacement, extra references
        assert result[name] < 1e-5, (name, result[name])
