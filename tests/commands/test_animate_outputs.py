"""`scail2 animate` writes a QA report with every output, and --alpha, --qa-retry, --handoff and --color-anchor
work through the CLI (tiny bundled model)."""

from __future__ import annotations

import json

import pytest

from tests.commands.test_animate_default_model import animate, bundled_at, files  # noqa: F401 (fixtures)


@pytest.fixture
def bundled_tiny(tiny_model, bundled_at):  # noqa: F811
    bundled_at(tiny_model)
    return tiny_model


def test_animate_writes_qa_and_alpha_outputs(bundled_tiny, files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "o.mp4"
    flags = ["--alpha", "--qa-retry", "1", "--handoff", "hybrid", "--color-anchor", "0.05"]
    assert animate(files, out, *flags) == 0
    assert "QA " in capsys.readouterr().out
    manifest = json.loads(out.with_suffix(".json").read_text())
    block = manifest["qa"]
    assert block["status"] in ("pass", "warn") and block["frames"] == {"output": 11, "driving": 11}
    assert block["checks"]["frame_count_difference"]["status"] == "pass"
    assert block["checks"]["fps_difference"]["status"] == "pass"
    assert (tmp_path / "o.qa.json").is_file() and (tmp_path / "o.qa.png").is_file()
    assert "rejected_segments" in block  # the gate ran
    assert manifest["request"]["handoff"] == "hybrid" and manifest["request"]["color_anchor"] == 0.05
    assert len(list((tmp_path / "o_alpha").glob("*.png"))) == 11 and (tmp_path / "o.alpha.mov").is_file()
    assert len(list((tmp_path / "o_rgba").glob("*.png"))) == 11 and manifest["alpha"]["source"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--color-anchor", "2"], "--color-anchor: must be in [0, 1]"),
        (["--qa-retry", "-1"], "--qa-retry: must be in [0, 20]"),
    ],
)
def test_bad_output_flags_are_refused(flags, message, bundled_tiny, files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "o.mp4"
    assert animate(files, out, *flags) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("o*"))
