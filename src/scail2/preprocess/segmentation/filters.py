"""Image operations the segmentation methods share, in plain PyTorch (no OpenCV or SciPy in this project).

Conventions: images are float32 [N, 3, H, W] in [0, 1] (`as_float_images` converts uint8 [N, H, W, 3]);
masks and probability maps are [N, H, W] (bool or float32); a single map may be given as [H, W] where
a function says so. All filters keep the spatial size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A guided filter's regulariser is relative to [0, 1] images: edges weaker than sqrt(eps) get smoothed over.
DEFAULT_GUIDED_EPS = 1e-3


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


def _repeat_along(x: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """A size-1 slice `x` repeated `count` times along `dim` (a view)."""
    shape = list(x.shape)
    shape[dim] = count
    return x.expand(shape)


def _window_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over a window of 2 * radius + 1 along `dim`, clipped at the borders (O(1) per pixel).

    Two slices of a running sum padded with its end values: slicing, unlike gathering, stays fast along
    a non-contiguous dim.
    """
    length = x.shape[dim]
    cumulative = torch.cumsum(x, dim)  # position i: sum of x[: i + 1]
    zero = torch.zeros_like(cumulative.narrow(dim, 0, 1))
    total = cumulative.narrow(dim, length - 1, 1)
    # padded[j] = sum of x[: clamp(j - radius, 0, length)], j = 0 .. length + 2 * radius
    padded = torch.cat([_repeat_along(zero, radius + 1, dim), cumulative, _repeat_along(total, radius, dim)], dim)
    return padded.narrow(dim, 2 * radius + 1, length) - padded.narrow(dim, 0, length)


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


def _blur_along(flat: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Convolve [M, H, W] with an odd 1D `kernel` along `dim` (-2 or -1), borders replicated.

    As shifted multiply-adds over whole maps: a one-channel convolution runs 2-5x slower on CPU for the
    kernels used here (3 to 769 taps).
    """
    pad = kernel.numel() // 2
    length = flat.shape[dim]
    first, last = flat.narrow(dim, 0, 1), flat.narrow(dim, length - 1, 1)
    padded = torch.cat([_repeat_along(first, pad, dim), flat, _repeat_along(last, pad, dim)], dim)
    out = padded.narrow(dim, 0, length) * kernel[0]
    for tap in range(1, kernel.numel()):
        out.add_(padded.narrow(dim, tap, length), alpha=float(kernel[tap]))
    return out


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of the last two dims of [..., H, W] (replicated borders); `sigma` is one
    value or (vertical, horizontal)."""
    sigma_y, sigma_x = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    flat = x.reshape(-1, *x.shape[-2:])  # [M, H, W]
    if sigma_y > 0:
        flat = _blur_along(flat, _gaussian_kernel(sigma_y, x.dtype, x.device), -2)
    if sigma_x > 0:
        flat = _blur_along(flat, _gaussian_kernel(sigma_x, x.dtype, x.device), -1)
    return flat.reshape(x.shape)


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


@dataclass(frozen=True)
class GuideWindows:
    """A guide image's window statistics for the colour guided filter: its channels' means and the inverse
    of its regularised covariance (six per-pixel entries of a symmetric 3x3 matrix). They do not depend on
    the source, so filtering several sources (or one source over several iterations) computes them once."""

    radius: int
    channels: tuple[torch.Tensor, ...]  # the guide's three colour planes [N, H, W]
    means: tuple[torch.Tensor, ...]  # their window means
    inverse: tuple[torch.Tensor, ...]  # (i00, i01, i02, i11, i12, i22)

    @classmethod
    def of(cls, guide: torch.Tensor, radius: int, eps: float = DEFAULT_GUIDED_EPS) -> GuideWindows:
        """Statistics of `guide` [N, 3, H, W] over windows of `radius`, regularised by `eps`."""
        channels = guide.unbind(1)
        means = [box_mean(c, radius) for c in channels]
        pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
        var = [box_mean(channels[i] * channels[j], radius) - means[i] * means[j] for i, j in pairs]
        for k in (0, 3, 5):
            var[k] = var[k] + eps
        return cls(radius, tuple(channels), tuple(means), tuple(_inverse_symmetric_3x3(var)))


def guided_coefficients(windows: GuideWindows, source: torch.Tensor):
    """Window-averaged affine coefficients (a [N, C, 3, H, W], b [N, C, H, W]) of the colour guided filter."""
    mean = lambda t: box_mean(t, windows.radius)  # noqa: E731
    channels, mean_i = windows.channels, windows.means
    inv00, inv01, inv02, inv11, inv12, inv22 = windows.inverse
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
    guide: torch.Tensor,
    source: torch.Tensor,
    radius: int,
    eps: float = DEFAULT_GUIDED_EPS,
    windows: GuideWindows | None = None,
) -> torch.Tensor:
    """Edge-preserving smoothing of `source` [N, C, H, W] steered by the colour image `guide` [N, 3, H, W].

    The colour guided filter (He, Sun and Tang): inside every window the output is an affine function
    of the guide's colour, so mask edges move onto the image's edges. `windows` (`GuideWindows.of(guide,
    radius, eps)`) skips recomputing the guide's statistics.
    """
    slope, offset = guided_coefficients(windows or GuideWindows.of(guide, radius, eps), source)
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
    slope, offset = guided_coefficients(GuideWindows.of(guide_small, radius, eps), source_small)
    size = guide_large.shape[-2:]
    batch, channels = offset.shape[:2]
    slope = F.interpolate(slope.flatten(1, 2), size=size, mode="bilinear", align_corners=False)
    offset = F.interpolate(offset, size=size, mode="bilinear", align_corners=False)
    return (slope.view(batch, channels, 3, *size) * guide_large[:, None]).sum(dim=2) + offset


