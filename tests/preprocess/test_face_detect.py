"""Head boxes from a face detector (`--face-detector opencv`): each detection goes to the character whose mask
holds it, the mask-derived box where none is found (counted), boxes smoothed over time; without OpenCV, one
line naming the extra. The assignment runs on a stand-in detector, so only the last tests need OpenCV."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from scail2.cli import main
from scail2.preprocess import face_detect
from scail2.preprocess.cue_folder import read_cue_folder
from scail2.preprocess.cue_settings import CueSettings
from scail2.preprocess.cues import head_box_from_mask
from scail2.preprocess.face_detect import detected_head_boxes, extract_cues_with
from scail2.preprocess.mask_folder import MaskFolderWriter

FACE_LINE = "scail2 {} needs OpenCV (the --face-detector opencv face detector): pip install 'scail2[face]'"
NO_SMOOTHING = CueSettings(box_smoothing=1)


def two_characters(frames: int = 3) -> np.ndarray:
    """Identity maps [T, 80, 120]: character 1 on the left, 2 on the right, each a 10x10 head on a body."""
    ids = np.zeros((frames, 80, 120), dtype=np.uint8)
    for identity, left in ((1, 20), (2, 80)):
        ids[:, 10:20, left : left + 10] = identity
        ids[:, 20:60, left - 5 : left + 15] = identity
    return ids


def stand_in(per_frame: list[list[list[float]]]):
    """A detector that finds the given boxes [x0, y0, x1, y1] in frame t (frames counted by call)."""
    calls = iter(per_frame)
    return lambda frame: np.array(next(calls), dtype=np.float32).reshape(-1, 4)


def test_each_face_goes_to_the_character_whose_mask_holds_it_and_misses_keep_the_mask_box():
    ids = two_characters()
    frames = np.zeros((*ids.shape, 3), dtype=np.uint8)
    head_1, head_2 = [21, 11, 29, 19], [81, 11, 89, 19]
    detect = stand_in(
        [
            [head_2, [0, 60, 10, 70], head_1, [18, 40, 28, 50]],  # both faces, one on the background, one on a body
            [head_2],  # character 1's face not found
            [],  # neither found
        ]
    )
    found = detected_head_boxes(frames, ids, [1, 2], NO_SMOOTHING, detect)
    mask_box = [head_box_from_mask(ids[0] == identity, 0.2) for identity in (1, 2)]
    np.testing.assert_allclose(found.boxes[0], [head_1, head_2])  # the face nearest the head, not the body's
    np.testing.assert_allclose(found.boxes[1], [mask_box[0], head_2])
    np.testing.assert_allclose(found.boxes[2], mask_box)
    assert found.detected == [1, 2] and found.fallback == [2, 1]
    assert found.review("opencv") == {"detector": "opencv", "detected_frames": [1, 2], "mask_box_frames": [2, 1]}


def test_detected_boxes_are_smoothed_over_time_and_absent_characters_have_none():
    ids = two_characters(frames=3)
    ids[:, :, 60:] = 0  # character 2 never appears
    frames = np.zeros((*ids.shape, 3), dtype=np.uint8)
    detect = stand_in([[[20, 10, 30, 20]], [[23, 10, 33, 20]], [[20, 10, 30, 20]]])
    found = detected_head_boxes(frames, ids, [1, 2], CueSettings(box_smoothing=3), detect)
    np.testing.assert_allclose(found.boxes[1, 0], [21, 10, 31, 20])  # the mean of the three frames
    np.testing.assert_allclose(found.boxes[0, 0], [21.5, 10, 31.5, 20])  # the first two
    assert np.isnan(found.boxes[:, 1]).all() and found.fallback == [0, 0]


def test_the_mask_detector_is_the_default_extraction():
    ids = two_characters(frames=1)
    frames = np.full((*ids.shape, 3), 90, dtype=np.uint8)
    cues, review = extract_cues_with(frames, ids, CueSettings(), "mask")
    assert review == {"detector": "mask"}
    np.testing.assert_allclose(cues.head_boxes[0, 0], head_box_from_mask(ids[0] == 1, 0.2))


@pytest.mark.parametrize("command", ["cues", "animate"])
def test_without_opencv_the_detector_is_one_line_naming_the_extra(command, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as where it is not installed
    args = ["--driving", "d.mp4", "--out", str(tmp_path / "out"), "--face-detector", "opencv"]
    args += ["--masks", "m"] if command == "cues" else ["--ref", "r.png"]
    assert main([command, *args]) == 2
    assert capsys.readouterr().err.splitlines() == [FACE_LINE.format(command)]


def test_cues_cli_records_how_often_the_detector_found_the_face(tmp_path, monkeypatch, capsys):
    from tests.pipelines.media import write_video

    ids = two_characters(frames=5)[..., :96][:, :64]
    frames = np.full((*ids.shape, 3), 120, dtype=np.uint8)
    video = write_video(tmp_path / "drive.mp4", frames, fps=16)
    with MaskFolderWriter(tmp_path / "masks") as writer:
        for frame in ids:
            writer.write_frame(frame)
        writer.commit({"height": 64, "width": 96, "fps": "16", "identities": [{"index": 1}, {"index": 2}]})
    faces = [[[21, 11, 29, 19]], [], [[21, 11, 29, 19], [81, 11, 89, 19]], [], []]
    monkeypatch.setattr(face_detect, "opencv_detector", lambda: stand_in(faces))
    monkeypatch.setattr("scail2.commands.cues.require_face_detector", lambda args: None)
    out = tmp_path / "cues"
    args = ["cues", "--driving", video, "--masks", tmp_path / "masks", "--out", out, "--face-detector", "opencv"]
    assert main([str(a) for a in args]) == 0
    assert "face found in 3 of 10 character-frames" in capsys.readouterr().out
    _, meta = read_cue_folder(out)
    assert meta["head_boxes"] == "face detector, else top of the mask"
    assert meta["face_detector"] == {"detector": "opencv", "detected_frames": [2, 1], "mask_box_frames": [3, 4]}


def test_the_bundled_cascade_loads_and_finds_no_face_in_a_blank_frame():
    pytest.importorskip("cv2", reason="the face extra (opencv-python-headless) is not installed")
    ids = two_characters(frames=2)
    frames = np.full((*ids.shape, 3), 128, dtype=np.uint8)
    found = detected_head_boxes(frames, ids, [1, 2], NO_SMOOTHING)
    assert found.detected == [0, 0] and found.fallback == [2, 2]
    np.testing.assert_allclose(found.boxes[0, 1], head_box_from_mask(ids[0] == 2, 0.2))


def test_animate_makes_a_directanimator_models_cues_with_the_detector(monkeypatch):
    from fractions import Fraction

    from scail2.animate import AnimateRequest, LoadedInputs, cue_arguments
    from scail2.errors import Scail2Error
    from tests.pipelines.pinned.regenerate import pinned_inputs
    from tests.pipelines.test_pipeline_directanimator import tiny_directanimator_pipeline

    inputs = pinned_inputs(5, "animate")
    loaded = LoadedInputs(inputs, Fraction(16), False, tuple(inputs.driving.shape[1:3]))
    pipeline = tiny_directanimator_pipeline()
    request = AnimateRequest(ref="r.png", driving="d.mp4", out="o.mp4", face_detector="opencv")
    face = [2.0, 3.0, 10.0, 11.0]
    monkeypatch.setattr(face_detect, "opencv_detector", lambda: lambda frame: np.array([face], np.float32))
    monkeypatch.setattr(face_detect, "owner", lambda ids, box, identities: 0)
    cues = cue_arguments(request, pipeline, loaded)["cues"]
    np.testing.assert_allclose(cues.head_boxes[:, 0], [face] * 5)
    assert cue_arguments(AnimateRequest(ref="r.png", driving="d.mp4", out="o.mp4"), pipeline, loaded) == {}
    with pytest.raises(Scail2Error, match="the --cues folder has its head boxes"):
        cue_arguments(AnimateRequest(ref="r", driving="d", out="o", face_detector="opencv", cues="c"), pipeline, loaded)
    with pytest.raises(Scail2Error, match="this model takes no driving cues"):
        cue_arguments(request, object(), loaded)
