"""A user's mask image or video checked for being a mask at all, before its colours are read as identities.

A mask is binary (black and white, soft edges allowed) or drawn in the identity colours on black or white.
Snapped to the palette, a photo or a noise image would become up to six "characters"; such an input has most of
its pixels far from every mask colour, and is refused in one line instead.

    check_user_mask(frames, "--ref-mask ref_mask.png")   # uint8 [..., H, W, 3]
"""

from __future__ import annotations

import numpy as np
import torch

from scail2.errors import Scail2Error
from scail2.preprocess.palette import BLACK, PLANE_COLORS

MASK_COLORS = np.array([BLACK, *PLANE_COLORS], dtype=np.int16)  # black, white and the six identity colours
FAR = 80  # a pixel farther than this (largest channel difference) from every mask colour is no mask colour
MAX_FAR_FRACTION = 0.2  # edges, soft mattes and video compression stay far below this; photos and noise do not
SAMPLE_PIXELS = 1 << 18  # enough to tell, and fast on long mask videos


def far_fraction(frames: torch.Tensor | np.ndarray) -> tuple[float, int]:
    """(share of pixels far from every mask colour, distinct colours) over an even sample of the pixels."""
    pixels = torch.as_tensor(frames).reshape(-1, 3).numpy()
    pixels = pixels[:: max(1, len(pixels) // SAMPLE_PIXELS)].astype(np.int16)
    distance = np.abs(pixels[:, None, :] - MASK_COLORS[None]).max(axis=-1).min(axis=-1)
    distinct = len(np.unique(pixels.astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)))
    return float((distance > FAR).mean()) if len(pixels) else 0.0, distinct


def check_user_mask(frames: torch.Tensor | np.ndarray, source: str) -> None:
    """Refuse a mask whose pixels are mostly no mask colour (a photo, noise, the wrong file)."""
    far, distinct = far_fraction(frames)
    if far > MAX_FAR_FRACTION:
        raise Scail2Error(
            f"{source}: {far:.0%} of its pixels are neither black, white nor an identity colour ({distinct} "
            "distinct colours): not a mask; give a binary mask (white = the character) or one drawn in the "
            "identity colours"
        )
