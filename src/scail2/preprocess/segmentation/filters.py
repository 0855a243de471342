"""Image operations the segmentation methods share, in plain PyTorch (no OpenCV or SciPy in this project).

Conventions: images are float32 [N, 3, H, W] in [0, 1] (`as_float_images` converts uint8 [N, H, W, 3]);
masks and probability maps are [N, H, W] (bool or float32); a single map may be given as [H, W] where
a function says so. All filters keep the spatial size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

# A guided filter's regulariser is relative to [0, 1] images: edges weaker than sqrt(eps) get smoothed over.
DEFAULT_GUIDED_EPS = 1e-3
# Connected components use float32 pixel indices, exact up to 2**24 pixels (4096 x 4096).
MAX_LABEL_PIXELS = 1 << 24


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one thread: at working resolution each op is far too small to gain from intra-op
    threads, and on a busy machine their synchronisation costs several times the work (measured 6x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# 1. Conversions and resizing
# ---------------------------------------------------------------------------------------------------


def as_float_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] or [H, W, 3] -> float32 [N, 3, H, W] in [0, 1]."""
    frames = torch.as_tensor(frames)
    if frames.dim() == 3:
        frames = frames[None]
    return frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the longer side at most `long_side`, aspect kept (never upscales)."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-correct resize of float [N, C, H, W] (antialiased bilinear down, bilinear up)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """sRGB [N, 3, H, W] in [0, 1] -> CIE L*a*b* (D65) [N, 3, H, W], L in [0, 100]."""
    linear = torch.where(images <= 0.04045, images / 12.92, ((images + 0.055) / 1.055) ** 2.4)
    matrix = images.new_tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    white = images.new_tensor([0.95047, 1.0, 1.08883]).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,njhw->nihw", matrix, linear) / white
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta**3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


# ---------------------------------------------------------------------------------------------------
# 2. Linear filters
# ---------------------------------------------------------------------------------------------------


def _window_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over a window of 2 * radius + 1 along `dim`, clipped at the borders (O(1) per pixel)."""
    length = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = 1
    cumulative = torch.cat([x.new_zeros(shape), torch.cumsum(x, dim)], dim)  # [..., length + 1, ...]
    positions = torch.arange(length, device=x.device)
    upper = (positions + radius + 1).clamp(max=length)
    lower = (positions - radius).clamp(min=0)
    return cumulative.index_select(dim, upper) - cumulative.index_select(dim, lower)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of the last two dims, normalised by the in-image pixel count."""
    if radius <= 0:
        return x
    total = _window_sum(_window_sum(x, radius, -2), radius, -1)
    ones = x.new_ones(x.shape[-2:])
    count = _window_sum(_window_sum(ones, radius, -2), radius, -1)
    return total / count


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of the last two dims of [..., H, W] (replicated borders); `sigma` is one
    value or (vertical, horizontal)."""
    sigma_y, sigma_x = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])  # [M, 1, H, W]
    if sigma_y > 0:
        kernel = _gaussian_kernel(sigma_y, x.dtype, x.device)
        pad = kernel.numel() // 2
        flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="replicate"), kernel.view(1, 1, -1, 1))
    if sigma_x > 0:
        kernel = _gaussian_kernel(sigma_x, x.dtype, x.device)
        pad = kernel.numel() // 2
        flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return flat.reshape(*lead, *x.shape[-2:])


