"""The two generation modes, named once for every layer (masks, pipeline, data, evaluation).

    animate   the reference character performs the driving motion in the reference's own scene
    replace   the reference character replaces the driving character inside the driving video's scene

MotionPair data written before the vocabulary was unified stores "animation" / "replacement"; readers pass
stored words through `parse_mode`, which accepts both spellings.
"""

from __future__ import annotations

from typing import Literal

from scail2.errors import Scail2Error

Mode = Literal["animate", "replace"]
MODES: tuple[Mode, ...] = ("animate", "replace")
_STORED_ALIASES = {"animation": "animate", "replacement": "replace"}


def parse_mode(word: str, source: str = "mode") -> Mode:
    """`word` as a mode, accepting the older stored spellings; a one-line error names `source` otherwise."""
    mode = _STORED_ALIASES.get(word, word)
    if mode not in MODES:
        raise Scail2Error(f"{source} must be one of {', '.join(MODES)}, got {word!r}")
    return mode
