"""Quality checks of a generated video without ground truth: what `animate` and `batch` write into every manifest.

    report = qa_video(QaInputs(output=..., driving=..., driving_masks=..., reference=..., reference_mask=...,
                               segments=..., mode="animate", output_fps=..., driving_fps=..., ...))
    paths = write_qa_report(report, inputs, "out")          # out.qa.json and out.qa.png (contact sheet)

Each check has a value, a threshold (QA_THRESHOLDS, documented in the README) and a status, "pass" or "warn";
the report's status is "warn" when any check warns. Videos are uint8 [T, H, W, 3]; masks are palette colours
uint8 [T, H, W, 3] (identity colours mark characters); colours are compared in 0-255 levels.

- timing: the output's frame count, frame rate and audio against the driving video's;
- silhouette: IoU between the output's character (found by our automatic mask method) and the driving masks;
- flicker: the output's frame-to-frame jitter (each frame's departure from the mean of its neighbours) beyond
  the driving video's own;
- colour drift: the mean colour of the character in each segment's new frames, its distance to the reference
  character's and its change from the first segment's;
- seams: the change across each segment boundary, over the median change of the frames around it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from scail2.data.format import atomic_path, write_json_atomic
from scail2.errors import Scail2Error
from scail2.eval import metrics
from scail2.pipelines.drift import character_pixels
from scail2.pipelines.segment_hooks import SegmentHooks, SegmentState
from scail2.pipelines.segments import Segment

# name: (threshold, "min" = warn below it, "max" = warn above it)
QA_THRESHOLDS: dict[str, tuple[float, str]] = {
    "frame_count_difference": (0, "max"),  # output frames - driving frames, in absolute value
    "fps_difference": (0.001, "max"),  # frames per second
    "audio_mismatch": (0, "max"),  # 1 when the output lacks the driving video's audio (or has audio it lacks)
    "silhouette_iou": (0.5, "min"),  # output character vs driving masks
    "flicker_excess": (4.0, "max"),  # levels of jitter beyond the driving video's
    "color_drift": (12.0, "max"),  # levels: largest move of a segment's character colour from the first segment's
    "color_distance": (60.0, "max"),  # levels: largest distance of a segment's character colour to the reference's
    "seam_jump_ratio": (3.0, "max"),  # change across a boundary over the median change around it
}
SEAM_WINDOW = 4  # transitions on each side of a boundary that give its local median change
MIN_CHANGE = 1.0  # levels: the floor of a median change, so a still video does not make every seam a jump
CONTACT_FRAMES = 8  # columns of the contact sheet


@dataclass
class QaInputs:
    """What the checks compare; `output_masks` (character masks of the output, bool [T, H, W]) are found by
    `output_character_masks` when None."""

    output: np.ndarray
    driving: np.ndarray
    driving_masks: np.ndarray
    reference: np.ndarray  # [H, W, 3] at the output size
    reference_mask: np.ndarray  # [H, W, 3] palette
    segments: Sequence[Segment]
    mode: str = "animate"
    output_fps: Fraction | float = 0
    driving_fps: Fraction | float = 0
    output_audio: bool = False
    driving_audio: bool = False
    output_masks: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


# 1. Building blocks ------------------------------------------------------------------------------------------


def character_map(palette: np.ndarray) -> np.ndarray:
    """Bool [...] of the identity-coloured pixels of palette masks [..., 3] (white and black are not)."""
    import torch

    return character_pixels(torch.from_numpy(np.ascontiguousarray(palette)), channel_dim=-1).numpy()


def output_character_masks(output: np.ndarray, mode: str) -> np.ndarray:
    """The output's character, found by the weight-free automatic mask method `animate` uses on driving videos:
    bool [T, H, W]. A video it cannot segment (no motion) gives empty masks."""
    import torch

    from scail2.preprocess.segmentation.automatic import automatic_driving_palette

    try:
        palette = automatic_driving_palette(torch.from_numpy(np.ascontiguousarray(output)), mode)
    except Scail2Error:
        return np.zeros(output.shape[:3], dtype=bool)
    return character_map(palette.numpy())


def frame_changes(video: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive frames, in levels: [T - 1]."""
    video = np.asarray(video, dtype=np.float32)
    return np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3)) if len(video) > 1 else np.zeros(0)


def jitter(video: np.ndarray) -> float:
    """Mean absolute departure of each inner frame from the mean of its two neighbours, in levels (0 under
    steady motion or none; flicker raises it)."""
    video = np.asarray(video, dtype=np.float32)
    if len(video) < 3:
        return 0.0
    return float(np.abs(video[1:-1] - (video[:-2] + video[2:]) / 2).mean())


