"""What the driving latents encode (`driving_signal`): "frames" as they are, or "pose_cue", DirectAnimator's grey
low-pass pose cue of the characters the palette masks mark, which drops the driver's background and colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scail2.conditioning import VideoLatentCodec, driving_signal_frames, encode_driving
from scail2.errors import Scail2Error
from scail2.preprocess.cue_settings import CueSettings
from scail2.preprocess.cues import pose_cue
from scail2.preprocess.palette import IDENTITY_COLORS
from tests.pipelines.components import tiny_vae

FRAMES, H, W = 5, 32, 48  # unequal sides, so a transposed cue fails


def driver(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frames and the palette masks of two characters (identities 1 and 3) in two boxes."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (FRAMES, H, W, 3), generator=g, dtype=torch.uint8)
    masks = torch.zeros(FRAMES, H, W, 3, dtype=torch.uint8)
    masks[:, 4:28, 6:20] = torch.tensor(IDENTITY_COLORS[0], dtype=torch.uint8)
    masks[:, 10:30, 30:44] = torch.tensor(IDENTITY_COLORS[2], dtype=torch.uint8)
    return frames, masks


def test_frames_are_encoded_as_they_are():
    frames, masks = driver()
    assert driving_signal_frames(frames, None) is frames
    assert driving_signal_frames(frames, masks, "frames") is frames


def test_the_pose_cue_is_the_cue_of_the_masked_characters():
    frames, masks = driver()
    cue = driving_signal_frames(frames, masks, "pose_cue")
    foreground = (masks != 0).any(-1).numpy()
    assert cue.dtype == torch.uint8 and cue.shape == (FRAMES, H, W, 3)
    assert np.array_equal(cue.numpy(), pose_cue(frames.numpy(), foreground, CueSettings()))
    assert torch.equal(cue[..., 0], cue[..., 2])  # grey


def test_the_pose_cue_ignores_the_background_and_keeps_the_pose():
    frames, masks = driver()
    other_scene, _ = driver(seed=5)
    foreground = (masks != 0).any(-1, keepdim=True)
    repainted = torch.where(foreground, frames, other_scene)  # the same characters in another scene
    assert torch.equal(
        driving_signal_frames(frames, masks, "pose_cue"), driving_signal_frames(repainted, masks, "pose_cue")
    )
    moved = torch.roll(masks, shifts=4, dims=2)  # the characters 4 px to the right
    assert not torch.equal(
        driving_signal_frames(frames, masks, "pose_cue"), driving_signal_frames(frames, moved, "pose_cue")
    )


def test_the_pose_cue_needs_masks_and_a_known_signal():
    frames, _ = driver()
    with pytest.raises(Scail2Error, match="needs the driving masks"):
        driving_signal_frames(frames, None, "pose_cue")
    with pytest.raises(ValueError, match="driving_signal must be one of"):
        driving_signal_frames(frames, None, "skeleton")


def test_encode_driving_encodes_the_signal_at_the_scale():
    frames, masks = driver()
    codec = VideoLatentCodec(tiny_vae())
    cue = driving_signal_frames(frames, masks, "pose_cue")
    latents = encode_driving(codec, frames, 1, "pose_cue", masks)
    assert latents.shape == (1, 16, 2, H // 8, W // 8)
    torch.testing.assert_close(latents, encode_driving(codec, cue, 1), rtol=0, atol=0)
    half = encode_driving(codec, frames, 2, "pose_cue", masks)
    torch.testing.assert_close(half, encode_driving(codec, cue, 2), rtol=0, atol=0)


def test_in_replacement_the_cue_is_pasted_over_the_characters_of_the_driving_frames():
    frames, masks = driver()
    foreground = (masks != 0).any(-1, keepdim=True)
    cue = driving_signal_frames(frames, masks, "pose_cue")
    pasted = driving_signal_frames(frames, masks, "pose_cue", mode="replace")
    assert torch.equal(pasted, torch.where(foreground, cue, frames))
    assert torch.equal(pasted[~foreground[..., 0]], frames[~foreground[..., 0]])  # the driver's scene kept
    assert torch.equal(driving_signal_frames(frames, masks, "frames", mode="replace"), frames)
