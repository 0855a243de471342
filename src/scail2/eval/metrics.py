"""Video metrics against ground truth: PSNR, SSIM, silhouettes, motion following, colour error, flicker.

Videos are uint8 arrays [T, H, W, 3]; masks are bool arrays [T, H, W]. Every metric returns a float (averaged
over frames where that makes sense) so a benchmark can put them in one table.

Silhouettes. A method's character is the set of pixels where its video departs from the empty scene *in the
method's own space* (`foreground_from_plate`): the raw plate for pixel-space methods (copy-reference), the
plate's VAE round trip for anything the VAE decodes, since the VAE re-renders the background too. That
foreground is scored against the exact character mask with a boundary tolerance (`silhouette_overlap`):
precision is the share of the foreground within `tolerance` pixels of the mask, recall the share of the mask
within `tolerance` pixels of the foreground, and the score their F-measure. The tolerance (default 2 px,
Chebyshev distance, so a diagonal step counts as one pixel) forgives an anti-aliased rim and the VAE's
one-pixel blur; a pose off by more than that does not pass.

Motion following. Each character's centre (median pixel) and extent (2nd-98th percentile span of its rows and
columns) per frame, from the output's foreground split between identities (`foreground_tracks`) and from the
driver's exact identity map (`identity_tracks`), compared by Pearson correlation over the frames of a clip
(`track_correlations`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _float(video: np.ndarray) -> np.ndarray:
    return np.asarray(video, dtype=np.float64)


def psnr(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB over the whole video (or the pixels of `mask`); inf when identical."""
    error = (_float(prediction) - _float(target)) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        error = error[np.asarray(mask, dtype=bool)]
    mse = float(error.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def ssim(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid
    region only), per channel and frame, averaged. The window is applied as two 1-D passes in float32 on [0, 1]
    values (the 2-D float64 convolution was ~50x slower for a 17-frame clip and agrees to 1e-5)."""

    def planes(video: np.ndarray) -> torch.Tensor:
        video = torch.from_numpy(np.asarray(video, dtype=np.float32) / 255.0)
        return video.permute(0, 3, 1, 2).reshape(-1, 1, *video.shape[1:3])

    x, y = planes(prediction), planes(target)
    kernel = _gaussian_kernel(min(SSIM_WINDOW, *prediction.shape[1:3]), SSIM_SIGMA)
    rows, cols = kernel.view(1, 1, -1, 1), kernel.view(1, 1, 1, -1)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # one blur for the five maps
    blurred = F.conv2d(F.conv2d(stacked.view(-1, 1, *stacked.shape[2:]), rows), cols)
    mu_x, mu_y, xx, yy, xy = blurred.view(x.shape[0], 5, *blurred.shape[2:]).unbind(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.double().mean())


def silhouette_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two bool masks [T, H, W] (1.0 when both are empty)."""
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    union = np.logical_or(prediction, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(prediction, target).sum() / union)


def foreground_from_plate(video: np.ndarray, plate: np.ndarray, threshold: float = 24.0) -> np.ndarray:
    """Pixels where a video departs from its empty-scene plate by more than `threshold` levels (max over RGB)."""
    return np.abs(_float(video) - _float(plate)).max(axis=-1) > threshold


SILHOUETTE_TOLERANCE = 2  # [px] boundary tolerance of `silhouette_overlap`


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """bool [T, H, W] grown by `radius` pixels in every direction (a (2r+1)^2 square window)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask
    planes = torch.from_numpy(mask).float()[:, None]  # [T, 1, H, W]
    grown = F.max_pool2d(planes, 2 * radius + 1, stride=1, padding=radius)
    return grown[:, 0].numpy() > 0.5


def silhouette_overlap(
    prediction: np.ndarray, target: np.ndarray, tolerance: int = SILHOUETTE_TOLERANCE
) -> dict[str, float]:
    """Boundary-tolerant overlap of two bool masks [T, H, W] over the whole clip: {"precision", "recall", "f"}.

    Precision: the share of predicted pixels within `tolerance` px of the target; recall: the share of target
    pixels within `tolerance` px of the prediction; f: their harmonic mean. An empty prediction has precision 1
    (nothing wrong was drawn) and recall 0; both empty score 1 throughout."""
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    drawn, wanted = int(prediction.sum()), int(target.sum())
    if drawn == 0 and wanted == 0:
        return {"precision": 1.0, "recall": 1.0, "f": 1.0}
    precision = float((prediction & dilate(target, tolerance)).sum() / drawn) if drawn else 1.0
    recall = float((target & dilate(prediction, tolerance)).sum() / wanted) if wanted else 1.0
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f": f}


# Motion following -----------------------------------------------------------------------------------------

# A driver series that varies less than this (standard deviation, px) does not move on that axis: its
# correlation is undefined (nan) rather than a score of noise.
MIN_MOVEMENT_PX = 2.0
MIN_TRACKED_FRAMES = 3  # fewer frames with the character visible in both videos: nan


def _track_stats(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """[4] centre x, centre y, extent h, extent w of one character's pixels in one frame (nan when none)."""
    if len(rows) == 0:
        return np.full(4, np.nan)
    low_r, high_r = np.percentile(rows, (2, 98))
    low_c, high_c = np.percentile(cols, (2, 98))
    return np.array([np.median(cols), np.median(rows), high_r - low_r + 1, high_c - low_c + 1])


def identity_tracks(ids: np.ndarray, count: int) -> np.ndarray:
    """[count, T, 4] (centre x, centre y, height, width) of identities 1..count in an identity map [T, H, W]."""
    tracks = np.full((count, ids.shape[0], 4), np.nan)
    for t, frame in enumerate(ids):
        for k in range(count):
            rows, cols = np.nonzero(frame == k + 1)
            tracks[k, t] = _track_stats(rows, cols)
    return tracks


def foreground_tracks(foreground: np.ndarray, count: int, iterations: int = 4) -> np.ndarray:
    """[count, T, 4] per-character tracks from a bool foreground [T, H, W] without identities.

    One character takes the whole foreground. Several are split by k-means on pixel positions, the first
    frame seeded by x quantiles (identities are numbered left to right in the first frame, as the palette is)
    and every later frame by the centres of the frame before, so each cluster follows one character."""
    tracks = np.full((count, foreground.shape[0], 4), np.nan)
    centres = None
    for t, frame in enumerate(np.asarray(foreground, dtype=bool)):
        rows, cols = np.nonzero(frame)
        if len(rows) == 0:
            continue
        points = np.stack([cols, rows], axis=1).astype(np.float64)  # [N, 2] (x, y)
        if centres is None:
            quantiles = (np.arange(count) + 0.5) / count
            centres = np.stack([np.quantile(points[:, 0], quantiles), np.full(count, np.median(points[:, 1]))], 1)
        for _ in range(iterations):
            owner = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)  # [N]
            centres = np.stack(
                [np.median(points[owner == k], axis=0) if (owner == k).any() else centres[k] for k in range(count)]
            )
        for k in range(count):
            tracks[k, t] = _track_stats(rows[owner == k], cols[owner == k])
    return tracks


