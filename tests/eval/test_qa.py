"""QA of an output without ground truth: a clean video passes, a dropped frame and a colour jump are flagged, the
report files are written, and the per-segment gate rejects a drifting segment."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from scail2.eval import qa
from scail2.pipelines.segment_hooks import SegmentState
from scail2.pipelines.segments import plan_segments
from tests.pipelines.media import moving_square_frames, square_masks

T, H, W = 17, 48, 80  # two segments of 9 frames with an overlap of 5... and a third
SEGMENTS = plan_segments(T, 9, 5)
SQUARE = np.array([230, 200, 40])


def inputs(output: np.ndarray, **changes) -> qa.QaInputs:
    driving = moving_square_frames(T, H, W)
    masks = square_masks(T, H, W, colors=((0, 0, 255),))
    reference = np.zeros((H, W, 3), np.uint8)
    reference[:] = SQUARE
    fields = dict(
        output=output,
        driving=driving,
        driving_masks=masks,
        reference=reference,
        reference_mask=masks[0],
        segments=SEGMENTS,
        output_fps=Fraction(24),
        driving_fps=Fraction(24),
    )
    return qa.QaInputs(**{**fields, **changes})


def colour_jump(at: int, levels: int = 40) -> np.ndarray:
    video = moving_square_frames(T, H, W).astype(np.int16)
    character = qa.character_map(square_masks(T, H, W, colors=((0, 0, 255),)))
    video[at:][character[at:]] += levels
    return video.clip(0, 255).astype(np.uint8)


def test_a_clean_output_passes_every_check():
    report = qa.qa_video(inputs(moving_square_frames(T, H, W)))
    assert report["status"] == "pass", report["warnings"]
    assert report["checks"]["silhouette_iou"]["value"] > 0.8  # the automatic masks find the square
    assert [row["segment"] for row in report["segments"]] == [0, 1, 2]
    assert report["checks"]["color_distance"]["value"] < 1


def test_a_dropped_frame_is_flagged():
    dropped = np.delete(moving_square_frames(T, H, W), 6, axis=0)
    report = qa.qa_video(inputs(dropped, segments=plan_segments(T - 1, 9, 5)))
    assert "frame_count_difference" in report["warnings"] and report["status"] == "warn"
    assert report["frames"] == {"output": T - 1, "driving": T}


def test_a_colour_jump_at_a_seam_is_flagged():
    seam = SEGMENTS[1].start + SEGMENTS[1].history_frames  # the second segment's first new frame
    report = qa.qa_video(inputs(colour_jump(seam)))
    assert {"color_drift", "seam_jump_ratio"} <= set(report["warnings"])
    assert report["seams"][0]["frame"] == seam and report["seams"][0]["ratio"] > 3
    assert report["segments"][1]["drift"] == pytest.approx(np.linalg.norm([25, 40, 40]), abs=0.5)  # red clips at 255


def test_fps_and_audio_mismatches_are_flagged():
    report = qa.qa_video(inputs(moving_square_frames(T, H, W), output_fps=Fraction(25), driving_audio=True))
    assert {"fps_difference", "audio_mismatch"} <= set(report["warnings"])


def test_the_report_files_are_written(tmp_path):
    checks = inputs(moving_square_frames(T, H, W))
    report = qa.qa_video(checks)
    paths = qa.write_qa_report(report, checks, tmp_path / "out")
    assert json.loads((tmp_path / "out.qa.json").read_text())["status"] == "pass"
    from PIL import Image

    sheet = np.asarray(Image.open(paths["contact_sheet"]))
    assert sheet.shape == (2 * H, qa.CONTACT_FRAMES * W, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.qa.json", "out.qa.png"]


def test_the_segment_gate_rejects_a_drifting_segment():
    seam = SEGMENTS[1].start + SEGMENTS[1].history_frames
    masks = square_masks(T, H, W, colors=((0, 0, 255),))
    clean, jumped = moving_square_frames(T, H, W), colour_jump(seam)
    gate = qa.SegmentQaGate(masks, retries=1)
    first = SegmentState(torch.from_numpy(clean[:seam]), None)
    assert gate.accept(SEGMENTS[0], first)
    gate.finished(SEGMENTS[0], first, 1)
    assert not gate.accept(SEGMENTS[1], SegmentState(torch.from_numpy(jumped[seam:13]), None))
    assert gate.accept(SEGMENTS[1], SegmentState(torch.from_numpy(clean[seam:13]), None))
    assert gate.rejected[0]["segment"] == 1 and set(gate.rejected[0]["failed"]) == {"color_drift", "seam_jump_ratio"}
