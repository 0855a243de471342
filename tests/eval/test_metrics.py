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


# Honest silhouettes and motion following ------------------------------------------------------------------


def _square(frames: int, top: int, left: int, size: int = 10, shape=(24, 40)) -> np.ndarray:
    mask = np.zeros((frames, *shape), dtype=bool)
    mask[:, top : top + size, left : left + size] = True
    return mask


def test_silhouette_tolerance_forgives_one_pixel_not_five():
    from scail2.eval.metrics import SILHOUETTE_TOLERANCE, dilate, silhouette_overlap

    assert SILHOUETTE_TOLERANCE == 2
    target = _square(2, 6, 8)
    assert silhouette_overlap(target, target)["f"] == 1.0
    one = silhouette_overlap(_square(2, 7, 9), target)  # one pixel down and right
    assert one == {"precision": 1.0, "recall": 1.0, "f": 1.0}
    five = silhouette_overlap(_square(2, 6, 13), target)  # five pixels right: 7 of 10 columns within 2 px
    assert five["precision"] == pytest.approx(0.7) and five["recall"] == pytest.approx(0.7)
    assert five["f"] == pytest.approx(0.7)
    assert silhouette_overlap(_square(2, 6, 13), target, tolerance=5)["f"] == 1.0
    assert silhouette_overlap(np.zeros_like(target), target) == {"precision": 1.0, "recall": 0.0, "f": 0.0}
    empty = np.zeros_like(target)
    assert silhouette_overlap(empty, empty)["f"] == 1.0
    grown = dilate(target, 2)
    assert grown.sum() == 2 * 14 * 14 and np.array_equal(dilate(target, 0), target)


def test_pearson_is_nan_safe_and_documented_on_constant_series():
    from scail2.eval.metrics import MIN_MOVEMENT_PX, pearson

    moving = np.arange(8, dtype=float) * 2
    assert pearson(3 * moving + 1, moving) == pytest.approx(1.0)
    assert pearson(-moving, moving) == pytest.approx(-1.0)
    assert pearson(np.full(8, 5.0), moving) == 0.0  # the driver moved, the output did not
    assert math.isnan(pearson(moving, np.full(8, 5.0)))  # nothing to follow
    assert math.isnan(pearson(moving, moving * 0.1 * MIN_MOVEMENT_PX))  # under the movement floor
    gaps = moving.copy()
    gaps[[1, 4]] = np.nan  # frames where the output shows no character are left out
    assert pearson(gaps, moving) == pytest.approx(1.0)
    assert math.isnan(pearson(np.full(8, np.nan), moving))


def test_tracks_follow_two_characters_and_correlate_with_their_driver():
    from scail2.eval.metrics import foreground_tracks, identity_tracks, track_correlations

    frames, shape = 6, (30, 64)
    ids = np.zeros((frames, *shape), dtype=np.uint8)
    for t in range(frames):
        ids[t, 4 + 2 * t : 14 + 2 * t, 2 + 2 * t : 8 + 2 * t] = 1  # moves right and down, 10 x 6
        ids[t, 10 : 16 + 2 * t, 50 - 3 * t : 58 - 3 * t] = 2  # moves left and grows taller
    driver = identity_tracks(ids, 2)
    assert driver.shape == (2, frames, 4)
    assert driver[0, 0].tolist() == pytest.approx([4.5, 8.5, 10, 6])  # median, 2-98% span (whole rows)
    output = foreground_tracks(ids > 0, 2)
    assert np.allclose(output, driver)  # the k-means split finds each character
    scores = track_correlations(output, driver)
    assert scores["path_x"] == pytest.approx(1.0) and scores["path_y"] == pytest.approx(1.0)
    assert scores["extent_h"] == pytest.approx(1.0)  # the second grows; the first keeps its height: nan, left out
    assert math.isnan(scores["extent_w"])  # no character changes width
    backwards = track_correlations(foreground_tracks(ids[::-1] > 0, 2)[::-1, ::-1], driver)
    assert backwards["path_x"] == pytest.approx(-1.0)
