"""Planning long videos as overlapping segments (docs/architecture.md, "Segments"), without dropping frames.

Segments of `length` (81) frames start every `length - overlap` (76) frames; each later segment re-uses the
last `overlap` (5) generated frames of the one before as clean history. Unlike upstream, the tail is kept:
the last segment is padded (by repeating the last driving frame) to the next valid 4n+1 length, and the
output is trimmed to the driving video's exact frame count.
"""

from __future__ import annotations

from dataclasses import dataclass

from scail2.conditioning.geometry import TEMPORAL_STRIDE, valid_length
from scail2.errors import Scail2Error


@dataclass(frozen=True)
class Segment:
    """Driving frames [start, start + real_frames) run as a segment of `length` frames (padded at the end)."""

    index: int
    start: int
    length: int
    real_frames: int
    history_frames: int  # leading frames that are clean history from the previous segment (0 for the first)


def plan_segments(num_frames: int, length: int = 81, overlap: int = 5) -> list[Segment]:
    """Cover `num_frames` driving frames with overlapping segments; every frame is generated exactly once."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if length < 1 or (length - 1) % TEMPORAL_STRIDE:
        raise Scail2Error(f"--segment-length must be 4n+1 (e.g. 81), got {length}")
    if overlap < 1 or (overlap - 1) % TEMPORAL_STRIDE:
        raise Scail2Error(f"--overlap must be 4n+1 (e.g. 5), got {overlap}")
    if num_frames > length and overlap >= length:  # only a video longer than one segment needs the overlap
        raise Scail2Error(
            f"--overlap {overlap} must be shorter than --segment-length {length} for a video of {num_frames} frames"
        )
    segments, start = [], 0
    while True:
        history = overlap if segments else 0
        remaining = num_frames - start
        if remaining <= length:
            segments.append(Segment(len(segments), start, valid_length(remaining), remaining, history))
            return segments
        segments.append(Segment(len(segments), start, length, length, history))
        start += length - overlap
