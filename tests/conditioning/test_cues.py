"""DirectAnimator's cue tensors: soft masks packed on the latent grid, segment padding, and the encoded shapes."""

from __future__ import annotations

import numpy as np
import torch

from scail2.conditioning.codec import VideoLatentCodec
from scail2.conditioning.cues import encode_cues, pack_soft_mask, pad_cues
from scail2.preprocess.cues import extract_cues
from tests.pipelines.components import tiny_vae


def test_soft_masks_pack_four_frames_per_latent_frame_as_the_vae_does():
    mask = np.zeros((5, 16, 24), np.uint8)  # 5 frames -> 2 latent frames on a 2 x 3 grid of 8-pixel cells
    mask[0, :8, :8] = 255  # frame 0: cell (0, 0) full
    mask[3, 8:, 16:] = 51  # frame 3: cell (1, 2) at 20%
    packed = pack_soft_mask(mask, (2, 3))
    assert packed.shape == (4, 2, 2, 3)
    assert (packed[:, 0, 0, 0] == 1).all()  # frame 0 stands for all four sub-frames of latent frame 0
    expected = torch.zeros(4, 2, 3)
    expected[2, 1, 2] = 0.2  # latent frame 1 holds pixel frames 1..4: frame 3 is its third sub-frame
    torch.testing.assert_close(packed[:, 1], expected)


def test_encoded_cues_sit_on_the_video_latent_grid():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 32, 64, 3), dtype=np.uint8)
    ids = np.zeros((5, 32, 64), np.uint8)
    ids[:, 6:28, 20:40] = 1
    cues = pad_cues(extract_cues(frames, ids), 9)
    assert cues.num_frames == 9 and np.array_equal(cues.pose[8], cues.pose[4])
    encoded = encode_cues(VideoLatentCodec(tiny_vae()), cues)
    assert encoded.pose_latents.shape == encoded.face_latents.shape == (1, 16, 3, 4, 8)
    assert encoded.pose_masks.shape == encoded.face_masks.shape == (1, 4, 3, 4, 8)
    assert set(encoded.model_inputs()) == {"pose_cue_latents", "pose_masks", "face_cue_latents", "face_masks"}