def pearson(series: np.ndarray, reference: np.ndarray) -> float:
    """Pearson correlation of `series` with `reference` over the frames where both are finite.

    nan when fewer than MIN_TRACKED_FRAMES remain or the reference moves less than MIN_MOVEMENT_PX (nothing to
    follow); 0 when the reference moves and the series is constant (it did not follow)."""
    series, reference = np.asarray(series, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    both = np.isfinite(series) & np.isfinite(reference)
    if both.sum() < MIN_TRACKED_FRAMES:
        return float("nan")
    a, b = series[both] - series[both].mean(), reference[both] - reference[both].mean()
    if b.std() < MIN_MOVEMENT_PX:
        return float("nan")
    if a.std() < 1e-9:
        return 0.0
    return float((a * b).mean() / (a.std() * b.std()))


TRACK_FIELDS = ("path_x", "path_y", "extent_h", "extent_w")


def track_correlations(output: np.ndarray, driver: np.ndarray) -> dict[str, float]:
    """Per-character Pearson correlations of two [K, T, 4] tracks, averaged over the characters with a defined
    value: {"path_x", "path_y", "extent_h", "extent_w"} (nan when no character defines one)."""
    scores = {}
    for field, name in enumerate(TRACK_FIELDS):
        values = [pearson(output[k, :, field], driver[k, :, field]) for k in range(driver.shape[0])]
        finite = [v for v in values if not np.isnan(v)]
        scores[name] = float(np.mean(finite)) if finite else float("nan")
    return scores


def masked_colour_error(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute colour error in 0-255 levels over the pixels of `mask` (nan when the mask is empty)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return float("nan")
    return float(np.abs(_float(prediction) - _float(target))[mask].mean())


def temporal_flicker(prediction: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean absolute difference between the frame-to-frame changes of the prediction and of the target, in
    0-255 levels: 0 when the prediction changes exactly as the ground truth does (a single frame gives 0).

    With `region` (bool [T, H, W]) only the transitions of pixels inside it in either frame are summed, still
    divided by all of them: the part of the flicker found there, so the parts of a split add up to the whole.
    """
    if prediction.shape[0] < 2:
        return 0.0
    error = np.abs(np.diff(_float(prediction), axis=0) - np.diff(_float(target), axis=0))
    if region is None:
        return float(error.mean())
    region = np.asarray(region, dtype=bool)
    inside = region[1:] | region[:-1]
    return float(error[np.broadcast_to(inside[..., None], error.shape)].sum() / error.size)
