"""Generation with a transformer of driving_scale 1: the pipeline reads the scale from the model and builds the
driving stream at the video latent's size, for both modes, over two segments with history, extra references and
two characters."""

from __future__ import annotations

import pytest
import torch

from scail2.conditioning import AnimationInputs, compress_driving_masks, driving_signal_frames, encode_driving
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from scail2.pipelines.segments import plan_segments
from tests.pipelines.components import tiny_pipeline

H, W, FRAMES = 64, 96, 9
SETTINGS = SamplingSettings(sampler="euler", steps=2, guidance_scale=2.0, segment_length=5, overlap=1)


def two_character_inputs(mode: str, seed: int = 0) -> AnimationInputs:
    """Random driving frames, a blue and a red character's masks, one extra reference view."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(FRAMES, H, W, 3, dtype=torch.uint8)
    masks[:, 16:48, 8:40] = torch.tensor((0, 0, 255), dtype=torch.uint8)
    masks[:, 8:56, 56:88] = torch.tensor((255, 0, 0), dtype=torch.uint8)
    ref_mask = torch.full((3, H, W), 1.0 if mode == "animate" else -1.0)
    ref_mask[:, 10:50, 10:40] = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    ref_mask[:, 10:50, 50:80] = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    return AnimationInputs(
        reference=torch.rand(3, H, W, generator=g) * 2 - 1,
        reference_mask=ref_mask,
        driving=torch.randint(0, 256, (FRAMES, H, W, 3), generator=g, dtype=torch.uint8),
        driving_masks=masks,
        mode=mode,
        prompt="two robots dance",
        extra_references=[(torch.rand(3, H, W, generator=g) * 2 - 1, ref_mask.clone())],
    )


@pytest.fixture(scope="module")
def pipeline():
    pipe = tiny_pipeline(seed=2, driving_scale=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_segment_conditions_are_at_the_video_latent_size(pipeline):
    inputs = two_character_inputs("animate")
    segment = plan_segments(FRAMES, 5, 1)[1]
    conditions = pipeline.prepare_segment(inputs, segment)
    assert conditions.pose_latents.shape == (1, 16, 2, H // 8, W // 8)
    window = inputs.driving_masks[segment.start : segment.start + segment.real_frames]
    assert torch.equal(conditions.driving_masks, compress_driving_masks(window, scale=1))


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_two_segments_generate_and_follow_the_driving_video(pipeline, mode):
    assert [s.start for s in plan_segments(FRAMES, 5, 1)] == [0, 4]
    inputs = two_character_inputs(mode)
    result = pipeline(inputs, SETTINGS, seed=3, progress=False)
    assert result.frames.shape == (FRAMES, H, W, 3) and len(result.segments) == 2
    other = two_character_inputs(mode, seed=9)
    other.reference, other.reference_mask, other.extra_references = (
        inputs.reference,
        inputs.reference_mask,
        inputs.extra_references,
    )
    changed = pipeline(other, SETTINGS, seed=3, progress=False)  # only the driving frames differ
    assert not torch.equal(result.frames, changed.frames)


def test_a_pose_cue_model_gets_the_pose_cue_of_each_segment():
    pipe = tiny_pipeline(seed=2, driving_scale=1, driving_injection="add", driving_signal="pose_cue")
    inputs = two_character_inputs("animate")
    segment = plan_segments(FRAMES, 5, 1)[1]
    conditions = pipe.prepare_segment(inputs, segment)
    window = slice(segment.start, segment.start + segment.real_frames)
    cue = driving_signal_frames(inputs.driving[window], inputs.driving_masks[window], "pose_cue")
    torch.testing.assert_close(conditions.pose_latents, encode_driving(pipe.codec, cue, 1), rtol=0, atol=0)
    assert not torch.equal(conditions.pose_latents, pipeline_frames_latents(pipe, inputs, window))


def pipeline_frames_latents(pipe, inputs: AnimationInputs, window: slice) -> torch.Tensor:
    return encode_driving(pipe.codec, inputs.driving[window], 1)


@pytest.mark.parametrize("task", ["animate", "replace"])
@pytest.mark.parametrize(
    "layout", [{}, dict(driving_scale=1, driving_injection="add", driving_signal="pose_cue")], ids=["half", "cue"]
)
def test_generation_gets_the_driving_inputs_training_cached(layout, task):
    from scail2.data.latent_cache import CacheEncoder
    from scail2.data.pairs import ProceduralPairGenerator, SynthConfig

    pipe = tiny_pipeline(seed=2, text=False, image=False, **layout)
    sample = ProceduralPairGenerator(SynthConfig(height=32, width=64, frames=5, tasks=(task,), seed=4)).generate(0)
    assert sample.mode == task
    transformer = pipe.transformer
    cached = CacheEncoder(
        pipe.vae, driving_scale=transformer.driving_scale, driving_signal=transformer.driving_signal
    ).encode(sample)
    conditions = pipe.prepare_segment(AnimationInputs.from_pair(sample), plan_segments(5)[0])
    torch.testing.assert_close(conditions.pose_latents[0], cached["pose_latents"], rtol=0, atol=1e-6)
    torch.testing.assert_close(conditions.driving_masks[0], cached["driving_masks"], rtol=0, atol=0)
    if task == "replace" and transformer.driving_signal == "pose_cue":  # the driving scene stays around the cue
        masks = torch.from_numpy(sample.driving_mask())
        as_animation = encode_driving(pipe.codec, torch.from_numpy(sample.driving.copy()), 1, "pose_cue", masks)
        assert not torch.allclose(conditions.pose_latents, as_animation)
