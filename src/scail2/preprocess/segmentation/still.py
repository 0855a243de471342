"""Foreground of a single still image without weights (reference images without an alpha channel).

1. Background prior from border connectivity: the minimum barrier distance (Zhang et al., 2015) from
   the top, left and right borders in CIE Lab. A pixel that the border reaches along a path whose
   colour never varies much is background; the bottom border is not a seed because characters are
   usually cut by it.
2. A mild centre prior, then the colour-model refinement of `colour_model.refine_probability`, with the
   border pixels added to the background model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scail2.preprocess.segmentation.colour_model import ColourSamples, RefineSettings, colour_bins, refine_probability
from scail2.preprocess.segmentation.filters import rgb_to_lab


@dataclass(frozen=True)
class StillSettings:
    border_fraction: float = 0.03  # width of the border strip seeding the background [fraction of the side]
    saliency_scale: float = 6.0  # logit slope of the normalised barrier distance
    saliency_midpoint: float = 0.3  # normalised barrier distance at which the prior is 50 / 50
    centre_weight: float = 1.0  # logit bonus at the image centre, falling off with a Gaussian
    passes: int = 3  # raster-scan passes of the barrier distance
    refine: RefineSettings = field(default_factory=lambda: RefineSettings(iterations=5, colour_weight=0.8))


def _scan(
    distance: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, values: torch.Tensor, order: range, dim: int
) -> None:
    """One directional raster pass of the barrier distance along `dim` (1 rows, 2 columns), in place."""
    step = 1 if order.step > 0 else -1
    for index in order:
        line = (slice(None),) * dim + (index,)
        prev = (slice(None),) * dim + (index - step,)
        new_upper = torch.maximum(upper[prev], values[line])
        new_lower = torch.minimum(lower[prev], values[line])
        candidate = new_upper - new_lower
        better = candidate < distance[line]
        distance[line] = torch.where(better, candidate, distance[line])
        upper[line] = torch.where(better, new_upper, upper[line])
        lower[line] = torch.where(better, new_lower, lower[line])


def barrier_distance(values: torch.Tensor, seeds: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Minimum barrier distance [C, H, W] of each channel of `values` [C, H, W] from bool `seeds` [H, W].

    The barrier of a path is max - min of the values along it; raster scans in the four directions
    approximate the minimum over paths (exact on most images after two or three passes).
    """
    channels, height, width = values.shape
    distance = torch.where(seeds, 0.0, torch.inf).expand(channels, height, width).contiguous()
    upper, lower = values.clone(), values.clone()
    for _ in range(passes):
        _scan(distance, upper, lower, values, range(1, height), dim=1)
        _scan(distance, upper, lower, values, range(1, width), dim=2)
        _scan(distance, upper, lower, values, range(height - 2, -1, -1), dim=1)
        _scan(distance, upper, lower, values, range(width - 2, -1, -1), dim=2)
    return distance


def border_seeds(height: int, width: int, fraction: float) -> torch.Tensor:
    """bool [H, W]: strips along the top, left and right borders."""
    band = max(1, round(fraction * min(height, width)))
    seeds = torch.zeros(height, width, dtype=torch.bool)
    seeds[:band] = True
    seeds[:, :band] = True
    seeds[:, -band:] = True
    return seeds


def saliency_logit(image: torch.Tensor, settings: StillSettings = StillSettings()) -> torch.Tensor:
    """Foreground prior logits [H, W] of one image [3, H, W] in [0, 1]: border connectivity and centre."""
    height, width = image.shape[-2:]
    seeds = border_seeds(height, width, settings.border_fraction)
    lab = rgb_to_lab(image[None])[0]
    distance = barrier_distance(lab, seeds, settings.passes).sum(dim=0)
    scale = torch.quantile(distance.flatten(), 0.98).clamp_min(1.0)
    normalised = (distance / scale).clamp(0.0, 1.0)
    ys = torch.linspace(-1.0, 1.0, height).view(-1, 1)
    xs = torch.linspace(-1.0, 1.0, width).view(1, -1)
    centre = settings.centre_weight * torch.exp(-(xs**2 + 0.5 * ys**2) / 0.5)
    return settings.saliency_scale * (normalised - settings.saliency_midpoint) + centre - 0.5 * settings.centre_weight


def still_probability(image: torch.Tensor, settings: StillSettings = StillSettings()) -> torch.Tensor:
    """Foreground probability [H, W] of one image float [3, H, W] in [0, 1]."""
    prior = saliency_logit(image, settings)
    seeds = border_seeds(*image.shape[-2:], settings.border_fraction)
    border = ColourSamples(colour_bins(image[None])[0][seeds], torch.full((int(seeds.sum()),), 4.0))
    return refine_probability(image[None], prior[None], settings.refine, background_samples=border)[0]
