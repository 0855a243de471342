"""User masks -> exact palette colours, and the identity binding between the reference and driving masks.

A mask pixel's colour says which source it belongs to: white is "this source's environment is kept",
each identity colour binds one character between the reference and the driving streams, black is
nothing. Which background a side uses depends on the mode (docs/architecture.md, "Mask channels"):

| mode    | driving-mask background | reference-mask background |
|---------|-------------------------|---------------------------|
| animate | black                   | white                     |
| replace | white                   | black                     |

Typical flow (H, W = the target size); `scail2.conditioning` turns the cleaned masks into model tensors:

    ref = normalize_user_mask(read_image(ref_mask).rgb, mode, "reference")        # or mask_from_alpha(alpha, mode)
    drv = normalize_user_mask(read_mask_frames(mask, frame_transform=frame_resizer((H, W))), mode, "driving")
    check_identity_binding(ref, drv, reference_source=..., driving_source=...)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from scail2.errors import Scail2Error
from scail2.modes import MODES, Mode
from scail2.preprocess.palette import (
    BLACK,
    IDENTITY_COLORS,
    PLANE_COLORS,
    WHITE,
)

Side = Literal["reference", "driving"]
MaskKind = Literal["auto", "binary", "palette"]

# A pixel whose channels spread by more than this is coloured; a mask without one is binary (greyscale).
COLOUR_SPREAD_THRESHOLD = 128
# Frames processed at once when cleaning a mask video (bounds the per-pixel temporaries).
FRAMES_PER_CHUNK = 8
# An identity colour counts as present when it covers at least this fraction of some frame.
DEFAULT_MIN_IDENTITY_FRACTION = 1e-3

NAMED_COLOURS = {
    (255, 255, 255): "white",
    (255, 0, 0): "red",
    (0, 255, 0): "green",
    (0, 0, 255): "blue",
    (255, 255, 0): "yellow",
    (255, 0, 255): "magenta",
    (0, 255, 255): "cyan",
    (0, 0, 0): "black",
}


# ---------------------------------------------------------------------------------------------------
# 1. Cleaning up user masks (binary or palette) into exact palette colours
# ---------------------------------------------------------------------------------------------------


def background_color(mode: Mode, side: Side) -> tuple[int, int, int]:
    """The background colour of a mask for `mode` on `side` (see the module table)."""
    if mode not in MODES or side not in ("reference", "driving"):
        raise ValueError(f"unknown mode/side {mode!r}/{side!r}")
    keeps_environment = (mode == "animate") == (side == "reference")
    return WHITE if keeps_environment else BLACK


def _as_uint8_rgb(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB [..., H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return frames


def _frame_chunks(frames: torch.Tensor) -> list[torch.Tensor]:
    """Views of a few frames at a time, so per-pixel temporaries of a long video stay small."""
    leading = frames.reshape(-1, *frames.shape[-3:]) if frames.dim() >= 4 else frames[None]
    return list(leading.split(FRAMES_PER_CHUNK))


def detect_mask_kind(frames: torch.Tensor | np.ndarray) -> Literal["binary", "palette"]:
    """ "palette" when any pixel is clearly coloured (channel spread > 128), else "binary" (greyscale)."""
    for chunk in _frame_chunks(_as_uint8_rgb(frames)):
        spread = chunk.amax(dim=-1).to(torch.int16) - chunk.amin(dim=-1).to(torch.int16)
        if bool((spread > COLOUR_SPREAD_THRESHOLD).any()):
            return "palette"
    return "binary"


def binary_to_palette(frames: torch.Tensor | np.ndarray, mode: Mode, side: Side, *, identity: int = 0) -> torch.Tensor:
    """A binary mask (bright = the character) -> identity colour on the character, the mode's background elsewhere."""
    frames = _as_uint8_rgb(frames)
    grey = frames.to(torch.float32).mean(dim=-1, keepdim=True)
    foreground = torch.tensor(IDENTITY_COLORS[identity], dtype=torch.uint8)
    background = torch.tensor(background_color(mode, side), dtype=torch.uint8)
    return torch.where(grey > 127.5, foreground, background)


