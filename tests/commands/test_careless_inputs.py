"""Inputs that used to be taken silently or answered late: a noise image as an identity mask, a `scail2 masks`
folder as `masks --driving-mask`, a variable-frame-rate driving video, a still image as the driving video, a job
too large for the host's RAM on the CPU, and a disk too small for `synth` or `cache` output."""

from __future__ import annotations

import json
import logging
import shutil
from collections import namedtuple
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from scail2.preprocess import video_io
from tests.commands.corpus import assert_refused, run
from tests.commands.test_bad_inputs_animate import animate_args
from tests.commands.test_data_loss import tiny_bundled  # noqa: F401 (fixture)
from tests.pipelines.media import moving_square_frames, square_masks, write_reference, write_video

INTERVALS_MS = (40, 120)  # alternating frame intervals: a variable frame rate


def write_vfr_video(path: Path, frames: np.ndarray, intervals_ms=INTERVALS_MS) -> Path:
    """An H.264 MP4 whose frames carry their own presentation times, `intervals_ms` apart in turn."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        time_ms = 0
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = time_ms, Fraction(1, 1000)
            for packet in stream.encode(picture):
                container.mux(packet)
            time_ms += intervals_ms[index % len(intervals_ms)]
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("careless")
    rng = np.random.default_rng(0)
    write_video(root / "driving.mp4", moving_square_frames(9, 64, 96), fps=16)
    write_vfr_video(root / "vfr.mp4", moving_square_frames(9, 64, 96))
    write_reference(root / "ref.png", 64, 96)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "noise.png")
    write_video(root / "noise.mp4", rng.integers(0, 255, (9, 64, 96, 3), dtype=np.uint8), fps=16)
    write_video(root / "masks.mp4", square_masks(9, 64, 96), fps=16)
    Image.open(root / "ref.png").convert("RGB").save(root / "still.jpg")
    (root / "out").mkdir()
    return root


def test_a_noise_image_or_video_is_no_identity_mask(world, capsys, tiny_model, monkeypatch):
    from scail2 import bundled

    monkeypatch.setattr(bundled, "BUNDLED_MODEL", tiny_model)
    cases = [
        (animate_args(world, ref_mask=world / "noise.png"), ["--ref-mask", "noise.png", "not a mask"]),
        (animate_args(world, ref_mask=world / "ref.png"), ["--ref-mask", "ref.png", "not a mask"]),
        (animate_args(world, driving_mask=world / "noise.mp4"), ["--driving-mask", "noise.mp4", "not a mask"]),
        (
            ["masks", "--driving", world / "driving.mp4", "--out", world / "m", "--driving-mask", world / "noise.mp4"],
            ["--driving-mask", "noise.mp4", "not a mask"],
        ),
        (
            ["masks", "--driving", world / "driving.mp4", "--out", world / "m", "--ref", world / "ref.png"]
            + ["--ref-mask", world / "noise.png"],
            ["--ref-mask", "noise.png", "not a mask"],
        ),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_masks_reads_a_masks_folder_given_as_driving_mask(world, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["masks", "--driving", world / "driving.mp4"]
    assert run(capsys, *base, "--out", first, "--driving-mask", world / "masks.mp4")[0] == 0
    code, _, err = run(capsys, *base, "--out", second, "--driving-mask", first)
    assert code == 0, err
    meta = [json.loads((folder / "meta.json").read_text()) for folder in (first, second)]
    assert meta[1]["method"] == "provided" and meta[1]["identities"] == meta[0]["identities"]
    for index in range(meta[0]["frames"]):  # the same identities, frame by frame
        name = f"frames/{index:06d}.png"
        assert np.array_equal(np.asarray(Image.open(first / name)), np.asarray(Image.open(second / name)))


def test_a_still_image_as_driving_is_one_line(world, capsys):
    cases = [
        (animate_args(world, driving=world / "ref.png"), ["--driving", "ref.png", "still image"]),
        (animate_args(world, driving=world / "still.jpg"), ["--driving", "still.jpg", "still image"]),
        (["masks", "--driving", world / "ref.png", "--out", world / "m"], ["--driving", "still image"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_variable_frame_rate_is_detected_and_constant_rate_is_not(world, caplog):
    with caplog.at_level(logging.WARNING):
        video = video_io.read_video(world / "vfr.mp4")
    timing = video.frame_timing
    assert timing["variable_frame_rate"] and (timing["min_interval_ms"], timing["max_interval_ms"]) == (40, 120)
    assert timing["frame_times_s"][:4] == [0.0, 0.04, 0.16, 0.2]
    assert len([r for r in caplog.records if "variable frame rate" in r.getMessage()]) == 1
    assert video_io.read_video(world / "driving.mp4").frame_timing is None


def test_a_variable_frame_rate_driving_video_is_recorded_in_the_manifest(
    world,
    tiny_bundled,  # noqa: F811
    tmp_path,
    capsys,
    caplog,
):
    out = tmp_path / "o.mp4"
    with caplog.at_level(logging.WARNING):
        code, _, err = run(capsys, *animate_args(world, driving=world / "vfr.mp4", out=out), "--no-qa")
    assert code == 0, err
    assert len([r for r in caplog.records if "variable frame rate" in r.getMessage()]) == 1  # one warning line
    timing = json.loads(out.with_suffix(".json").read_text())["driving_timing"]
    assert timing["max_interval_ms"] == 120 and len(timing["frame_times_s"]) == 9


def test_a_job_larger_than_the_host_ram_is_refused_on_cpu(world, tiny_bundled, capsys, monkeypatch):  # noqa: F811
    from scail2.pipelines import memory_plan

    monkeypatch.setattr(memory_plan, "detected_host_bytes", lambda: 1 << 20)
    args = [*animate_args(world), "--device", "cpu"]
    assert_refused(capsys, args, ["--driving", "9 frames", "GiB are available", "--max-frames"], world)


def no_room(monkeypatch):
    from scail2 import outputs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10, 10, 0))


def test_synth_and_cache_refuse_a_disk_without_room(world, tiny_model, tmp_path, capsys, monkeypatch):
    from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
    from scail2.data.shards import write_dataset

    data = tmp_path / "data"
    write_dataset(ProceduralPairGenerator(SynthConfig(32, 64, 5, seed=1)), data, 2, shard_size=2, progress=False)
    shutil.copytree(tiny_model, tmp_path / "model")
    no_room(monkeypatch)
    synth = ["synth", "--out", tmp_path / "pairs", "--num", "4", "--size", "32x64", "--frames", "5", "--quiet"]
    assert_refused(capsys, synth, ["--out", "GiB are free"], tmp_path)
    cache = ["cache", "--data", data, "--model", tmp_path / "model", "--out", tmp_path / "cache", "--quiet"]
    assert_refused(capsys, cache, ["--out", "GiB are free"], tmp_path)
