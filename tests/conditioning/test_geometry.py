"""Latent geometry: frame counts, the model's pixel layout, the half-resolution stream and segment padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scail2.conditioning import (
    frames_to_model_video,
    half_resolution,
    latent_frame_count,
    latent_grid,
    model_video_to_frames,
    pad_frames,
    valid_length,
)


def test_latent_frame_count_needs_4n_plus_1_frames():
    assert [latent_frame_count(n) for n in (1, 5, 17, 81)] == [1, 2, 5, 21]
    for bad in (0, 2, 4, 80):
        with pytest.raises(ValueError):
            latent_frame_count(bad)


def test_valid_length_rounds_up_to_4n_plus_1():
    assert [valid_length(n) for n in (1, 2, 5, 6, 9, 78)] == [1, 5, 5, 9, 9, 81]


def test_latent_grid_is_an_eighth_per_side():
    assert latent_grid(128, 96) == (16, 12)


def test_model_video_layout_and_range():
    frames = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 4, 6, 3)
    video = frames_to_model_video(frames)
    assert video.shape == (3, 2, 4, 6)
    assert video[:, 0].max() == -1.0 and video[:, 1].min() == 1.0


def test_half_resolution_is_the_2x2_mean():
    video = torch.randn(3, 5, 16, 24, generator=torch.Generator().manual_seed(0))
    half = half_resolution(video)
    assert half.shape == (3, 5, 8, 12)
    torch.testing.assert_close(half, F.avg_pool2d(video, 2), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        half_resolution(torch.zeros(3, 1, 15, 24))


def test_model_video_round_trips_uint8_frames():
    frames = torch.randint(0, 256, (5, 4, 6, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model_video_to_frames(frames_to_model_video(frames)), frames)


def test_pad_frames_repeats_the_last_frame():
    frames = torch.arange(3 * 2).view(3, 2)
    padded = pad_frames(frames, 5)
    assert padded.shape == (5, 2)
    assert torch.equal(padded[3], frames[2]) and torch.equal(padded[4], frames[2])
    assert pad_frames(frames, 2) is frames
