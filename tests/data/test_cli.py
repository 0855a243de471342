"""`scail2 synth` end to end through the real command line."""

from __future__ import annotations

import numpy as np
from PIL import Image

from scail2.cli import main
from scail2.data.shards import MotionPairDataset


def test_synth_writes_a_readable_dataset_and_a_preview(tmp_path, capsys):
    out, preview = tmp_path / "pairs", tmp_path / "sheet.png"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--num",
            "5",
            "--size",
            "32x64",
            "--frames",
            "5",
            "--tasks",
            "animate,multi",
            "--seed",
            "2",
            "--shard-size",
            "2",
            "--workers",
            "2",
            "--preview",
            str(preview),
            "--preview-pairs",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "wrote 3 shards (5 pairs), 0 already present; complete" in printed.out
    assert "synth: 100%" in printed.err  # the progress bar
    samples = list(MotionPairDataset(out))
    assert len(samples) == 5 and {s.task for s in samples} <= {"animate", "multi"}
    assert samples[0].driving.shape == (5, 32, 64, 3)
    sheet = np.asarray(Image.open(preview))
    assert sheet.shape[0] == 3 * (14 + 32 + 4 + 32 + 8) and sheet.shape[2] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs", "sheet.png"]
    # Running the finished command again does nothing and changes nothing.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--num",
                "5",
                "--size",
                "32x64",
                "--frames",
                "5",
                "--tasks",
                "animate,multi",
                "--seed",
                "2",
                "--shard-size",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert "wrote 0 shards (0 pairs), 3 already present; complete" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_synth_bad_input_exits_with_one_clear_line(tmp_path, capsys):
    out = tmp_path / "pairs"
    for argv, message in (
        (["--size", "big"], "--size 'big' is not S or HxW"),
        (["--tasks", "animate,dance"], "unknown tasks ['dance']"),
        (["--shard-index", "1"], "give both --shard-index and --num-shards"),
        (["--shard-index", "3", "--num-shards", "2"], "shard index 3 is not in 0..1"),
    ):
        assert main(["synth", "--out", str(out), "--num", "2", *argv]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("scail2 synth: error: ") and message in error and "\n" not in error
    assert main(["synth", "--num", "2"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert not out.exists()
