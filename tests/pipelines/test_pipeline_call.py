"""SCAIL2Pipeline.__call__'s diffusers-style arguments, the velocity closure, and the pinned outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scail2.diffusion.samplers import FlowSampler
from scail2.errors import Scail2Error
from scail2.models.encoders import encode_prompts
from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline
from scail2.pipelines.segments import plan_segments
from tests.pipelines.components import tiny_pipeline
from tests.pipelines.pinned.regenerate import PINNED, H, W, pinned_inputs, pinned_values

ONE = SamplingSettings(sampler="euler", steps=2, shift=3.0, guidance_scale=1.0, segment_length=9, overlap=5)
TWO = SamplingSettings(sampler="unipc", steps=3, shift=5.0, guidance_scale=2.5, segment_length=9, overlap=5)


@pytest.fixture(scope="module")
def pipeline() -> SCAIL2Pipeline:
    return tiny_pipeline(seed=1)


def _latent_shape(segment_length: int) -> tuple[int, ...]:
    return (1, 16, (segment_length - 1) // 4 + 1, H // 8, W // 8)


def _refuse(*args, **kwargs):
    raise AssertionError("this encoder must not run")


# ---------------------------------------------------------------------------------------------------------
# Noise: seed, generator, latents
# ---------------------------------------------------------------------------------------------------------


def test_a_generator_and_the_same_seed_give_the_same_video(pipeline):
    inputs = pinned_inputs(13, "animate")  # two segments
    by_seed = pipeline(inputs, ONE, seed=3, progress=False).frames
    by_generator = pipeline(inputs, ONE, seed=99, generator=torch.Generator().manual_seed(3), progress=False).frames
    assert torch.equal(by_seed, by_generator)


def test_the_latents_the_pipeline_would_draw_give_the_same_video(pipeline):
    inputs = pinned_inputs(13, "animate")
    segments = plan_segments(13, 9, 5)
    assert [s.length for s in segments] == [9, 9]
    g = torch.Generator().manual_seed(5)
    latents = [torch.randn(_latent_shape(s.length), generator=g) for s in segments]  # one after the other
    drawn = pipeline(inputs, ONE, seed=5, progress=False).frames
    assert torch.equal(pipeline(inputs, ONE, latents=latents, progress=False).frames, drawn)

    single = pinned_inputs(5, "animate")  # one segment: a bare tensor will do
    noise = torch.randn(_latent_shape(5), generator=torch.Generator().manual_seed(6))
    assert torch.equal(
        pipeline(single, ONE, latents=noise, progress=False).frames,
        pipeline(single, ONE, seed=6, progress=False).frames,
    )


@pytest.mark.parametrize(
    "latents, message",
    [
        ([torch.zeros(1, 16, 3, 4, 8)], "latents holds 1 tensor(s) but the video runs as 2 segment(s)"),
        (
            [torch.zeros(1, 16, 3, 4, 8), torch.zeros(1, 16, 3, 8, 4)],
            "latents[1] has shape (1, 16, 3, 8, 4) but segment 1 needs (1, 16, 3, 4, 8)",
        ),
        (torch.zeros(1, 16, 3, 4, 8), "latents holds 1 tensor(s)"),
    ],
)
def test_latents_of_the_wrong_count_or_shape_are_one_line_errors(pipeline, latents, message):
    with pytest.raises(Scail2Error) as error:
        pipeline(pinned_inputs(13, "animate"), ONE, latents=latents, progress=False)
    assert message in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# Precomputed embeddings
# ---------------------------------------------------------------------------------------------------------


def test_prompt_embeds_replace_the_text_encoder(pipeline, monkeypatch):
    inputs = pinned_inputs(5, "animate")
    expected = pipeline(inputs, TWO, seed=1, progress=False).frames
    prompts = [inputs.negative_prompt, inputs.prompt]
    negative, prompt = encode_prompts(
        pipeline.text_encoder, pipeline.tokenizer, prompts, text_len=pipeline.transformer.config.text_len
    )
    monkeypatch.setattr(pipeline.text_encoder, "forward", _refuse)
    got = pipeline(
        inputs, TWO, seed=1, prompt_embeds=prompt[None], negative_prompt_embeds=negative[None], progress=False
    ).frames
    assert torch.equal(got, expected)


def test_image_embeds_replace_the_image_encoder(pipeline, monkeypatch):
    inputs = pinned_inputs(5, "animate")
    expected = pipeline(inputs, ONE, seed=2, progress=False).frames
    image_embeds = pipeline.encode_image(inputs.reference)
    assert image_embeds.shape == (1, 257, pipeline.transformer.config.image_dim)
    monkeypatch.setattr(pipeline.image_encoder, "forward", _refuse)
    assert torch.equal(pipeline(inputs, ONE, seed=2, image_embeds=image_embeds, progress=False).frames, expected)
    # a pipeline without an image encoder runs an i2v model on given embeddings
    without = SCAIL2Pipeline(
        transformer=pipeline.transformer,
        vae=pipeline.vae,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
    )
    assert torch.equal(without(inputs, ONE, seed=2, image_embeds=image_embeds, progress=False).frames, expected)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(prompt_embeds=torch.zeros(1, 4, 7)), "prompt_embeds must be [1, N, 20]"),
        (dict(negative_prompt_embeds=torch.zeros(2, 4, 20)), "negative_prompt_embeds must be [1, N, 20]"),
        (dict(image_embeds=torch.zeros(1, 257, 5)), "image_embeds must be [1, N, "),
        (dict(output_type="pil"), "output_type must be one of uint8, pt, np, latent"),
        (
            dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"]),
            "callback_on_step_end_tensor_inputs ['prompt_embeds'] cannot be handed to a callback",
        ),
    ],
)
def test_bad_call_arguments_are_one_line_errors(pipeline, arguments, message):
    assert pipeline.transformer.config.text_dim == 20
    with pytest.raises(Scail2Error) as error:
        pipeline(pinned_inputs(5, "animate"), ONE, progress=False, **arguments)
    assert message in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# Output types
# ---------------------------------------------------------------------------------------------------------


def test_output_types_agree_with_each_other(pipeline):
    inputs = pinned_inputs(13, "replace")  # two segments: 13 frames
    run = {kind: pipeline(inputs, ONE, seed=8, output_type=kind, progress=False) for kind in ("latent", "pt", "np")}
    default = pipeline(inputs, ONE, seed=8, progress=False).frames
    pt, array, latents = run["pt"].frames, run["np"].frames, run["latent"].frames

    assert pt.shape == (13, 3, H, W) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    assert isinstance(array, np.ndarray) and array.shape == (13, H, W, 3) and array.dtype == np.float32
    assert np.array_equal(array, pt.permute(0, 2, 3, 1).numpy())
    assert default.shape == (13, H, W, 3) and default.dtype == torch.uint8
    assert (default.float() - (pt.permute(0, 2, 3, 1) * 255).round()).abs().max() <= 1  # one rounding apart

    segments = run["latent"].segments
    assert [tuple(latent.shape) for latent in latents] == [_latent_shape(s.length) for s in segments]
    decoded = [pipeline.decode_segment(latent) for latent in latents]
    assert torch.equal(pipeline.postprocess(pipeline.stitch_video(decoded, segments), "pt"), pt)


# ---------------------------------------------------------------------------------------------------------
# Step-end callback
# ---------------------------------------------------------------------------------------------------------


def test_the_callback_runs_once_per_step_of_every_segment(pipeline):
    inputs, calls = pinned_inputs(13, "animate"), []

    def callback(pipe, step_index, timestep, callback_kwargs):
        assert pipe is pipeline and set(callback_kwargs) == {"latents"}
        calls.append((step_index, float(timestep), tuple(callback_kwargs["latents"].shape)))
        return {}

    plain = pipeline(inputs, TWO, seed=9, progress=False).frames
    frames = pipeline(inputs, TWO, seed=9, callback_on_step_end=callback, progress=False).frames
    assert torch.equal(frames, plain)  # a callback that returns nothing changes nothing
    timesteps = FlowSampler("unipc", 3, 5.0).timesteps.tolist()
    assert [(i, t) for i, t, _ in calls] == list(enumerate(timesteps)) * 2
    assert {shape for _, _, shape in calls} == {_latent_shape(9)}


def test_the_callback_may_replace_the_latents(pipeline):
    inputs = pinned_inputs(13, "animate")

    def zero_last_step(pipe, step_index, timestep, callback_kwargs):
        latents = callback_kwargs["latents"]
        return {"latents": torch.zeros_like(latents)} if step_index == ONE.steps - 1 else {}

    latents = pipeline(
        inputs, ONE, seed=10, output_type="latent", callback_on_step_end=zero_last_step, progress=False
    ).frames
    assert latents[0].abs().max() == 0
    assert latents[1][:, :, :2].abs().min() > 0 and latents[1][:, :, 2:].abs().max() == 0  # history put back


# ---------------------------------------------------------------------------------------------------------
# The velocity closure and the pinned outputs
# ---------------------------------------------------------------------------------------------------------


def test_the_velocity_closure_batches_guidance_and_flags_history(pipeline):
    inputs = pinned_inputs(5, "animate")
    text = pipeline.encode_prompts(inputs.prompt, inputs.negative_prompt, 2.5)
    reference = pipeline.encode_reference(inputs)
    conditions = pipeline.prepare_segment(inputs, plan_segments(5, 5, 1)[0])
    latent, timestep = torch.randn(_latent_shape(5), generator=torch.Generator().manual_seed(11)), torch.tensor(937.0)

    both = pipeline.build_velocity_fn(reference, conditions, text, replace=False)(latent, timestep)
    assert both.shape == (2, *_latent_shape(5)[1:]) and both.dtype == torch.float32
    for row in range(2):  # the batched forward equals each text alone
        alone = pipeline.build_velocity_fn(reference, conditions, text[row : row + 1], replace=False)
        torch.testing.assert_close(both[row : row + 1], alone(latent, timestep), rtol=0, atol=1e-5)
    with_history = pipeline.build_velocity_fn(reference, conditions, text, replace=False, history_frames=1)
    assert not torch.allclose(with_history(latent, timestep), both)


def test_pinned_outputs_of_every_sampler(pipeline):
    """Regenerate with `python tests/pipelines/pinned/regenerate.py` after an intentional numerical change."""
    pinned = json.loads(PINNED.read_text())
    got = pinned_values(pipeline)
    for sampler, values in pinned.items():
        torch.testing.assert_close(
            torch.tensor(got[sampler]["segment_slice"]), torch.tensor(values["segment_slice"]), rtol=0, atol=1e-5
        )
        assert got[sampler]["segment_abs_mean"] == pytest.approx(values["segment_abs_mean"], abs=1e-5)
        assert np.abs(np.subtract(got[sampler]["video_slice"], values["video_slice"])).max() <= 1
        assert got[sampler]["video_mean"] == pytest.approx(values["video_mean"], abs=0.02)


def test_segment_settings_are_checked_when_made():
    with pytest.raises(Scail2Error, match="--segment-length must be 4n\\+1"):
        SamplingSettings(segment_length=80)
    with pytest.raises(Scail2Error, match="--overlap must be 4n\\+1"):
        SamplingSettings(overlap=4)
    assert len(plan_segments(17, 17, 17)) == 1  # one segment needs no overlap
    with pytest.raises(Scail2Error, match="--overlap 17 must be shorter than --segment-length 17 for a video of 18"):
        plan_segments(18, 17, 17)


def test_an_unknown_mode_is_refused_before_anything_is_read(tmp_path):
    from scail2.animate import AnimateRequest

    with pytest.raises(Scail2Error, match="--mode must be one of animate, replace"):
        AnimateRequest(ref=tmp_path / "none.png", driving=tmp_path / "none.mp4", out=tmp_path / "o.mp4", mode="dance")
    assert AnimateRequest(ref="r.png", driving="d.mp4", out="o.mp4", mode="replacement").mode == "replace"


def test_negative_embeddings_alone_are_refused_without_a_text_encoder():
    silent = tiny_pipeline(seed=1, text=False, image=False)
    inputs = pinned_inputs(5, "animate")
    negative = torch.zeros(1, 4, silent.transformer.config.text_dim)
    with pytest.raises(Scail2Error, match="negative_prompt_embeds were given without prompt_embeds"):
        silent(inputs, ONE, negative_prompt_embeds=negative, progress=False)


def test_a_tensor_the_callback_returns_stays_the_callers(pipeline):
    kept = []

    def callback(pipe, step_index, timestep, callback_kwargs):
        replacement = torch.zeros_like(callback_kwargs["latents"])
        kept.append(replacement)
        return {"latents": replacement}

    pipeline(pinned_inputs(13, "animate"), ONE, seed=2, callback_on_step_end=callback, progress=False)
    assert all(not tensor.any() for tensor in kept)  # the history prefix went into the loop's own copy
