"""No command replaces what it did not write: `animate` re-runs over its own outputs, never over a user's folder or
its inputs; `convert --overwrite` replaces only an earlier conversion; `synth` resumes a failed first run."""

from __future__ import annotations

import json
import os

import pytest

from scail2 import bundled
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from tests.commands.corpus import assert_refused, run, snapshot
from tests.commands.test_bad_inputs_animate import animate_args, world  # noqa: F401 (fixture)

FAST = SamplingSettings(sampler="euler", steps=1, shift=3.0, guidance_scale=1.0, segment_length=9, overlap=5)


@pytest.fixture
def tiny_bundled(tiny_model, monkeypatch):
    monkeypatch.setattr(bundled, "BUNDLED_MODEL", tiny_model)
    monkeypatch.setattr(bundled, "BUNDLED_SIZE", (64, 96))
    monkeypatch.setattr(bundled, "BUNDLED_SAMPLING", FAST)


def test_animate_replaces_its_own_outputs_and_nothing_else(world, tiny_bundled, tmp_path, capsys):  # noqa: F811
    user = snapshot(world)
    out, frames = tmp_path / "o.mp4", tmp_path / "frames"
    args = animate_args(world, out=out, frames_dir=frames)
    for _ in range(2):  # the second run replaces the first run's video, manifest and frames
        code, _, err = run(capsys, *args)
        assert code == 0, err
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i:06d}.png" for i in range(9)]
    assert json.loads(out.with_suffix(".json").read_text())["output"] == str(out)
    assert snapshot(world) == user  # the inputs and the user's files are untouched
    (frames / "notes.txt").write_text("the user's")  # now the folder holds something animate did not write
    assert_refused(capsys, args, ["--frames-dir"], tmp_path)
    out.with_suffix(".json").unlink()  # an .mp4 without our manifest could be anyone's
    assert_refused(capsys, animate_args(world, out=out), ["--out", "not written by"], tmp_path)


def test_convert_overwrite_replaces_only_a_conversion(tiny_model, tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "keep.txt").write_text("mine")
    weights = tiny_model / "transformer" / "diffusion_pytorch_model.safetensors"
    base = ["convert", "transformer", "--input", weights, "--config", tiny_model / "transformer" / "config.json"]
    assert_refused(capsys, [*base, "--out", user, "--overwrite"], ["--out", "did not write"], tmp_path)
    assert_refused(capsys, [*base, "--out", weights, "--overwrite"], ["--out", "--input"], tmp_path)
    assert_refused(capsys, [*base, "--out", tiny_model, "--overwrite"], ["--out", "--input"], tmp_path)


def test_a_failed_first_synth_does_not_refuse_the_corrected_rerun(tmp_path, capsys):
    from scail2.data.shards import MOTIONPAIR

    out = tmp_path / "pairs"
    out.mkdir()
    # What a first run with other settings, killed before its first shard, leaves: its meta.json and a temporary.
    (out / "meta.json").write_text(json.dumps(MOTIONPAIR.header(generator={"height": 33})))
    leftover = out / ".manifest.json.partial-999999999.json"
    leftover.write_text("{")
    os.utime(leftover, (0, 0))
    code, _, err = run(capsys, "synth", "--out", out, "--num", "2", "--size", "32", "--frames", "5", "--quiet")
    assert code == 0, err
    assert not leftover.exists() and (out / "manifest.json").is_file()
