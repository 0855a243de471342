"""DirectAnimator's Driving Cue Triplet: the low-pass filter's spectrum, head boxes, face crops, grid-softened
masks, determinism, the lossless folder and `scail2 cues` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scail2.cli import main
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.preprocess import video_io
from scail2.preprocess.cue_folder import read_cue_folder, write_cue_folder
from scail2.preprocess.cues import (
    CueSettings,
    extract_cues,
    face_cue,
    grid_soften,
    head_box_from_mask,
    head_boxes,
    low_pass,
    normalized_frequency,
    pose_cue,
    smooth_boxes,
)
from scail2.preprocess.mask_folder import MaskFolderWriter

# ---------------------------------------------------------------------------------------------------------
# Low-pass filter
# ---------------------------------------------------------------------------------------------------------


def spectra(height: int = 24, width: int = 40, kind: str = "ideal", cutoff: float = 0.3):
    image = torch.randn(2, height, width, generator=torch.Generator().manual_seed(0))
    filtered = low_pass(image, kind, cutoff)
    return torch.fft.rfft2(image), torch.fft.rfft2(filtered), normalized_frequency(height, width).float()


def test_ideal_low_pass_removes_exactly_the_frequencies_above_the_cutoff():
    before, after, r = spectra(kind="ideal", cutoff=0.33)  # no bin lies on the cutoff
    scale = before.abs().max()
    assert after[:, r > 0.33].abs().max() < 1e-5 * scale
    torch.testing.assert_close(after[:, r <= 0.33], before[:, r <= 0.33], rtol=1e-4, atol=1e-4 * float(scale))
    assert 0.05 < (r <= 0.33).float().mean() < 0.5  # both sets are substantial


@pytest.mark.parametrize("kind, at_cutoff", [("gaussian", np.exp(-0.5)), ("butterworth", 0.5)])
def test_smooth_low_pass_attenuates_by_its_transfer_function(kind, at_cutoff):
    cutoff = 0.25
    before, after, r = spectra(height=32, width=48, kind=kind, cutoff=cutoff)
    # bin (0, 6) of 48 columns lies at 6/48 cycles/pixel = 0.25 of Nyquist: exactly the cutoff
    assert r[0, 6] == pytest.approx(cutoff)
    ratio = (after[:, 0, 6] / before[:, 0, 6]).real
    torch.testing.assert_close(ratio, torch.full((2,), float(at_cutoff)), rtol=1e-4, atol=1e-5)
    # the constant component passes unchanged, the Nyquist corner is almost gone
    torch.testing.assert_close((after[:, 0, 0] / before[:, 0, 0]).real, torch.ones(2), rtol=1e-5, atol=1e-5)
    assert (after[:, 16, 24].abs() / before[:, 16, 24].abs()).max() < 0.02


def textured_character(height: int = 64, width: int = 80):
    """A checkerboard-textured rectangle on a noisy background, and its mask."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, size=(2, height, width, 3), dtype=np.uint8)
    mask = np.zeros((2, height, width), dtype=bool)
    mask[:, 16:48, 24:56] = True
    checker = ((np.indices((height, width)).sum(0) % 2) * 200 + 20).astype(np.uint8)
    frames[mask] = np.repeat(checker[None, :, :, None], 2, 0).repeat(3, 3)[mask]
    return frames, mask


def test_pose_cue_keeps_the_silhouette_and_drops_texture_and_background():
    frames, mask = textured_character()
    cue = pose_cue(frames, mask, CueSettings(color="gray", filter="gaussian", cutoff=0.1))
    assert cue.dtype == np.uint8 and cue.shape == frames.shape
    assert np.array_equal(cue[..., 0], cue[..., 1]) and np.array_equal(cue[..., 0], cue[..., 2])
    inside = cue[:, 26:38, 34:46, 0].astype(float)
    assert inside.std() < 2 and frames[:, 26:38, 34:46, 0].std() > 80  # checkerboard gone, level kept
    assert abs(inside.mean() - 128 - 0.5 * (220 + 20) / 2 + 64) < 20  # about the texture's mean luma
    assert np.abs(cue[:, :4, :4].astype(int) - 128).max() <= 1  # far background: mid-grey
    rgb = pose_cue(frames, mask, CueSettings(color="rgb", filter="none"))
    assert np.abs(rgb[mask].astype(int) - frames[mask]).max() <= 1 and np.abs(rgb[~mask].astype(int) - 128).max() <= 1


# ---------------------------------------------------------------------------------------------------------
# Head boxes and the face cue
# ---------------------------------------------------------------------------------------------------------


def figure_mask(height: int = 80, width: int = 64, head_x: int = 30, top: int = 10) -> np.ndarray:
    """A stick figure: a 10x10 head whose left column is `head_x`, on a 20-wide body 40 rows tall."""
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + 10, head_x : head_x + 10] = True
    mask[top + 10 : top + 50, head_x - 5 : head_x + 15] = True
    return mask


def test_head_box_from_the_top_of_the_mask():
    box = head_box_from_mask(figure_mask(), head_fraction=0.2)  # side 0.2 * 50 rows = 10
    np.testing.assert_allclose(box, [30, 10, 40, 20])
    assert np.isnan(head_box_from_mask(np.zeros((8, 8), bool), 0.2)).all()