def snap_to_palette(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Replace every pixel by the nearest (Euclidean RGB) of black, white and the six identity colours."""
    frames = _as_uint8_rgb(frames)
    palette = torch.tensor((BLACK, *PLANE_COLORS), dtype=torch.float32)  # [8, 3]
    pixels = frames.reshape(-1, 3).to(torch.float32)
    nearest = torch.empty(pixels.shape[0], dtype=torch.long)
    chunk = 1 << 20  # bounded memory for long 1080p masks
    for start in range(0, pixels.shape[0], chunk):
        nearest[start : start + chunk] = torch.cdist(pixels[start : start + chunk], palette).argmin(dim=1)
    return palette.to(torch.uint8)[nearest].reshape(frames.shape)


def normalize_user_mask(
    frames: torch.Tensor | np.ndarray, mode: Mode, side: Side, *, kind: MaskKind = "auto"
) -> torch.Tensor:
    """A user's mask (uint8 [..., H, W, 3]) -> exact palette colours for `mode` on `side`.

    Binary masks (greyscale, bright = the character) become the first identity colour on the mode's
    background; palette masks are snapped to the nearest palette colour. `kind="auto"` decides from
    the whole input, so give it all frames of a video at once.
    """
    frames = _as_uint8_rgb(frames)
    chosen = detect_mask_kind(frames) if kind == "auto" else kind
    out = torch.empty_like(frames)
    for source, target in zip(_frame_chunks(frames), _frame_chunks(out)):
        target.copy_(binary_to_palette(source, mode, side) if chosen == "binary" else snap_to_palette(source))
    return out


def mask_from_alpha(alpha: torch.Tensor | np.ndarray, mode: Mode) -> torch.Tensor:
    """A reference mask from an RGBA image's alpha [H, W]: opaque (>= 128) = the first identity."""
    alpha = torch.as_tensor(alpha)
    if alpha.dim() != 2:
        raise ValueError(f"expected an alpha channel [H, W], got {tuple(alpha.shape)}")
    grey = torch.where(alpha >= 128, 255, 0).to(torch.uint8)
    return binary_to_palette(grey[..., None].expand(*alpha.shape, 3), mode, "reference")


# ---------------------------------------------------------------------------------------------------
# 2. Identity binding between the reference and driving masks
# ---------------------------------------------------------------------------------------------------


def identity_colors_present(
    frames: torch.Tensor | np.ndarray, *, min_fraction: float = DEFAULT_MIN_IDENTITY_FRACTION
) -> tuple[int, ...]:
    """Indices into `IDENTITY_COLORS` of the colours covering >= `min_fraction` of at least one frame.

    `frames`: palette-exact uint8 [H, W, 3] or [T, H, W, 3] (see `normalize_user_mask`).
    """
    frames = _as_uint8_rgb(frames)
    frame_area = frames.shape[-3] * frames.shape[-2]
    largest = torch.zeros(len(IDENTITY_COLORS), dtype=torch.long)  # the most pixels of each colour in one frame
    for chunk in _frame_chunks(frames):
        for index, colour in enumerate(IDENTITY_COLORS):
            matches = (chunk == torch.tensor(colour, dtype=torch.uint8)).all(dim=-1)  # [t, H, W]
            largest[index] = max(largest[index], matches.flatten(1).sum(dim=1).max())
    return tuple(index for index, count in enumerate(largest.tolist()) if count >= min_fraction * frame_area)


def describe_identities(indices: tuple[int, ...]) -> str:
    return ", ".join(NAMED_COLOURS[IDENTITY_COLORS[i]] for i in indices) or "none"


def check_identity_binding(
    reference_mask: torch.Tensor | np.ndarray,
    driving_mask: torch.Tensor | np.ndarray,
    *,
    reference_source: str = "reference mask",
    driving_source: str = "driving mask",
    min_fraction: float = DEFAULT_MIN_IDENTITY_FRACTION,
) -> tuple[int, ...]:
    """Check that both sides hold the same identity colours; return them (indices into IDENTITY_COLORS).

    Raises Scail2Error naming both files when a colour is present on one side and missing on the
    other, or when neither side marks any character.
    """
    on_reference = identity_colors_present(reference_mask, min_fraction=min_fraction)
    on_driving = identity_colors_present(driving_mask, min_fraction=min_fraction)
    if on_reference != on_driving:
        raise Scail2Error(
            f"identity colours differ: {reference_source} has {describe_identities(on_reference)}, "
            f"{driving_source} has {describe_identities(on_driving)}; give each character the same palette "
            "colour in both masks (blue, red, green, magenta, cyan, yellow in left-to-right order)"
        )
    if not on_reference:
        raise Scail2Error(
            f"no character found in {reference_source} or {driving_source}: neither marks any pixel in an identity "
            "colour; mark the character (white on black for a binary mask, or the palette colours)"
        )
    return on_reference
