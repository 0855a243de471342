"""`scail2 animate --cache`: First Block Cache through the CLI on a tiny bundled model, its manifest counts and
the one-line error for an unknown kind."""

from __future__ import annotations

import json

import pytest

from scail2.preprocess.video_io import read_video
from tests.commands.test_animate_default_model import FAST, animate, bundled_at, files  # noqa: F401 (fixtures)


@pytest.fixture
def bundled_tiny(tiny_model, bundled_at):  # noqa: F811
    bundled_at(tiny_model)
    return tiny_model


def test_cache_zero_gives_the_uncached_video_and_a_large_threshold_skips_blocks(bundled_tiny, files, tmp_path):  # noqa: F811
    videos, caches = {}, {}
    for spec in ("none", "fbc:0", "fbc:1e9"):
        out = tmp_path / f"{spec.replace(':', '_')}.mp4"
        assert animate(files, out, "--cache", spec) == 0
        videos[spec] = read_video(out).frames
        caches[spec] = json.loads(out.with_suffix(".json").read_text())["step_cache"]
    assert (videos["fbc:0"] == videos["none"]).all()
    layers, forwards = 2, 2 * FAST.steps  # the tiny preset's blocks; two segments
    assert caches["none"] == {
        "cache": "none",
        "forwards": forwards,
        "blocks_evaluated": forwards * layers,
        "blocks_skipped": 0,
    }
    assert caches["fbc:0"]["blocks_skipped"] == 0
    assert caches["fbc:1e9"]["blocks_skipped"] == 2 * (FAST.steps - 1) * (layers - 1)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cache", "teacache"], "--cache 'teacache' is not one of: none, or fbc[:THRESHOLD]"),
        (["--cache", "fbc", "--compile"], "--cache fbc cannot be combined with --compile"),
    ],
)
def test_bad_cache_flags_are_one_line_errors_before_anything_runs(
    flags,
    message,
    bundled_tiny,
    files,  # noqa: F811
    tmp_path,
    capsys,
):
    out = tmp_path / "o.mp4"
    assert animate(files, out, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list(tmp_path.glob("o.*"))