def _inverse_symmetric_3x3(a: list[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of per-pixel symmetric 3x3 matrices given as (a00, a01, a02, a11, a12, a22), by cofactors."""
    a00, a01, a02, a11, a12, a22 = a
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    return [c / det for c in (c00, c01, c02, c11, c12, c22)]


def _guided_coefficients(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float):
    """Window-averaged affine coefficients (a [N, C, 3, H, W], b [N, C, H, W]) of the colour guided filter."""
    mean = lambda t: box_mean(t, radius)  # noqa: E731
    channels = guide.unbind(1)
    mean_i = [mean(c) for c in channels]
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    var = [mean(channels[i] * channels[j]) - mean_i[i] * mean_i[j] for i, j in pairs]
    for k in (0, 3, 5):
        var[k] = var[k] + eps
    inv00, inv01, inv02, inv11, inv12, inv22 = _inverse_symmetric_3x3(var)
    slopes, offsets = [], []
    for p in source.unbind(1):
        mean_p = mean(p)
        cov = [mean(c * p) - m * mean_p for c, m in zip(channels, mean_i)]
        a0 = inv00 * cov[0] + inv01 * cov[1] + inv02 * cov[2]
        a1 = inv01 * cov[0] + inv11 * cov[1] + inv12 * cov[2]
        a2 = inv02 * cov[0] + inv12 * cov[1] + inv22 * cov[2]
        b = mean_p - a0 * mean_i[0] - a1 * mean_i[1] - a2 * mean_i[2]
        slopes.append(torch.stack([mean(a0), mean(a1), mean(a2)], dim=1))
        offsets.append(mean(b))
    return torch.stack(slopes, dim=1), torch.stack(offsets, dim=1)


def guided_filter(
    guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float = DEFAULT_GUIDED_EPS
) -> torch.Tensor:
    """Edge-preserving smoothing of `source` [N, C, H, W] steered by the colour image `guide` [N, 3, H, W].

    The colour guided filter (He, Sun and Tang): inside every window the output is an affine function
    of the guide's colour, so mask edges move onto the image's edges.
    """
    slope, offset = _guided_coefficients(guide, source, radius, eps)
    return (slope * guide[:, None]).sum(dim=2) + offset


def guided_upsample(
    guide_small: torch.Tensor,
    source_small: torch.Tensor,
    guide_large: torch.Tensor,
    radius: int,
    eps: float = DEFAULT_GUIDED_EPS,
) -> torch.Tensor:
    """The fast guided filter: coefficients fitted at low resolution, applied to the full-resolution guide.

    `guide_small` [N, 3, h, w] and `source_small` [N, C, h, w] -> [N, C, H, W] at `guide_large`'s size,
    with edges following the full-resolution image at the cost of a few multiply-adds per output pixel.
    """
    slope, offset = _guided_coefficients(guide_small, source_small, radius, eps)
    size = guide_large.shape[-2:]
    batch, channels = offset.shape[:2]
    slope = F.interpolate(slope.flatten(1, 2), size=size, mode="bilinear", align_corners=False)
    offset = F.interpolate(offset, size=size, mode="bilinear", align_corners=False)
    return (slope.view(batch, channels, 3, *size) * guide_large[:, None]).sum(dim=2) + offset


# ---------------------------------------------------------------------------------------------------
# 3. Binary morphology
# ---------------------------------------------------------------------------------------------------


def _max3(x: torch.Tensor, cross: bool) -> torch.Tensor:
    """3x3 maximum (square) or maximum over the 4-neighbourhood plus centre (cross) of [M, 1, H, W]."""
    if not cross:
        return F.max_pool2d(x, 3, stride=1, padding=1)
    vertical = F.max_pool2d(x, (3, 1), stride=1, padding=(1, 0))
    horizontal = F.max_pool2d(x, (1, 3), stride=1, padding=(0, 1))
    return torch.maximum(vertical, horizontal)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of bool [..., H, W] by an octagon of `radius` pixels (alternating square and cross)."""
    if radius <= 0:
        return mask
    x = mask.reshape(-1, 1, *mask.shape[-2:]).to(torch.float32)
    for step in range(radius):
        x = _max3(x, cross=step % 2 == 1)
    return x.reshape(mask.shape) > 0.5


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of bool [..., H, W] (pixels outside the image count as set, so borders do not erode)."""
    return ~dilate(~mask, radius)


# ---------------------------------------------------------------------------------------------------
# 4. Connected components
# ---------------------------------------------------------------------------------------------------


def _run_minimum(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each horizontal run of set pixels takes the smallest label in the run (one scatter pass)."""
    starts = mask & ~F.pad(mask[:, :-1], (1, 0), value=False)
    run_ids = torch.cumsum(starts.flatten().long(), 0) - 1  # [H * W], runs numbered in raster order
    flat_mask = mask.flatten()
    runs = int(starts.sum())
    smallest = torch.full((runs,), float("inf"), dtype=labels.dtype)
    smallest.scatter_reduce_(0, run_ids[flat_mask], labels.flatten()[flat_mask], reduce="amin")
    out = labels.flatten().clone()
    out[flat_mask] = smallest[run_ids[flat_mask]]
    return out.view_as(labels)


def label_components(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """8-connected components of a bool map [H, W]: (labels int64 [H, W], 0 = unset, 1..n; n).

    Every set pixel starts with its own index. Each round spreads the smallest label along horizontal
    and vertical runs, then over 3x3 neighbourhoods (diagonals), then follows labels to the label of the
    pixel they name (pointer jumping), so even long winding shapes converge in a few rounds. Labels are
    numbered in raster order of each component's first pixel.
    """
    height, width = mask.shape
    if height * width >= MAX_LABEL_PIXELS:
        raise ValueError(f"label_components handles up to {MAX_LABEL_PIXELS} pixels, got {height}x{width}")
    if not bool(mask.any()):
        return torch.zeros(height, width, dtype=torch.int64), 0
    unset = float(height * width + 1)
    index = torch.arange(1, height * width + 1, dtype=torch.float32).view(height, width)
    labels = torch.where(mask, index, torch.full_like(index, unset))
    while True:
        spread = _run_minimum(labels, mask)
        spread = _run_minimum(spread.T.contiguous(), mask.T.contiguous()).T
        spread = -F.max_pool2d(-spread[None, None], 3, stride=1, padding=1)[0, 0]
        spread = torch.where(mask, spread, labels)
        jumped = spread.flatten()[(spread.long() - 1).clamp(max=height * width - 1)].view(height, width)
        updated = torch.where(mask, torch.minimum(spread, jumped), labels)
        if torch.equal(updated, labels):
            break
        labels = updated
    roots = labels[mask].long()
    _, dense = torch.unique(roots, return_inverse=True)  # sorted roots = raster order of first pixels
    out = torch.zeros(height, width, dtype=torch.int64)
    out[mask] = dense + 1
    return out, int(dense.max()) + 1


def component_areas(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Pixel count of each component 1..count (index 0 counts unset pixels)."""
    return torch.bincount(labels.flatten(), minlength=count + 1)


def remove_small_components(mask: torch.Tensor, min_pixels: float) -> torch.Tensor:
    """bool [H, W] without the 8-connected components smaller than `min_pixels`."""
    if min_pixels <= 1:
        return mask
    labels, count = label_components(mask)
    keep = component_areas(labels, count) >= min_pixels
    keep[0] = False
    return keep[labels]


def fill_holes(mask: torch.Tensor, max_pixels: float = math.inf) -> torch.Tensor:
    """bool [H, W] with enclosed unset regions (not touching the border) of at most `max_pixels` set."""
    if max_pixels <= 0:
        return mask
    labels, count = label_components(~mask)
    if count == 0:
        return mask
    border = torch.cat([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).unique()
    fill = component_areas(labels, count) <= max_pixels
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]
