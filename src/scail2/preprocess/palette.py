"""The identity colour palette and the seven colour planes of the 28-channel mask.

See docs/architecture.md, "Mask channels" and "Colour palette".

Upstream's model was trained on these exact colours: identity k (in left-to-right order) is drawn in
`IDENTITY_COLORS[k]`. The mask compression turns each pixel into seven binary planes in
`PLANE_COLORS` order; a colour's plane index is its position there.
"""

from __future__ import annotations

# Region tags of a detail map (the procedural world writes one per frame, 0 elsewhere): the tagged parts become
# loss-weight channels of the latent cache and the face tag places the face cue.
DETAIL_TAGS = {"limb_ends": 1, "face": 2}

# Colour planes in the order of the 28-channel mask's colour index c (channel = 7 * subframe + c).
PLANE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),  # 0 white: "keep this source's environment"
    (255, 0, 0),  # 1 red
    (0, 255, 0),  # 2 green
    (0, 0, 255),  # 3 blue
    (255, 255, 0),  # 4 yellow
    (255, 0, 255),  # 5 magenta
    (0, 255, 255),  # 6 cyan
)
NUM_PLANES = len(PLANE_COLORS)

# Identity colours, first identity first (SCAIL-Pose / ComfyUI order).
IDENTITY_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255),  # 1 blue
    (255, 0, 0),  # 2 red
    (0, 255, 0),  # 3 green
    (255, 0, 255),  # 4 magenta
    (0, 255, 255),  # 5 cyan
    (255, 255, 0),  # 6 yellow
)
MAX_IDENTITIES = len(IDENTITY_COLORS)

WHITE = PLANE_COLORS[0]
BLACK = (0, 0, 0)

# A channel counts as "on" when its uint8 value is strictly above this (upstream compares in float32).
ON_THRESHOLD_UINT8 = 225
