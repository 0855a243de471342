"""Segment joins: the latent hand-off against a hand-built run, colour anchoring's bound, and the segment hooks
(resume a finished segment, redraw a rejected one)."""

from __future__ import annotations

import pytest
import torch

from scail2.errors import Scail2Error
from scail2.pipelines.drift import DriftSettings, anchor_colors, character_pixels, latent_history
from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline
from scail2.pipelines.segment_hooks import SegmentHooks
from tests.pipelines.components import tiny_pipeline
from tests.pipelines.pinned.regenerate import pinned_inputs

ONE = SamplingSettings(sampler="euler", steps=2, shift=3.0, guidance_scale=1.0, segment_length=9, overlap=5)


@pytest.fixture(scope="module")
def pipeline() -> SCAIL2Pipeline:
    return tiny_pipeline(seed=1)


def test_the_latent_handoff_equals_its_hand_built_reference(pipeline):
    inputs = pinned_inputs(17, "animate")  # three segments of 9 frames
    got = pipeline(inputs, ONE, seed=4, progress=False, drift=DriftSettings(handoff="latent")).frames

    text = pipeline.encode_prompts(inputs.prompt, inputs.negative_prompt, ONE.guidance_scale)
    reference = pipeline.encode_reference(inputs)
    segments = pipeline.plan_segments(17, ONE)
    noise = pipeline.prepare_latents(inputs, segments, torch.Generator().manual_seed(4))
    decoded, history = [], None
    for segment, segment_noise in zip(segments, noise):
        conditions = pipeline.prepare_segment(inputs, segment)
        latent = pipeline.denoise_segment(reference, conditions, text, segment_noise, history, ONE, replace=False)
        history = latent[:, :, -2:]  # 5 history frames = 2 latent frames, taken without a VAE round trip
        decoded.append(pipeline.decode_segment(latent))
    expected = pipeline.postprocess(pipeline.stitch_video(decoded, segments))
    assert len(segments) == 3 and torch.equal(got, expected)
    pixel = pipeline(inputs, ONE, seed=4, progress=False).frames
    assert torch.equal(pixel[:9], got[:9]) and not torch.equal(pixel, got)  # the first segment has no hand-off


def test_the_hybrid_handoff_encodes_the_first_history_frame_alone(pipeline):
    inputs = pinned_inputs(13, "animate")  # two segments
    got = pipeline(inputs, ONE, seed=4, progress=False, drift=DriftSettings(handoff="hybrid")).frames

    text = pipeline.encode_prompts(inputs.prompt, inputs.negative_prompt, ONE.guidance_scale)
    reference = pipeline.encode_reference(inputs)
    segments = pipeline.plan_segments(13, ONE)
    noise = pipeline.prepare_latents(inputs, segments, torch.Generator().manual_seed(4))
    first = pipeline.denoise_segment(
        reference, pipeline.prepare_segment(inputs, segments[0]), text, noise[0], None, ONE, replace=False
    )
    video = pipeline.decode_segment(first)
    history = torch.cat([pipeline.codec.encode(video[None, :, -5:-4]), first[:, :, -1:]], dim=2)
    second = pipeline.denoise_segment(
        reference, pipeline.prepare_segment(inputs, segments[1]), text, noise[1], history, ONE, replace=False
    )
    expected = pipeline.postprocess(pipeline.stitch_video([video, pipeline.decode_segment(second)], segments))
    assert torch.equal(got, expected)


def test_latent_history_takes_the_last_latent_frames():
    latent = torch.arange(5.0).view(1, 1, 5, 1, 1)
    segments = [None, type("S", (), {"history_frames": 5})(), type("S", (), {"history_frames": 1})()]
    assert latent_history(latent, segments[0]) is None
    assert latent_history(latent, segments[1]).flatten().tolist() == [3.0, 4.0]
    assert latent_history(latent, segments[2]).flatten().tolist() == [4.0]


