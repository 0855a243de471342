"""Drift control between segments: how history is handed over, and bounded colour anchoring (docs/drift.md).

Hand-off (`--handoff`):

- `pixel` (upstream): the previous segment's last `overlap` decoded frames are encoded again by the VAE and
  imposed as the next segment's clean history. Each join adds one decode/encode round trip, whose small colour
  and sharpness losses compound over a long video.
- `latent`: the previous segment's last clean latent frames are imposed directly, without a round trip. The
  latent frames cover the same pixel frames except the first, which summarises the four frames ending at the
  first history frame (the VAE's first latent frame of a fresh encoding holds that one frame alone).
- `hybrid`: the first history frame is encoded alone, as a fresh encoding would (one image through the VAE,
  not the whole overlap), and the clean latent frames of the rest are handed over as they are.

Colour anchoring (`--color-anchor BOUND`): after a segment is decoded, the mean colour of its character pixels
(the driving masks' identity colours) is moved towards the reference character's mean colour by at most
`BOUND` per channel, in the model's [-1, 1] range (0.06 is about 8 levels of 255). Under the pixel hand-off the
correction also reaches the next segment through its history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scail2.conditioning import latent_frame_count
from scail2.errors import Scail2Error
from scail2.pipelines.segments import Segment

HANDOFFS = ("pixel", "latent", "hybrid")
# The palette colours that mark a character spread their channels by the full range; white and black do not.
CHARACTER_SPREAD = 1.0  # in [-1, 1] units, i.e. 128 levels of 255


@dataclass(frozen=True)
class DriftSettings:
    """How segments join: the hand-off of the history and the colour anchor's bound (0: off)."""

    handoff: str = "pixel"
    color_anchor: float = 0.0

    def __post_init__(self):
        if self.handoff not in HANDOFFS:
            raise Scail2Error(f"--handoff {self.handoff!r} is not one of {', '.join(HANDOFFS)}")
        if not 0.0 <= self.color_anchor <= 1.0:
            raise Scail2Error(f"--color-anchor must be in [0, 1] (0 disables it), got {self.color_anchor}")


def latent_history(latent: torch.Tensor, following: Segment | None) -> torch.Tensor | None:
    """The last clean latent frames [1, z, t_h, h, w] of a denoised segment that the following segment takes
    as its history under the latent hand-off; None after the last segment."""
    if following is None or not following.history_frames:
        return None
    return latent[:, :, -latent_frame_count(following.history_frames) :].clone()


def character_pixels(palette: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Bool map of the identity-coloured pixels of palette masks (uint8 or [-1, 1] floats) along `channel_dim`."""
    values = palette.float() / 127.5 - 1.0 if palette.dtype == torch.uint8 else palette.float()
    spread = values.amax(dim=channel_dim) - values.amin(dim=channel_dim)
    return spread > CHARACTER_SPREAD


def masked_mean_color(video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """Per-channel mean [3] of `video` [3, ...] over the pixels of bool `mask` [...]; None when it is empty."""
    if not mask.any():
        return None
    weights = mask.to(video.dtype)
    return (video * weights).flatten(1).sum(1) / weights.sum()


def anchor_colors(
    video: torch.Tensor, character: torch.Tensor, target_mean: torch.Tensor | None, bound: float
) -> torch.Tensor:
    """`video` [3, T, H, W] with its `character` pixels [T, H, W] shifted so their mean colour moves towards
    `target_mean` [3] by at most `bound` per channel; unchanged when either has no character pixels."""
    character = character.to(video.device)
    mean = masked_mean_color(video, character)
    if mean is None or target_mean is None or bound <= 0:
        return video
    shift = (target_mean.to(video) - mean).clamp(-bound, bound)
    return video + shift[:, None, None, None] * character[None].to(video.dtype)