def mean_color(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Per-channel mean [3] of `image` [..., 3] over bool `mask` [...]; None when the mask is empty."""
    return np.asarray(image, dtype=np.float64)[mask].mean(axis=0) if mask.any() else None


def segment_colors(
    output: np.ndarray, character: np.ndarray, segments: Sequence[Segment], reference_color: np.ndarray | None
) -> list[dict]:
    """Per segment: the character's mean colour over its new frames, its distance to `reference_color` and its
    move from the first segment's colour (levels; None where the character is absent)."""
    rows, first = [], None
    for segment in segments:
        new = slice(segment.start + segment.history_frames, segment.start + segment.real_frames)
        color = mean_color(output[new], character[new])
        first = color if first is None else first
        rows.append(
            {
                "segment": segment.index,
                "color": None if color is None else [round(float(c), 2) for c in color],
                "distance": _distance(color, reference_color),
                "drift": _distance(color, first),
            }
        )
    return rows


def _distance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    return None if a is None or b is None else round(float(np.linalg.norm(a - b)), 3)


def color_changes(video: np.ndarray, character: np.ndarray) -> np.ndarray:
    """Distance between consecutive frames' mean character colours, in levels: [T - 1] (0 where a frame has no
    character pixels)."""
    track = [mean_color(frame, mask) for frame, mask in zip(video, character)]
    return np.array([0.0 if a is None or b is None else float(np.linalg.norm(b - a)) for a, b in zip(track, track[1:])])


def jump_ratio(changes: np.ndarray, index: int) -> float:
    """changes[index] over the median of the `SEAM_WINDOW` changes on each side (floored at `MIN_CHANGE`)."""
    around = np.r_[changes[max(0, index - SEAM_WINDOW) : index], changes[index + 1 : index + 1 + SEAM_WINDOW]]
    median = max(float(np.median(around)) if len(around) else MIN_CHANGE, MIN_CHANGE)
    return float(changes[index]) / median


def seam_jumps(output: np.ndarray, segments: Sequence[Segment], character: np.ndarray | None = None) -> list[dict]:
    """Per boundary: the change across it over the median change around it, for the whole frame and, with
    `character` masks (bool [T, H, W]), for the character's mean colour; `ratio` is the larger."""
    frames = frame_changes(output)
    colors = None if character is None else color_changes(output, character[: len(output)])
    rows = []
    for segment in segments[1:]:
        seam = segment.start + segment.history_frames - 1  # transition into the segment's first new frame
        if seam < 0 or seam >= len(frames):
            continue
        ratio = jump_ratio(frames, seam)
        if colors is not None:
            ratio = max(ratio, jump_ratio(colors, seam))
        rows.append({"segment": segment.index, "frame": seam + 1, "change": round(float(frames[seam]), 3),
                     "ratio": round(ratio, 3)})  # fmt: skip
    return rows


def check(name: str, value: float | None) -> dict:
    """One check's record: value, threshold, and "pass", "warn" or "skipped" (no value)."""
    threshold, kind = QA_THRESHOLDS[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"value": None, "threshold": threshold, "status": "skipped"}
    bad = value < threshold if kind == "min" else value > threshold
    return {"value": round(float(value), 4), "threshold": threshold, "status": "warn" if bad else "pass"}


# 2. The report -------------------------------------------------------------------------------------------------


def qa_video(inputs: QaInputs) -> dict:
    """Every check of one output video (see the module docstring) -> the manifest's QA block. Output masks it
    has to find are kept in `inputs.output_masks` (for the contact sheet and the alpha outputs)."""
    output, driving = np.asarray(inputs.output), np.asarray(inputs.driving)
    masks = inputs.output_masks if inputs.output_masks is not None else output_character_masks(output, inputs.mode)
    inputs.output_masks = masks
    common = min(len(output), len(driving))
    character = character_map(inputs.driving_masks)
    reference_color = mean_color(inputs.reference, character_map(inputs.reference_mask))
    colors = segment_colors(output, character[: len(output)], inputs.segments, reference_color)
    seams = seam_jumps(output, inputs.segments, character)
    checks = {
        "frame_count_difference": check("frame_count_difference", abs(len(output) - len(driving))),
        "fps_difference": check("fps_difference", abs(float(inputs.output_fps) - float(inputs.driving_fps))),
        "audio_mismatch": check("audio_mismatch", float(inputs.output_audio != inputs.driving_audio)),
        "silhouette_iou": check(
            "silhouette_iou", metrics.silhouette_iou(masks[:common], character[:common]) if masks.any() else None
        ),
        "flicker_excess": check("flicker_excess", jitter(output) - jitter(driving)),
        "color_drift": check("color_drift", _largest(row["drift"] for row in colors)),
        "color_distance": check("color_distance", _largest(row["distance"] for row in colors)),
        "seam_jump_ratio": check("seam_jump_ratio", _largest(row["ratio"] for row in seams)),
    }
    warned = sorted(name for name, record in checks.items() if record["status"] == "warn")
    return {
        "status": "warn" if warned else "pass",
        "warnings": warned,
        "checks": checks,
        "frames": {"output": len(output), "driving": len(driving)},
        "segments": colors,
        "seams": seams,
        "notes": list(inputs.notes),
    }


def _largest(values) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def write_qa_report(report: dict, inputs: QaInputs, stem: str | Path) -> dict[str, str]:
    """`stem`.qa.json (the report) and `stem`.qa.png (contact sheet: output frames over driving frames with the
    output's character outlined), both written atomically; returns their paths."""
    stem = Path(stem)
    json_path, sheet_path = stem.with_name(stem.name + ".qa.json"), stem.with_name(stem.name + ".qa.png")
    write_json_atomic(json_path, report)
    sheet = contact_sheet(inputs.output, inputs.driving, inputs.output_masks)
    from PIL import Image

    with atomic_path(sheet_path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return {"json": str(json_path), "contact_sheet": str(sheet_path)}


def contact_sheet(output: np.ndarray, driving: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """uint8 [2H, n W, 3]: `CONTACT_FRAMES` evenly spaced output frames (character tinted) over the driving
    frames at the same times."""
    count = min(CONTACT_FRAMES, len(output))
    picks = np.linspace(0, len(output) - 1, count).round().astype(int)
    top = np.asarray(output)[picks].astype(np.float32)
    if masks is not None and masks.any():
        tint = masks[picks][..., None]
        top = np.where(tint, top * 0.7 + np.array([0, 255, 0]) * 0.3, top)
    bottom = np.asarray(driving)[np.minimum(picks, len(driving) - 1)].astype(np.float32)
    rows = [np.concatenate(list(part), axis=1) for part in (top, bottom)]
    return np.concatenate(rows, axis=0).clip(0, 255).astype(np.uint8)


# 3. Per-segment checks while generating (--qa-retry) ------------------------------------------------------------


class SegmentQaGate(SegmentHooks):
    """Rejects a segment whose character colour moved from the first segment's by more than the `color_drift`
    threshold, or whose first new frame jumps from the previous segment's last one by more than the
    `seam_jump_ratio` threshold; the pipeline then draws it again, up to `retries` times. `inner` hooks
    (checkpoints) still resume and keep segments. Needs uint8 outputs."""

    def __init__(self, driving_masks: np.ndarray, retries: int, inner: SegmentHooks | None = None):
        self.character = character_map(np.asarray(driving_masks))
        self.retries, self.inner = retries, inner or SegmentHooks()
        self.first_color: np.ndarray | None = None
        self.last_frame: np.ndarray | None = None  # the previous segment's last frame and its character
        self.last_character: np.ndarray | None = None
        self.rejected: list[dict] = []  # one row per rejected draw

    def resume(self, segment: Segment) -> SegmentState | None:
        state = self.inner.resume(segment)
        if state is not None:
            self._remember(segment, state)
        return state

    def accept(self, segment: Segment, state: SegmentState) -> bool:
        frames = np.asarray(state.output)
        color = mean_color(frames, self._character(segment, len(frames)))
        drift = _distance(color, self.first_color)
        ratio = None
        if self.last_frame is not None and len(frames):
            joined = np.concatenate([self.last_frame[None], frames])
            character = np.concatenate([self.last_character[None], self._character(segment, len(frames))])
            ratio = seam_jumps(joined, [Segment(0, 0, 1, 1, 0), Segment(1, 0, 1, 1, 1)], character)[0]["ratio"]
        failed = [
            name
            for name, value in (("color_drift", drift), ("seam_jump_ratio", ratio))
            if check(name, value)["status"] == "warn"
        ]
        if failed:
            self.rejected.append({"segment": segment.index, "failed": failed, "color_drift": drift, "seam": ratio})
        return self.inner.accept(segment, state) and not failed

    def finished(self, segment: Segment, state: SegmentState, attempts: int) -> None:
        self._remember(segment, state)
        self.inner.finished(segment, state, attempts)

    def _character(self, segment: Segment, count: int) -> np.ndarray:
        first_new = segment.start + segment.history_frames
        return self.character[first_new : first_new + count]

    def _remember(self, segment: Segment, state: SegmentState) -> None:
        frames = np.asarray(state.output)
        if self.first_color is None:
            self.first_color = mean_color(frames, self._character(segment, len(frames)))
        if len(frames):
            self.last_frame = frames[-1]
            self.last_character = self._character(segment, len(frames))[-1]
