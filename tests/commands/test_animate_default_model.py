"""`scail2 animate` without --model: the bundled demo model, its native size and sampler defaults, and the error
when an install lacks it. The bundled folder is patched to a tiny random model (no text or image encoder)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from scail2 import bundled
from scail2.animate import model_fingerprint, sampling_settings
from scail2.cli import build_parser, main
from scail2.pipelines.pipeline_scail2 import SAMPLING_PRESETS, SamplingSettings
from scail2.preprocess.video_io import probe_video, read_video
from tests.pipelines.media import (
    moving_square_frames,
    square_masks,
    write_mask_folder,
    write_reference,
    write_reference_mask,
    write_video,
)

SIZE = (64, 96)  # the patched native size: unequal, so a swapped axis fails
FAST = SamplingSettings(sampler="euler", steps=2, shift=3.0, guidance_scale=1.0, segment_length=9, overlap=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return {
        "driving": write_video(root / "driving.mp4", moving_square_frames(11, 72, 120), fps=24),
        "masks": write_mask_folder(root / "masks", square_masks(11, 72, 120)),
        "ref": write_reference(root / "ref.png", 90, 140),
        "ref_mask": write_reference_mask(root / "ref_mask.png", 90, 140),
    }


@pytest.fixture
def bundled_at(monkeypatch):
    def patch(folder: Path) -> None:
        monkeypatch.setattr(bundled, "BUNDLED_MODEL", folder)
        monkeypatch.setattr(bundled, "BUNDLED_SIZE", SIZE)
        monkeypatch.setattr(bundled, "BUNDLED_SAMPLING", FAST)

    return patch


def animate(files, out: Path, *extra: str) -> int:
    return main(
        [
            "animate",
            "--ref",
            str(files["ref"]),
            "--ref-mask",
            str(files["ref_mask"]),
            "--driving",
            str(files["driving"]),
            "--driving-mask",
            str(files["masks"]),
            "--out",
            str(out),
            *extra,
        ]
    )


def test_without_model_the_bundled_model_runs_at_its_native_size(tiny_model, files, bundled_at, tmp_path, capsys):
    bundled_at(tiny_model)
    out = tmp_path / "o.mp4"
    assert animate(files, out) == 0
    assert "bundled 64x96 demo model" in capsys.readouterr().out
    info = probe_video(out)
    assert (info.height, info.width) == SIZE and read_video(out).frames.shape[0] == 11
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["bundled_model"] is True and manifest["request"]["model"] == str(tiny_model)
    assert manifest["model_fingerprint"] == model_fingerprint(tiny_model)
    assert manifest["size"] == {"height": SIZE[0], "width": SIZE[1]}
    assert manifest["request"]["settings"] == dataclasses.asdict(FAST)
    assert [s["length"] for s in manifest["segments"]] == [9, 9]  # the bundled segment length, not 81


def test_explicit_flags_win_and_guidance_is_off_without_a_text_encoder(tiny_model, files, bundled_at, tmp_path):
    bundled_at(tiny_model)
    out = tmp_path / "o.mp4"
    assert (
        animate(files, out, "--steps", "1", "--cfg", "5", "--height", "32", "--width", "64", "--segment-length", "13")
        == 0
    )
    assert (probe_video(out).height, probe_video(out).width) == (32, 64)
    settings = json.loads(out.with_suffix(".json").read_text())["request"]["settings"]
    assert settings == {**dataclasses.asdict(FAST), "steps": 1, "segment_length": 13, "guidance_scale": 1.0}


def test_sampler_defaults_resolve_per_model_and_flags_override_fields():
    assert build_parser().parse_args(["animate", "--ref", "r", "--driving", "d", "--out", "o"]).preset is None
    assert sampling_settings(None, use_bundled=True) == bundled.BUNDLED_SAMPLING
    assert bundled.BUNDLED_SAMPLING.steps == 10 and bundled.BUNDLED_SAMPLING.guidance_scale == 1.0
    assert sampling_settings(None, use_bundled=False) == SAMPLING_PRESETS["quality"]
    assert sampling_settings("fast", use_bundled=True) == SAMPLING_PRESETS["fast"]
    custom = sampling_settings(None, use_bundled=True, steps=7, shift=None, sampler=None)
    assert (custom.steps, custom.shift, custom.sampler) == (7, bundled.BUNDLED_SAMPLING.shift, "euler")


@pytest.mark.parametrize("layout", ["absent", "vae_only"])
def test_missing_bundled_model_is_a_one_line_error(layout, files, bundled_at, tmp_path, capsys):
    folder = tmp_path / "demo_model"
    if layout == "vae_only":  # as in a checkout before the demo model is exported
        (folder / "vae").mkdir(parents=True)
        (folder / "vae" / "config.json").write_text("{}")
    bundled_at(folder)
    out = tmp_path / "o.mp4"
    assert animate(files, out) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scail2 animate: error: the bundled demo model is missing")
    assert str(folder) in err[0] and "--model DIR" in err[0] and captured.out == ""
    assert not list(tmp_path.glob("o.*"))
