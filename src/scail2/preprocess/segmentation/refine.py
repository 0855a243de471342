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
    dilate,
    erode,
    fill_holes,
    fit_long_side,
    gaussian_blur,
    guided_upsample,
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


def upsample_identities(
    ids_small: torch.Tensor,
    guide_small: torch.Tensor,
    guide_large: torch.Tensor,
    count: int,
    radius: int = 2,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Identity map uint8 [h, w] -> [H, W] with edges on the full-resolution image (fast guided filter).

    `guide_small` [3, h, w] and `guide_large` [3, H, W] are the frame at both sizes, floats in [0, 1].
    """
    one_hot = F.one_hot(ids_small.long(), count + 1).permute(2, 0, 1).float()[None]  # [1, K + 1, h, w]
    if tuple(guide_small.shape[-2:]) == tuple(guide_large.shape[-2:]):
        return ids_small.clone()
    soft = guided_upsample(guide_small[None], one_hot, guide_large[None], radius, eps)[0]
    return soft.argmax(dim=0).to(torch.uint8)
