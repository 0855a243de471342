"""What a character is made of: its parts (tapered capsules between named joints) and its appearance.

A character is a body plan plus random proportions, colours, a texture, an outline and accessories. The
body plan (see `plans.py`) lists the parts and poses the joints; everything here is plain data that round
trips through JSON, so a pair's metadata can rebuild the exact character.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from scail2.preprocess.palette import DETAIL_TAGS

# Region tags of parts, stored per pixel in the detail masks (bit flags; DPO weighting uses them later).
TAG_BODY = 0
TAG_LIMB_END = DETAIL_TAGS["limb_ends"]  # hands, feet, paws, claws, wing tips
TAG_FACE = DETAIL_TAGS["face"]  # head, eyes, mouth, beak, snout, ears

PATTERNS = ("flat", "stripes", "spots", "gradient")
PATTERN_CODES = {name: code for code, name in enumerate(PATTERNS)}


@dataclass(frozen=True)
class PartSpec:
    """One tapered capsule of a character (a disc when `a == b`)."""

    a: str  # joint at one end
    b: str  # joint at the other end
    radius_a: float  # [body] radius at `a`, a fraction of the character's height
    radius_b: float  # [body] radius at `b`
    colour: str  # key of `Character.colours`
    tag: int = TAG_BODY
    patterned: bool = False  # carries the character's texture
    outlined: bool = True
    depth_bias: float = 0.0  # [body] towards the camera; settles ties between parts at equal depth
    facing: str | None = None  # centre joint: the part shrinks away as it turns from the camera (eyes)
    scale: str | None = None  # a per-frame radius factor the pose provides (a blob's squash and stretch)


@dataclass(frozen=True)
class Character:
    """A body plan with its proportions and looks; lengths are fractions of `height`."""

    plan: str
    height: float  # [world units] overall size at the front lane
    proportions: dict[str, float]
    colours: dict[str, tuple[int, int, int]]
    pattern: str = "flat"  # one of PATTERNS
    pattern_scale: float = 0.08  # [body] stripe period or spot spacing
    outline: float = 0.012  # [body] outline width; 0 for none
    accessories: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {
            "plan": self.plan,
            "height": self.height,
            "proportions": dict(self.proportions),
            "colours": {k: list(v) for k, v in self.colours.items()},
            "pattern": self.pattern,
            "pattern_scale": self.pattern_scale,
            "outline": self.outline,
            "accessories": list(self.accessories),
        }

    @staticmethod
    def from_json(data: dict) -> Character:
        colours = {k: tuple(int(c) for c in v) for k, v in data["colours"].items()}
        return Character(
            data["plan"],
            data["height"],
            dict(data["proportions"]),
            colours,
            data["pattern"],
            data["pattern_scale"],
            data["outline"],
            tuple(data["accessories"]),
        )


# ---------------------------------------------------------------------------------------------------
# Appearance sampling
# ---------------------------------------------------------------------------------------------------


def hsv_colour(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, float(np.clip(saturation, 0, 1)), float(np.clip(value, 0, 1)))
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


_SKIN_TONES = ((255, 224, 196), (241, 194, 155), (224, 172, 125), (198, 134, 90), (141, 85, 54), (92, 58, 38))


def sample_colours(rng: np.random.Generator, plan: str) -> dict[str, tuple[int, int, int]]:
    """A colour scheme: a main hue, a contrasting pattern colour, skin, limbs, eyes, outline, accessory."""
    hue = float(rng.uniform())
    sat, val = float(rng.uniform(0.45, 0.9)), float(rng.uniform(0.6, 0.95))
    pattern_hue = hue + float(rng.choice([0.5, 0.08, -0.08, 0.33]))
    body = hsv_colour(hue, sat, val)
    if plan == "humanoid":
        skin = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
    else:
        skin = hsv_colour(hue + float(rng.uniform(-0.04, 0.04)), sat * 0.6, min(1.0, val * 1.1))
    limb_hue = float(rng.uniform()) if plan == "humanoid" else hue
    return {
        "body": body,
        "pattern": hsv_colour(pattern_hue, float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.25, 1.0))),
        "skin": skin,
        "limb": hsv_colour(limb_hue, float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.3, 0.8))),
        "dark": hsv_colour(hue, sat, val * 0.45),
        "shoe": hsv_colour(float(rng.uniform()), 0.5, float(rng.uniform(0.15, 0.5))),
        "eye": (248, 248, 244),
        "pupil": (22, 20, 28),
        "mouth": (120, 30, 40),
        "outline": hsv_colour(hue, min(1.0, sat + 0.2), float(rng.uniform(0.05, 0.25))),
        "accessory": hsv_colour(float(rng.uniform()), float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.7, 1.0))),
        "beak": hsv_colour(float(rng.uniform(0.08, 0.15)), 0.85, 0.95),
    }


def sample_looks(rng: np.random.Generator) -> tuple[str, float, float]:
    """Texture, texture scale [body] and outline width [body]."""
    pattern = str(rng.choice(PATTERNS, p=[0.3, 0.25, 0.25, 0.2]))
    scale = float(rng.uniform(0.06, 0.12))
    outline = float(rng.choice([0.0, 0.008, 0.012, 0.018], p=[0.15, 0.3, 0.35, 0.2]))
    return pattern, scale, outline
