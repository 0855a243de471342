"""DirectAnimator's "skeleton instead of pose cue" source: the target's stick figures and pose cues made from
stick figures, in the cue cache."""

from __future__ import annotations

import numpy as np
import torch

from scail2.data.cue_cache import CueCacheEncoder, skeleton_pose_cue
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig, target_skeleton
from scail2.preprocess.cue_settings import CueSettings
from scail2.preprocess.cues import extract_cues
from tests.data.test_skeleton import _near
from tests.pipelines.components import tiny_vae

CONFIG = SynthConfig(height=40, width=56, frames=5, tasks=("animate",), seed=4)


def _pair(index: int = 0):
    return ProceduralPairGenerator(CONFIG).generate(index)


def test_target_skeleton_marks_each_target_character_on_its_own_body():
    for index in range(3):
        sample = _pair(index)
        skeleton = target_skeleton(sample.metadata)
        assert skeleton.frames.shape == sample.target.shape
        assert set(np.unique(skeleton.ids)) == set(np.unique(sample.target_ids))
        for identity in np.unique(sample.target_ids)[1:]:
            bones = skeleton.ids == identity
            inside = bones & _near(sample.target_ids == identity, 2)
            assert inside.sum() >= 0.9 * bones.sum(), (sample.key, identity)


def test_skeleton_pose_cue_replaces_the_pose_cue_only():
    sample, settings = _pair(), CueSettings()
    frames = extract_cues(sample.driving, sample.driving_ids, settings, detail=sample.driving_detail)
    skeleton = skeleton_pose_cue(frames, sample.metadata, "cross", settings)
    assert skeleton.pose.shape == frames.pose.shape and skeleton.pose.dtype == np.uint8
    assert np.abs(skeleton.pose.astype(int) - frames.pose.astype(int)).mean() > 0.5
    for field in ("face", "body_mask", "face_mask"):
        np.testing.assert_array_equal(getattr(skeleton, field), getattr(frames, field))
    again = skeleton_pose_cue(frames, sample.metadata, "cross", settings)
    np.testing.assert_array_equal(again.pose, skeleton.pose)  # deterministic


def test_cue_cache_with_skeleton_driving_encodes_skeleton_pose_cues():
    torch.manual_seed(0)
    vae, sample = tiny_vae(), _pair()
    from_frames = CueCacheEncoder(vae).encode(sample)
    encoder = CueCacheEncoder(vae, driving="skeleton")
    from_skeleton = encoder.encode(sample)
    assert encoder.describe()["driving"] == "skeleton"
    for side in ("same", "cross"):
        pose = f"{side}_pose_latents"
        assert from_skeleton[pose].shape == from_frames[pose].shape
        assert not torch.allclose(from_skeleton[pose], from_frames[pose])
        for field in ("pose_masks", "face_latents", "face_masks"):
            torch.testing.assert_close(from_skeleton[f"{side}_{field}"], from_frames[f"{side}_{field}"])
