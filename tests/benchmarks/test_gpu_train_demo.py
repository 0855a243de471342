"""The GPU demo-training script's dry run: data, cache and a patch-1 training run with the driver-dependence
check, at tiny sizes on a CPU; every section reported in the JSON (evaluation and previews are the benchmark's
and the demo's own code, tested there)."""

from __future__ import annotations

import json

from benchmarks import gpu_train_demo


def test_dry_run_trains_a_patch_one_model_and_reports_each_section(tmp_path):
    report = gpu_train_demo.main(["--out", str(tmp_path), "--dry-run", "--sections", "synth,cache,train"])
    assert [name for name in report["sections"]] == ["synth", "cache", "train"]
    assert all(section["status"] == "ok" for section in report["sections"].values()), report
    train = report["sections"]["train"]
    assert sorted(train["losses"]) == [1, 2] and list(train["dependence"]) == [2]
    config = json.loads((tmp_path / "run" / "export" / "model" / "transformer" / "config.json").read_text())
    assert config["patch_size"] == [1, 1, 1] and report["layout"] == "added-cue"
    assert (config["driving_scale"], config["driving_injection"], config["driving_signal"]) == (1, "add", "pose_cue")
    assert json.loads((tmp_path / "gpu_train_demo.json").read_text())["sections"]["train"]["status"] == "ok"