def test_color_anchor_moves_the_character_mean_by_at_most_the_bound():
    video = torch.zeros(3, 2, 4, 6)
    character = torch.zeros(2, 4, 6, dtype=torch.bool)
    character[:, 1:3, 2:5] = True
    target = torch.tensor([0.5, -0.01, 0.0])
    out = anchor_colors(video, character, target, bound=0.06)
    shift = out[:, character].mean(1)
    torch.testing.assert_close(shift, torch.tensor([0.06, -0.01, 0.0]))
    assert out[:, ~character].abs().max() == 0  # the scene is untouched
    assert torch.equal(anchor_colors(video, character, target, bound=0.0), video)


def test_character_pixels_are_the_identity_colours():
    palette = torch.tensor([[[255, 255, 255], [0, 0, 0], [0, 0, 255], [255, 0, 0]]], dtype=torch.uint8)
    assert character_pixels(palette, -1).tolist() == [[False, False, True, True]]


def test_color_anchoring_changes_the_video_only_when_on(pipeline):
    inputs = pinned_inputs(13, "animate")
    plain = pipeline(inputs, ONE, seed=2, progress=False).frames
    off = pipeline(inputs, ONE, seed=2, progress=False, drift=DriftSettings(color_anchor=0.0)).frames
    on = pipeline(inputs, ONE, seed=2, progress=False, drift=DriftSettings(color_anchor=0.06)).frames
    assert torch.equal(plain, off) and not torch.equal(plain, on)
    # the first segment moves by the bound at most; later ones also start from corrected history
    assert (on[:9].float() - plain[:9].float()).abs().max() <= 0.06 * 127.5 + 1


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(handoff="tail"), "--handoff 'tail' is not one of pixel, latent"),
        (dict(color_anchor=-1), "--color-anchor must be in [0, 1]"),
    ],
)
def test_bad_drift_settings_are_one_line_errors(settings, message):
    with pytest.raises(Scail2Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        DriftSettings(**settings)


class Recorder(SegmentHooks):
    def __init__(self, saved=None, reject=(), retries=0):
        self.saved, self.reject, self.retries = dict(saved or {}), set(reject), retries
        self.kept, self.attempts = {}, {}

    def resume(self, segment):
        return self.saved.get(segment.index)

    def accept(self, segment, state):
        first = segment.index in self.reject
        self.reject.discard(segment.index)
        return not first

    def finished(self, segment, state, attempts):
        self.kept[segment.index], self.attempts[segment.index] = state, attempts


@pytest.mark.parametrize("handoff", ["pixel", "latent", "hybrid"])
def test_a_resumed_segment_gives_the_same_video(pipeline, handoff):
    inputs, drift = pinned_inputs(13, "animate"), DriftSettings(handoff=handoff)
    first = Recorder()
    whole = pipeline(inputs, ONE, seed=3, progress=False, drift=drift, segment_hooks=first).frames
    resumed = Recorder(saved={0: first.kept[0]})
    again = pipeline(inputs, ONE, seed=3, progress=False, drift=drift, segment_hooks=resumed).frames
    assert torch.equal(whole, again) and set(resumed.kept) == {1}


def test_a_rejected_segment_is_drawn_again_from_other_noise(pipeline):
    inputs = pinned_inputs(13, "animate")
    plain = pipeline(inputs, ONE, seed=3, progress=False).frames
    hooks = Recorder(reject={1}, retries=2)
    retried = pipeline(inputs, ONE, seed=3, progress=False, segment_hooks=hooks).frames
    assert hooks.attempts == {0: 1, 1: 2}
    assert torch.equal(retried[:9], plain[:9]) and not torch.equal(retried[9:], plain[9:])
    none_left = Recorder(reject={1}, retries=0)
    assert torch.equal(pipeline(inputs, ONE, seed=3, progress=False, segment_hooks=none_left).frames, plain)