# ---------------------------------------------------------------------------------------------------
# 3. Binary morphology
# ---------------------------------------------------------------------------------------------------


def _grow3(x: torch.Tensor, cross: bool) -> torch.Tensor:
    """bool [M, H, W] grown by one pixel over the 3x3 square or the 4-neighbourhood (cross), by shifted ORs
    (on bytes, several times faster than max pooling floats)."""
    vertical = x.clone()
    vertical[:, 1:] |= x[:, :-1]
    vertical[:, :-1] |= x[:, 1:]
    source = x if cross else vertical
    horizontal = source.clone()
    horizontal[..., 1:] |= source[..., :-1]
    horizontal[..., :-1] |= source[..., 1:]
    return vertical | horizontal if cross else horizontal


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of bool [..., H, W] by an octagon of `radius` pixels (alternating square and cross)."""
    if radius <= 0:
        return mask
    x = mask.reshape(-1, *mask.shape[-2:]).to(torch.bool)
    for step in range(radius):
        x = _grow3(x, cross=step % 2 == 1)
    return x.reshape(mask.shape)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of bool [..., H, W] (pixels outside the image count as set, so borders do not erode)."""
    return ~dilate(~mask, radius)


# ---------------------------------------------------------------------------------------------------
# 4. Connected components
# ---------------------------------------------------------------------------------------------------


def _runs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizontal runs of set pixels of bool [H, W] in raster order: (row, first column, end column + 1)."""
    edges = torch.diff(F.pad(mask.to(torch.int8), (1, 1)), dim=1)  # [H, W + 1]: +1 where a run starts, -1 after
    rows, starts = torch.nonzero(edges == 1, as_tuple=True)
    _, ends = torch.nonzero(edges == -1, as_tuple=True)
    return rows, starts, ends


def _touching_runs(rows, starts, ends, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (a, b) of runs in consecutive rows that touch, diagonals included (8-connectivity)."""
    stride = width + 2
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    # run a (row y) touches the runs b of row y + 1 with start_b <= end_a and end_b >= start_a: a contiguous
    # slice of the raster-ordered runs, found by binary search
    first = torch.searchsorted(end_keys, (rows + 1) * stride + starts)
    last = torch.searchsorted(start_keys, (rows + 1) * stride + ends, right=True)
    counts = (last - first).clamp_min(0)
    upper = torch.repeat_interleave(torch.arange(len(rows)), counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return upper, torch.repeat_interleave(first, counts) + offsets


def label_components(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """8-connected components of a bool map [H, W]: (labels int64 [H, W], 0 = unset, 1..n; n).

    Works on horizontal runs rather than pixels: runs in consecutive rows that touch are joined, each run
    takes the smallest run index it is connected to (minimum propagation with pointer jumping), and
    components are numbered in raster order of their first run, which holds their first pixel.
    """
    height, width = mask.shape
    if not bool(mask.any()):
        return torch.zeros(height, width, dtype=torch.int64), 0
    rows, starts, ends = _runs(mask)
    upper, lower = _touching_runs(rows, starts, ends, width)
    root = torch.arange(len(rows))
    while True:
        joined = root.clone()
        joined.scatter_reduce_(0, upper, root[lower], reduce="amin")
        joined.scatter_reduce_(0, lower, root[upper], reduce="amin")
        joined = joined[joined]  # pointer jumping: follow the run named to its own label
        if torch.equal(joined, root):
            break
        root = joined
    _, dense = torch.unique(root, return_inverse=True)  # sorted roots = raster order of first pixels
    run_starts = torch.zeros(height * width + 1, dtype=torch.int64)
    run_starts[rows * width + starts] = 1
    run_of_pixel = torch.cumsum(run_starts[:-1], 0).view(height, width) - 1
    out = torch.zeros(height, width, dtype=torch.int64)
    out[mask] = dense[run_of_pixel[mask]] + 1
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
