"""Foreground/background colour models and the iterative refinement both weight-free methods end with.

A colour model is a smoothed 3D colour histogram (`HISTOGRAM_BINS` per channel). `refine_probability`
is a GrabCut-like loop without a graph cut: it fits a foreground and a background histogram to the
current soft mask, adds their log-likelihood ratio to the caller's prior, and replaces the graph cut's
pairwise term by a guided-filter vote of the neighbourhood, which keeps edges on the image's edges
(a mean-field step of an edge-aware CRF).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scail2.preprocess.segmentation.filters import GuideWindows, guided_filter

HISTOGRAM_BINS = 16
# Pseudo-count spread over all bins, relative to the total weight: unseen colours get a small, equal share.
HISTOGRAM_PRIOR = 1e-3
# Log-likelihood ratios are clipped so that colour alone never overrides a confident prior.
MAX_COLOUR_EVIDENCE = 4.0


@dataclass(frozen=True)
class RefineSettings:
    """Weights of the refinement loop (logit units)."""

    iterations: int = 4
    colour_weight: float = 0.6  # scale of the clipped colour log-likelihood ratio
    smooth_weight: float = 3.0  # pull towards the guided-filtered neighbourhood vote (2q - 1)
    radius_fraction: float = 0.02  # guided-filter window radius as a fraction of the image's longer side
    eps: float = 1e-3  # guided-filter regulariser (edges weaker than ~0.03 in [0, 1] units are smoothed)

    def radius(self, height: int, width: int) -> int:
        return max(1, round(self.radius_fraction * max(height, width)))


def colour_bins(images: torch.Tensor) -> torch.Tensor:
    """Histogram bin of every pixel: float [N, 3, H, W] in [0, 1] -> long [N, H, W]."""
    quantised = (images * HISTOGRAM_BINS).long().clamp_(0, HISTOGRAM_BINS - 1)
    return (quantised[:, 0] * HISTOGRAM_BINS + quantised[:, 1]) * HISTOGRAM_BINS + quantised[:, 2]


def _smooth_histogram(counts: torch.Tensor) -> torch.Tensor:
    """Blur a flat histogram [B^3] with a [1, 2, 1] / 4 kernel along each colour axis."""
    cube = counts.view(1, 1, HISTOGRAM_BINS, HISTOGRAM_BINS, HISTOGRAM_BINS)
    kernel = counts.new_tensor([0.25, 0.5, 0.25])
    for shape in ((3, 1, 1), (1, 3, 1), (1, 1, 3)):
        padding = tuple(k // 2 for k in shape)
        cube = F.conv3d(cube, kernel.view(1, 1, *shape), padding=padding)
    return cube.flatten()


def fit_histogram(bins: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Log-probability table [B^3] of a colour histogram fitted to pixels `bins` with `weights` (same shape)."""
    counts = torch.bincount(bins.flatten(), weights=weights.flatten().to(torch.float32), minlength=HISTOGRAM_BINS**3)
    counts = _smooth_histogram(counts)
    total = counts.sum()
    counts = counts + HISTOGRAM_PRIOR * total.clamp_min(1.0) / counts.numel()
    return torch.log(counts / counts.sum())


def colour_evidence(bins: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Clipped log p(colour | foreground) - log p(colour | background) per pixel."""
    return (foreground[bins] - background[bins]).clamp_(-MAX_COLOUR_EVIDENCE, MAX_COLOUR_EVIDENCE)


@dataclass
class ColourSamples:
    """Pixels known to belong to one side (bins and weights, any shape), added to that side's histogram."""

    bins: torch.Tensor
    weights: torch.Tensor


def _fit_side(bins: torch.Tensor, weights: torch.Tensor, extra: ColourSamples | None) -> torch.Tensor:
    if extra is None:
        return fit_histogram(bins, weights)
    return fit_histogram(
        torch.cat([bins.flatten(), extra.bins.flatten()]), torch.cat([weights.flatten(), extra.weights.flatten()])
    )


def refine_probability(
    images: torch.Tensor,
    prior_logit: torch.Tensor,
    settings: RefineSettings = RefineSettings(),
    *,
    foreground_samples: ColourSamples | None = None,
    background_samples: ColourSamples | None = None,
    per_frame: bool = False,
) -> torch.Tensor:
    """Foreground probability [N, H, W] of `images` [N, 3, H, W] from a prior (logits [N, H, W]).

    `foreground_samples` / `background_samples` add pixels known to be on one side to that side's colour
    model (for example an image's border, or the moving pixels of a clip). With `per_frame` each frame
    fits its own colour models, otherwise one pair of models serves the whole batch (a clip's
    appearance is shared across its frames).
    """
    bins = colour_bins(images)
    radius = settings.radius(*images.shape[-2:])
    probability = torch.sigmoid(prior_logit)
    windows = GuideWindows.of(images, radius, settings.eps)  # the same guide in every iteration
    groups = [slice(k, k + 1) for k in range(images.shape[0])] if per_frame else [slice(None)]
    for _ in range(settings.iterations):
        evidence = torch.empty_like(probability)
        for group in groups:
            foreground = _fit_side(bins[group], probability[group], foreground_samples)
            background = _fit_side(bins[group], 1.0 - probability[group], background_samples)
            evidence[group] = colour_evidence(bins[group], foreground, background)
        vote = guided_filter(images, probability[:, None], radius, settings.eps, windows)[:, 0].clamp_(0.0, 1.0)
        logit = prior_logit + settings.colour_weight * evidence + settings.smooth_weight * (2.0 * vote - 1.0)
        probability = torch.sigmoid(logit)
    return probability
