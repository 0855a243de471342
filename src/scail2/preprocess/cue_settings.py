"""The settings of DirectAnimator's cue extraction (`scail2.preprocess.cues`), light enough for the CLI to import."""

from __future__ import annotations

from dataclasses import dataclass

FILTERS = ("gaussian", "butterworth", "ideal", "none")
COLORS = ("gray", "rgb")
# Where the face cue's head boxes come from on real video (`scail2.preprocess.face_detect`); not a cue setting a
# model is trained with (training uses the procedural rig's head tags), so cue folders of either match a model.
FACE_DETECTORS = ("mask", "opencv")


@dataclass(frozen=True)
class CueSettings:
    color: str = "gray"  # pose cue colour: "gray" (luma in all three channels) or "rgb"
    filter: str = "gaussian"  # low-pass transfer function: gaussian, butterworth, ideal or none
    cutoff: float = 0.2  # cutoff frequency as a fraction of the Nyquist frequency (0, 1]; see docs/directanimator.md
    order: int = 2  # Butterworth order
    face_scale: float = 1.8  # side of the face crop / side of the head box
    head_fraction: float = 0.2  # head box side / mask height (head boxes from masks)
    box_smoothing: int = 5  # frames of the centred moving average over head boxes (1: none)
    grid: int = 16  # pixels per side of a location-cue cell

    def __post_init__(self):
        if self.color not in COLORS:
            raise ValueError(f"color must be one of {COLORS}, got {self.color!r}")
        if self.filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {self.filter!r}")
        if not 0 < self.cutoff <= 1:
            raise ValueError(f"cutoff must lie in (0, 1] (a fraction of the Nyquist frequency), got {self.cutoff}")
        if self.order < 1 or self.box_smoothing < 1 or self.grid < 1:
            raise ValueError("order, box_smoothing and grid must be at least 1")
        if self.face_scale < 1 or not 0 < self.head_fraction <= 1:
            raise ValueError("face_scale must be >= 1 and head_fraction in (0, 1]")

    def to_json(self) -> dict:
        return dict(self.__dict__)
