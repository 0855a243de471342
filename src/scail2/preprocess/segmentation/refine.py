"""Refinements users ask for, applied to identity maps (uint8 [H, W], 0 background, k = identity k).

Order: fill holes, drop small pieces, erode, dilate, feather. Each identity is refined on its own;
growing steps only take background pixels, so one character never eats another. Palette masks are
hard-edged (the model thresholds colours at 225), so "feathering" here smooths outlines: each
identity's mask is blurred with a Gaussian and cut again at one half, which rounds jagged or
blocky edges and removes hair-thin spurs instead of writing grey edge pixels the model would ignore.

Hole filling and the minimum area work on connected components, computed on a copy no larger than
`COMPONENT_LONG_SIDE` (areas are fractions of the frame, so the answer barely depends on resolution).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from scail2.preprocess.segmentation.filters import (
    GuideWindows,
    dilate,
    erode,
    fill_holes,
    fit_long_side,
    gaussian_blur,
    guided_coefficients,
    remove_small_components,
)

COMPONENT_LONG_SIDE = 512


@dataclass(frozen=True)
class Refinement:
    fill_holes: float = 0.0  # fill enclosed holes up to this fraction of the frame (0: off)
    min_area: float = 0.0  # drop pieces smaller than this fraction of the frame (0: off)
    erode: int = 0  # shrink every character by this many pixels
    dilate: int = 0  # grow every character by this many pixels (into background only)
    feather: float = 0.0  # smooth outlines: Gaussian sigma in pixels (0: off)

    def __post_init__(self) -> None:
        for name in ("fill_holes", "min_area"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a fraction of the frame in [0, 1], got {getattr(self, name)}")
        for name in ("erode", "dilate", "feather"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return any(value for value in asdict(self).values())

    def to_json(self) -> dict:
        return asdict(self)


def _component_ops(mask: torch.Tensor, refinement: Refinement) -> torch.Tensor:
    """Hole filling and small-piece removal of bool [H, W], on a copy of at most COMPONENT_LONG_SIDE."""
    height, width = mask.shape
    size = fit_long_side(height, width, COMPONENT_LONG_SIDE)
    small = (
        mask if size == (height, width) else F.interpolate(mask[None, None].float(), size=size, mode="area")[0, 0] > 0.5
    )
    area = size[0] * size[1]
    changed = small
    if refinement.fill_holes:
        changed = fill_holes(changed, refinement.fill_holes * area)
    if refinement.min_area:
        changed = remove_small_components(changed, refinement.min_area * area)
    if size == (height, width):
        return changed
    added = F.interpolate((changed & ~small)[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0.5
    removed = F.interpolate((small & ~changed)[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0.5
    return (mask | added) & ~removed


def refine_identities(ids: torch.Tensor, refinement: Refinement) -> torch.Tensor:
    """Apply `refinement` to an identity map uint8 [H, W]; returns a new map."""
    if not refinement.active:
        return ids
    present = [int(k) for k in torch.unique(ids) if k > 0]
    masks = {}
    for k in present:
        mask = ids == k
        if refinement.fill_holes or refinement.min_area:
            mask = _component_ops(mask, refinement)
        masks[k] = erode(mask, refinement.erode)
    out = torch.zeros_like(ids)
    for k, mask in masks.items():
        out[mask & (out == 0)] = k
    if refinement.dilate:
        for k in present:
            out[dilate(out == k, refinement.dilate) & (out == 0)] = k
    if refinement.feather:
        out = _feather(out, present, refinement.feather)
    return out


def _feather(ids: torch.Tensor, present: list[int], sigma: float) -> torch.Tensor:
    soft = torch.stack([gaussian_blur((ids == k).float(), sigma) for k in present])  # [K, H, W]
    best = soft.argmax(dim=0)
    keys = torch.tensor(present, dtype=ids.dtype)
    return torch.where(soft.sum(dim=0) >= 0.5, keys[best], torch.zeros_like(ids))


def _bilinear_taps(small: int, large: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output position of a bilinear resize from `small` to `large` samples (half-pixel centres, as
    `F.interpolate(..., align_corners=False)`): the two source indices and the second one's weight."""
    source = ((torch.arange(large, dtype=torch.float32) + 0.5) * (small / large) - 0.5).clamp_min(0.0)
    first = source.long().clamp_max(small - 1)
    return first, (first + 1).clamp_max(small - 1), source - first


