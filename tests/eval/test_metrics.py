"""Video metrics against hand-computed values and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scail2.eval.metrics import (
    foreground_from_plate,
    masked_colour_error,
    psnr,
    silhouette_iou,
    ssim,
    temporal_flicker,
)

rng = np.random.default_rng(0)
VIDEO = rng.integers(0, 256, size=(3, 20, 28, 3), dtype=np.uint8)  # unequal sides


def test_psnr_hand_computed_and_masked():
    other = VIDEO.astype(np.int16)
    other[..., 0] += 10
    other = np.clip(other, 0, 255).astype(np.uint8)
    mse = ((VIDEO.astype(float) - other) ** 2).mean()
    assert psnr(other, VIDEO) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(VIDEO, VIDEO) == math.inf
    mask = np.zeros(VIDEO.shape[:3], dtype=bool)
    mask[:, :5] = True
    shifted = VIDEO.copy()
    shifted[:, 5:] = 0  # outside the mask: ignored
    assert psnr(shifted, VIDEO, mask) == math.inf


def test_ssim_identity_noise_and_symmetry():
    assert ssim(VIDEO, VIDEO) == pytest.approx(1.0)
    noisy = np.clip(VIDEO + rng.normal(0, 40, VIDEO.shape), 0, 255).astype(np.uint8)
    value = ssim(noisy, VIDEO)
    assert 0 < value < 0.9 and value == pytest.approx(ssim(VIDEO, noisy))
    flat = np.full_like(VIDEO, 128)
    assert ssim(flat, flat) == pytest.approx(1.0)


def test_silhouette_iou_and_plate_foreground():
    a = np.zeros((2, 4, 5), dtype=bool)
    b = np.zeros((2, 4, 5), dtype=bool)
    a[:, :2, :2] = True  # 8 pixels
    b[:, :2, 1:3] = True  # 8 pixels, 4 shared
    assert silhouette_iou(a, b) == pytest.approx(4 / 12)
    assert silhouette_iou(np.zeros_like(a), np.zeros_like(b)) == 1.0
    plate = np.full((2, 4, 5, 3), 100, dtype=np.uint8)
    video = plate.copy()
    video[a] = (100, 100, 200)
    assert np.array_equal(foreground_from_plate(video, plate), a)


def test_masked_colour_error_and_flicker():
    mask = np.zeros(VIDEO.shape[:3], dtype=bool)
    mask[:, 3:7, 4:9] = True
    other = VIDEO.astype(np.int16)
    other[mask] = np.clip(other[mask] + 6, 0, 255)
    expected = np.abs(other[mask] - VIDEO[mask].astype(np.int16)).mean()
    assert masked_colour_error(other.astype(np.uint8), VIDEO, mask) == pytest.approx(expected)
    assert math.isnan(masked_colour_error(VIDEO, VIDEO, np.zeros_like(mask)))
    assert temporal_flicker(VIDEO, VIDEO) == 0
    half = VIDEO // 2
    assert temporal_flicker(half + 10, half) == 0  # a constant colour offset changes nothing over time
    frozen = np.repeat(VIDEO[:1], 3, axis=0)
    expected = np.abs(np.diff(VIDEO.astype(float), axis=0)).mean()
    assert temporal_flicker(frozen, VIDEO) == pytest.approx(expected)  # a frozen video misses every change

    region = np.zeros(VIDEO.shape[:3], dtype=bool)
    region[0, 2:5, 3:11] = True  # in frame 0 only: it still takes both of its transitions' pixels (0-1 only)
    region[2, 15:18, 20:26] = True  # frame 2: the 1-2 transition
    inside = temporal_flicker(frozen, VIDEO, region)
    change = np.abs(np.diff(VIDEO.astype(float), axis=0))
    hand = (change[0, 2:5, 3:11].sum() + change[1, 15:18, 20:26].sum()) / change.size
    assert inside == pytest.approx(hand)
    assert temporal_flicker(frozen, VIDEO, np.zeros_like(region)) == 0
    assert temporal_flicker(frozen, VIDEO, np.ones_like(region)) == pytest.approx(expected)
    assert 0 < inside < expected  # the rest, total - inside, is the flicker elsewhere


def test_ssim_separable_float32_equals_the_2d_float64_window():
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = torch.outer(g / g.sum(), g / g.sum())[None, None]
    x = torch.from_numpy(a.astype(np.float64)).permute(0, 3, 1, 2).reshape(-1, 1, 24, 40)
    y = torch.from_numpy(b.astype(np.float64)).permute(0, 3, 1, 2).reshape(-1, 1, 24, 40)
    mx, my = F.conv2d(x, window), F.conv2d(y, window)
    vx, vy = F.conv2d(x * x, window) - mx**2, F.conv2d(y * y, window) - my**2
    cov = F.conv2d(x * y, window) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean().item()
    assert ssim(a, b) == pytest.approx(expected, abs=1e-5)
