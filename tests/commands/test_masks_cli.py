"""`scail2 masks` end to end through the real CLI, its reuse by `scail2 animate`, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scail2.animate import AnimateRequest, load_inputs
from scail2.cli import main
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.preprocess import mask_folder, video_io
from scail2.preprocess.palette import IDENTITY_COLORS
from tests.pipelines.media import write_video
from tests.preprocess.segmentation_clips import fixed_camera_clip, iou

BLUE, RED = IDENTITY_COLORS[0], IDENTITY_COLORS[1]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """A fixed-camera walk as a (near-lossless) MP4, its truth, and an RGBA reference of another character."""
    folder = tmp_path_factory.mktemp("clip")
    clip = fixed_camera_clip(0, "walk", frames=21)
    video = write_video(folder / "walk.mp4", clip.frames, fps=16)
    sample = ProceduralPairGenerator(SynthConfig(128, 192, 1, ("animate",), seed=0)).generate(1)
    rgba = np.dstack([sample.reference, np.where(sample.reference_ids > 0, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba).save(folder / "ref.png")
    Image.fromarray(sample.reference).save(folder / "ref_plain.png")
    return {
        "video": video,
        "clip": clip,
        "ref": folder / "ref.png",
        "ref_plain": folder / "ref_plain.png",
        "ref_ids": sample.reference_ids,
        "dir": folder,
    }


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["masks", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_masks_end_to_end_with_preview(clip_files, tmp_path, capsys):
    out = tmp_path / "masks"
    code, stdout, _ = run_cli(
        capsys,
        "--driving",
        clip_files["video"],
        "--ref",
        clip_files["ref"],
        "--out",
        out,
        "--preview",
        "--max-characters",
        "1",
    )
    assert code == 0 and "21 frames 192x128, 1 character(s) (blue) by motion; reference mask (alpha)" in stdout
    folder = mask_folder.open_mask_folder(out)
    assert folder.meta["method"] == "motion" and [e["index"] for e in folder.meta["identities"]] == [1]
    ids = np.stack(list(folder.iter_ids()))
    assert iou(ids > 0, clip_files["clip"].ids > 0) >= 0.85  # after an H.264 round trip of the video
    assert np.array_equal(folder.reference_ids(), (clip_files["ref_ids"] > 0).astype(np.uint8))
    assert folder.reference_matches(clip_files["ref"]) and not folder.reference_matches(clip_files["ref_plain"])
    preview = video_io.read_video(out / "preview.mp4")
    assert preview.num_frames == 21 and preview.frames.shape[1:3] == (128, 192)
    assert (out / "reference_preview.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]  # no temporary left behind


def test_provided_masks_round_trip_and_serve_animate(clip_files, tmp_path, capsys):
    ids = clip_files["clip"].ids.copy()
    ids[:, 100:120, 150:180] = 2  # a second character on the right
    provided = video_io.write_png_frames(
        tmp_path / "provided", mask_folder.identities_to_palette(ids, "animate", "driving").numpy()
    )
    alpha = np.zeros((128, 192), np.uint8)
    alpha[30:100, 20:60] = alpha[30:100, 120:170] = 255
    rgba = np.dstack([np.full((128, 192, 3), 90, np.uint8), alpha])
    Image.fromarray(rgba).save(tmp_path / "two.png")
    out = tmp_path / "masks"
    code, stdout, _ = run_cli(
        capsys,
        "--driving",
        clip_files["video"],
        "--driving-mask",
        provided,
        "--ref",
        tmp_path / "two.png",
        "--out",
        out,
    )
    assert code == 0 and "by provided" in stdout
    folder = mask_folder.open_mask_folder(out)
    assert np.array_equal(np.stack(list(folder.iter_ids())), ids)  # lossless
    request = AnimateRequest(
        ref=tmp_path / "two.png",
        driving=clip_files["video"],
        out=tmp_path / "o.mp4",
        driving_mask=out,
        mode="replace",
        height=128,
        width=192,
    )
    inputs = load_inputs(request).inputs
    assert inputs.driving_masks.shape == (21, 128, 192, 3)
    assert tuple(inputs.driving_masks[0, 0, 0].tolist()) == (255, 255, 255)  # replacement: white background
    colours = {tuple(c) for c in inputs.driving_masks.reshape(-1, 3).unique(dim=0).tolist()}
    assert {BLUE, RED} <= colours


def test_animate_without_masks_extracts_them(clip_files, tmp_path):
    request = AnimateRequest(
        ref=clip_files["ref_plain"], driving=clip_files["video"], out=tmp_path / "o.mp4", height=128, width=192
    )
    inputs = load_inputs(request).inputs
    driving = mask_folder.palette_to_identities(inputs.driving_masks)
    assert iou(driving.numpy() > 0, clip_files["clip"].ids > 0) >= 0.85
    reference = (inputs.reference_mask.permute(1, 2, 0) * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    blue = (reference == torch.tensor(BLUE, dtype=torch.uint8)).all(dim=-1)
    assert iou(blue.numpy(), clip_files["ref_ids"] > 0) >= 0.7  # the still-image method, coloured blue


def test_bad_input_gives_one_line_errors_and_writes_nothing(clip_files, tmp_path, capsys):
    video, out = clip_files["video"], tmp_path / "masks"

    def fails(*args: str, match: str) -> None:
        code, _, stderr = run_cli(capsys, *args)
        assert code == 2 and stderr.startswith("scail2 masks: error:") and match in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1
        assert not out.exists() and not any(p.name.startswith(".masks") for p in tmp_path.iterdir())

    fails("--driving", tmp_path / "missing.mp4", "--out", out, match="missing.mp4: video not found")
    fails("--driving", video, "--out", out, "--method", "provided", match="--method provided needs --driving-mask")
    fails("--driving", video, "--out", out, "--method", "sam2", match="--method sam2 needs --sam2-model")
    fails("--driving", video, "--out", out, "--boxes", "1,2,3", match="--boxes: '1,2,3' is not x0,y0,x1,y1")
    fails("--driving", video, "--out", out, "--dilate", "-1", match="--dilate: must be in [0, 512], got -1")
    few = video_io.write_png_frames(tmp_path / "few", np.zeros((3, 128, 192, 3), np.uint8) + 255)
    fails("--driving", video, "--out", out, "--driving-mask", few, match="has 3 mask frames but the driving video")
    two = mask_folder.identities_to_palette(np.where(clip_files["clip"].ids > 0, 1, 0), "animate", "driving").numpy()
    two[:, :5, :5] = RED  # a second identity in the driving masks, but one character in the reference
    masks_two = video_io.write_png_frames(tmp_path / "two", two)
    fails(
        "--driving",
        video,
        "--out",
        out,
        "--driving-mask",
        masks_two,
        "--ref",
        clip_files["ref"],
        match="shows 1 character(s) but the driving masks have 2",
    )
    still = video_io.write_mp4(tmp_path / "still.mp4", np.repeat(clip_files["clip"].frames[:1], 9, axis=0), 16)
    fails("--driving", still, "--out", out, match="no moving character")
    out.mkdir()
    code, _, stderr = run_cli(capsys, "--driving", video, "--out", out)
    assert code == 2 and "already exists; pass --overwrite" in stderr