def _uniform_neighbourhoods(ids: torch.Tensor, radius: int) -> torch.Tensor:
    """bool [h, w]: the identity map is one value within `radius` pixels (Chebyshev) of each pixel."""
    values = ids[None, None].float()
    highest = F.max_pool2d(values, 2 * radius + 1, stride=1, padding=radius)
    lowest = -F.max_pool2d(-values, 2 * radius + 1, stride=1, padding=radius)
    return (highest == lowest)[0, 0]


def _large_pixels(guide_large: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Colours [N, 3] in [0, 1] of the full-resolution guide (float [3, H, W] or uint8 [H, W, 3]) at (ys, xs)."""
    if guide_large.dtype == torch.uint8:
        return guide_large[ys, xs].float() / 255.0
    return guide_large[:, ys, xs].T


def upsample_identities(
    ids_small: torch.Tensor,
    guide_small: torch.Tensor,
    guide_large: torch.Tensor,
    count: int,
    radius: int = 2,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Identity map uint8 [h, w] -> [H, W] with edges on the full-resolution image (fast guided filter).

    `guide_small` [3, h, w] is the frame at working size, floats in [0, 1]; `guide_large` the full-size
    frame, float [3, H, W] in [0, 1] or the decoded uint8 [H, W, 3].

    Each identity's indicator is filtered against the background's (the filter is linear, so the
    difference decides between them). Where the identity map is one value within twice the filter's
    radius the filter returns that value (its local slope is zero), so the full-resolution work is done
    only for pixels whose bilinear taps reach a mixed neighbourhood: a band along the outlines.
    """
    height, width = guide_large.shape[:2] if guide_large.dtype == torch.uint8 else guide_large.shape[-2:]
    if tuple(guide_small.shape[-2:]) == (height, width):
        return ids_small.clone()
    one_hot = F.one_hot(ids_small.long(), count + 1).permute(2, 0, 1).float()[None]  # [1, K + 1, h, w]
    against_background = one_hot[:, 1:] - one_hot[:, :1]  # [1, K, h, w]
    slope, offset = guided_coefficients(GuideWindows.of(guide_small[None], radius, eps), against_background)
    # [h * w, 4 K] rows: each identity's three colour slopes, then the offsets
    table = torch.cat([slope[0].flatten(0, 1), offset[0]]).flatten(1).T.contiguous()
    row0, row1, row_weight = _bilinear_taps(ids_small.shape[0], height)
    col0, col1, col_weight = _bilinear_taps(ids_small.shape[1], width)
    mixed = ~_uniform_neighbourhoods(ids_small, 2 * radius)
    # a full-size pixel needs the filter when any of its four taps is mixed
    mixed = F.max_pool2d(F.pad(mixed[None, None].float(), (0, 1, 0, 1)), 2, stride=1)[0, 0] > 0
    out = ids_small[row0][:, col0]  # [H, W]: the uniform value (all four taps agree there)
    ys, xs = torch.nonzero(mixed[row0][:, col0], as_tuple=True)
    if len(ys) == 0:
        return out
    wy, wx = row_weight[ys, None], col_weight[xs, None]
    first = row0[ys] * ids_small.shape[1] + col0[xs]  # flat index of each pixel's top-left tap
    down, right = ((row1 - row0) * ids_small.shape[1])[ys], (col1 - col0)[xs]
    taps = [table.index_select(0, first + offset) for offset in (0, right, down, down + right)]  # [N, 4 K] each
    blended = torch.lerp(torch.lerp(taps[0], taps[1], wx), torch.lerp(taps[2], taps[3], wx), wy)
    colours = _large_pixels(guide_large, ys, xs)  # [N, 3]
    slopes = blended[:, : 3 * count].view(-1, count, 3)
    margin = (slopes * colours[:, None]).sum(dim=2) + blended[:, 3 * count :]  # [N, K]: identity minus background
    out[ys, xs] = _first_argmax(torch.cat([torch.zeros(len(ys), 1), margin], dim=1).T)
    return out


def _first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """uint8 [N]: index of the largest of `scores` [K, N] (the first on ties, as argmax), one comparison per
    row: argmax along a short leading dim is 100x slower on CPU."""
    best, index = scores[0].clone(), torch.zeros(scores.shape[1], dtype=torch.uint8)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        best = torch.where(better, scores[k], best)
        index[better] = k
    return index