def test_head_boxes_follow_the_rig_tags_and_hold_through_gaps():
    sample = ProceduralPairGenerator(SynthConfig(96, 128, 5, ("animate",), seed=3)).generate(0)
    ids, detail = sample.driving_ids, sample.driving_detail
    boxes = head_boxes(ids, [1], CueSettings(box_smoothing=1), detail)
    for t in range(ids.shape[0]):
        ys, xs = np.nonzero((ids[t] == 1) & (detail[t] == 2))
        np.testing.assert_allclose(boxes[t, 0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    gappy = boxes.copy()
    gappy[2] = np.nan
    held = smooth_boxes(gappy, 1)
    np.testing.assert_allclose(held[2], boxes[1])
    smoothed = smooth_boxes(boxes, 3)
    np.testing.assert_allclose(smoothed[2], boxes[1:4].mean(0), rtol=1e-6)


def test_face_cue_centres_the_enlarged_head_in_each_panel():
    height, width = 48, 64
    frames = np.full((1, height, width, 3), 30, np.uint8)
    frames[0, 10:20, 40:50] = (250, 10, 10)  # character 1's head
    frames[0, 30:36, 4:10] = (10, 250, 10)  # character 2's head
    boxes = np.array([[[40, 10, 50, 20], [4, 30, 10, 36]]], np.float32)
    cue = face_cue(frames, boxes, CueSettings(face_scale=1.5))
    assert cue.shape == frames.shape
    assert tuple(cue[0, 24, 16]) == (250, 10, 10) and tuple(cue[0, 24, 48]) == (10, 250, 10)
    # the crop is 1.5 head sides wide and grown to the 32x48 panel's shape: 22.5 px tall, so the head's 10 rows
    # cover rows 13.3 .. 34.7 of 48
    column = cue[0, :, 16, 0]
    assert (column[15:33] == 250).all() and (column[:12] == 30).all() and (column[36:] == 30).all()
    empty = face_cue(frames, np.full((1, 1, 4), np.nan, np.float32), CueSettings())
    assert (empty == 128).all()


# ---------------------------------------------------------------------------------------------------------
# Location cue and the triplet
# ---------------------------------------------------------------------------------------------------------


def test_grid_softened_cells_hold_their_coverage():
    mask = np.zeros((1, 20, 36), bool)
    mask[0, :8, :4] = True  # half of cell (0, 0) of 8x8 cells
    mask[0, 8:16, 8:16] = True  # all of cell (1, 1)
    soft = grid_soften(mask, 8)
    assert soft.shape == (1, 20, 36) and soft.dtype == np.uint8
    assert (soft[0, :8, :8] == 128).all() and (soft[0, 8:16, 8:16] == 255).all()
    assert soft[0, 16:, :].max() == 0 and soft[0, :, 16:].max() == 0


def procedural_driving(frames: int = 5):
    sample = ProceduralPairGenerator(SynthConfig(64, 96, frames, ("animate",), seed=1)).generate(0)
    return sample.driving, sample.driving_ids, sample.driving_detail


def test_cue_extraction_is_deterministic_and_shaped_like_the_video():
    frames, ids, detail = procedural_driving()
    first, second = extract_cues(frames, ids, detail=detail), extract_cues(frames.copy(), ids.copy(), detail=detail)
    for name in ("pose", "face", "body_mask", "face_mask"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert first.pose.shape == first.face.shape == frames.shape
    assert first.body_mask.shape == first.face_mask.shape == ids.shape
    assert first.face_mask.max() > 0 and (first.body_mask[ids > 0] > 0).all()


def test_cue_folder_round_trip_is_lossless(tmp_path):
    frames, ids, detail = procedural_driving()
    cues = extract_cues(frames, ids, detail=detail)
    write_cue_folder(tmp_path / "cues", cues, {"fps": "16"})
    back, meta = read_cue_folder(tmp_path / "cues")
    assert meta["frames"] == 5 and meta["format"] == "scail2-cues"
    for name in ("pose", "face", "body_mask", "face_mask", "head_boxes"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cues, name))
    with pytest.raises(Exception, match="already exists"):
        write_cue_folder(tmp_path / "cues", cues, {})


def test_cues_cli_end_to_end(tmp_path, capsys):
    from tests.pipelines.media import write_video

    frames, ids, _ = procedural_driving(frames=9)
    video = write_video(tmp_path / "drive.mp4", frames, fps=16)
    with MaskFolderWriter(tmp_path / "masks") as writer:
        for frame in ids:
            writer.write_frame(frame)
        writer.commit({"height": 64, "width": 96, "fps": "16", "identities": [{"index": 1, "name": "blue"}]})
    out = tmp_path / "cues"
    args = ["cues", "--driving", video, "--masks", tmp_path / "masks", "--out", out, "--cue-cutoff", "0.2"]
    assert main([str(a) for a in args]) == 0
    assert "9 frames 96x64" in capsys.readouterr().out
    cues, meta = read_cue_folder(out)
    decoded = video_io.read_video(video).frames.numpy()
    expected = extract_cues(decoded, ids, CueSettings(cutoff=0.2))
    np.testing.assert_array_equal(cues.pose, expected.pose)
    np.testing.assert_array_equal(cues.face_mask, expected.face_mask)
    assert meta["settings"]["cutoff"] == 0.2 and meta["identities"] == [1]
    assert main([str(a) for a in [*args[:-2], "--cue-cutoff", "2"]]) == 2
