"""`scail2 demo` and `scail2 eval` through the CLI on a tiny random model folder (the flow, files and reports;
the bundled model's quality is measured by the benchmark, not here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scail2 import bundled
from scail2.animate import load_pipeline
from scail2.cli import main
from scail2.demo import DEMO_CASES, pick_demo_pairs
from scail2.eval import benchmark, report
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from scail2.preprocess.video_io import probe_video

FAST = SamplingSettings(sampler="euler", steps=2, shift=3.0, guidance_scale=1.0, segment_length=17, overlap=5)


@pytest.mark.parametrize("split", ["test", "closeup-test"])
def test_demo_pairs_cover_every_case_and_are_held_out(split):
    pairs = pick_demo_pairs(split)
    assert [label for label, _ in pairs] == [label for label, _ in DEMO_CASES]
    assert all(sample.metadata["seed"] == benchmark.SPLITS[split].seed for _, sample in pairs)
    framing = benchmark.SPLITS[split].world.framing
    worlds = [sample.metadata["generator"]["config"].get("world", {}) for _, sample in pairs]  # wide: no entry
    assert all(world.get("framing", "wide") == framing for world in worlds)
    non_humanoid = dict(pairs)["non-humanoid"].metadata["body_plans"]
    assert "humanoid" not in non_humanoid["reference"] + non_humanoid["driving"]
    assert len(dict(pairs)["multi-character"].metadata["characters"]) >= 2


@pytest.mark.parametrize("split", [None, "closeup-test"])
def test_demo_writes_videos_previews_and_metrics(tiny_model, tmp_path, monkeypatch, capsys, split):
    monkeypatch.setattr(bundled, "BUNDLED_SAMPLING", FAST)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model), "--out", str(out), *(["--split", split] if split else [])]) == 0
    report_ = json.loads((out / "metrics.json").read_text())
    assert report_["split"] == (split or bundled.BUNDLED_SPLIT)
    references = [sample.reference for _, sample in pick_demo_pairs(report_["split"])]
    preview_ = np.asarray(Image.open(out / "preview.png"))
    for row, reference in enumerate(references):  # each row starts with its pair's reference (under its label)
        assert np.array_equal(preview_[128 * row + 14 : 128 * (row + 1), :128], reference[14:])
    assert [row["case"] for row in report_["pairs"]] == [label for label, _ in DEMO_CASES]
    for row in report_["pairs"]:
        info = probe_video(out / row["file"])
        assert (info.width, info.height, info.declared_frames) == (128, 128, 17)
        assert set(row["model"]) == set(benchmark.METRICS + benchmark.DIAGNOSTICS) == set(row["copy_reference"])
    preview = np.asarray(Image.open(out / "preview.png"))
    assert preview.shape[0] == 128 * len(DEMO_CASES)  # a row per case
    gif = Image.open(out / "preview.gif")
    assert gif.n_frames == 17 and gif.size == (4 * 128, 128 * len(DEMO_CASES))
    assert "copy reference" in capsys.readouterr().out
    assert not list(out.glob(".*partial*"))


def test_eval_reports_every_method_and_updates_the_readme(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "BUNDLED_SAMPLING", FAST)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.README_START}\n{report.README_END}\n")
    result = tmp_path / "scores.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model),
            "--skeleton-model",
            str(tiny_model),
            "--pairs",
            "2",
            "--json",
            str(result),
            "--report-dir",
            str(tmp_path / "bench"),
            "--readme",
            str(readme),
            "--quiet",
        ]
    )
    assert code == 0
    scores = json.loads(result.read_text())
    assert list(scores["summary"]) == ["copy_reference", "skeleton", "scail2", "vae_round_trip"]
    assert len(scores["rows"]) == 2 * 4
    assert list(scores["dependence"]) == ["skeleton", "scail2"]  # the models, not copy-reference or the VAE
    assert set(scores["dependence"]["scail2"]) >= {"character_loss", "rise_driving_latents", "rise_driving_masks"}
    text = readme.read_text()
    assert "| SCAIL-2 (ours) |" in text and "| skeleton-driven |" in text and "bench/table.md" in text
    assert "zero driving latents" in (tmp_path / "bench" / "table.md").read_text()
    assert (tmp_path / "bench" / "plot.png").is_file() and (tmp_path / "bench" / "table.md").is_file()


def test_eval_without_a_skeleton_model_is_a_one_line_error(tiny_model, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_model), "--skeleton-model", str(tmp_path / "nowhere"), "--pairs", "1"])
    assert code == 2
    error = capsys.readouterr().err
    assert "no transformer config.json" in error and "--skeleton-model none" in error and error.count("\n") == 1


def test_bundled_models_ship_complete_within_40_mb_and_generate():
    assets = bundled.BUNDLED_MODEL.parent
    size = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"bundled weights take {size / 2**20:.1f} MiB"
    pipeline = load_pipeline(bundled.bundled_model_dir(), torch.device("cpu"))
    assert pipeline.transformer.config.model_type == "t2v" and pipeline.text_encoder is None
    skeleton = report.skeleton_pipeline(bundled.BUNDLED_SKELETON, pipeline.vae)
    # one architecture, one layout (the driving stream added on the video grid); only what drives it differs
    layout = lambda config: {k: v for k, v in config.items() if not k.startswith("_") and k != "driving_signal"}  # noqa: E731
    assert layout(skeleton.transformer.config) == layout(pipeline.transformer.config)
    signals = (pipeline.transformer.config.driving_signal, skeleton.transformer.config.driving_signal)
    assert signals == ("pose_cue", "frames")
    sample = next(s for _, s in pick_demo_pairs() if s.task == "animate")
    settings = SamplingSettings(sampler="euler", steps=2, shift=3.0, guidance_scale=1.0, segment_length=17)
    for model, driving in ((pipeline, "frames"), (skeleton, "skeleton")):
        video = benchmark.ModelMethod(model, settings, driving=driving)(sample)
        assert video.shape == sample.target.shape and 0 < video.std()
