"""The demo benchmark: held-out split, per-pair scores, grouping, reports, and methods on a tiny pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scail2.conditioning import encode_driving
from scail2.data.pairs import SynthConfig
from scail2.errors import Scail2Error
from scail2.eval import benchmark, report
from scail2.pipelines.pipeline_scail2 import SamplingSettings

SMALL = SynthConfig(height=32, width=64, frames=5, seed=2000)  # pipeline sizes are multiples of 32


@pytest.fixture
def small_split(monkeypatch):
    monkeypatch.setitem(benchmark.SPLITS, "test", SMALL)
    return benchmark.split_pairs("test", 6)


def test_split_is_deterministic_and_disjoint_from_training_seeds(small_split):
    again = benchmark.split_pairs("test", 6)
    assert [s.key for s in again] == [s.key for s in small_split]
    assert all(np.array_equal(a.target, b.target) for a, b in zip(again, small_split))
    assert {s.metadata["seed"] for s in small_split} == {SMALL.seed}
    with pytest.raises(ValueError, match="unknown split"):
        benchmark.split_pairs("train")


def test_default_test_split_covers_every_body_plan_and_task():
    from scail2.data.pairs import ProceduralPairGenerator
    from scail2.data.world import PLAN_NAMES

    generator = ProceduralPairGenerator(dataclasses.replace(benchmark.SPLITS["test"], height=16, width=16, frames=1))
    groups = {g for i in range(benchmark.SPLIT_SIZE) for g in benchmark.pair_groups(generator.generate(i))}
    assert {f"plan:{p}" for p in PLAN_NAMES} <= groups
    assert {"task:animate", "task:replace", "task:multi"} <= groups


def test_closeup_splits_are_the_same_seeds_in_the_closeup_world_and_the_cli_offers_every_split():
    from scail2.cli import build_parser
    from scail2.data.world import WORLD_PRESETS

    for name in ("test", "val"):
        wide, closeup = benchmark.SPLITS[name], benchmark.SPLITS[f"closeup-{name}"]
        assert dataclasses.replace(closeup, world=wide.world) == wide
        assert closeup.world == WORLD_PRESETS["closeup"] != wide.world
    parser = build_parser()
    for split in [*benchmark.SPLITS, benchmark.OUTSIDE_SPLIT]:
        assert parser.parse_args(["eval", "--split", split]).split == split
    for split in benchmark.SPLITS:  # the demo takes every procedural split
        assert parser.parse_args(["demo", "--split", split]).split == split


def test_ground_truth_scores_perfectly_and_copy_reference_and_reversed_truth_do_not(small_split):
    truths = []
    for sample in small_split:
        truth = benchmark.pair_metrics(sample.target, sample)
        assert truth["psnr"] == float("inf") and truth["ssim"] == pytest.approx(1.0)
        assert truth["colour_error"] == 0.0 and truth["flicker"] == 0.0
        assert truth["silhouette"] >= 0.99  # the old IoU missed the anti-aliased rim
        assert truth["iou"] > 0.6
        truths.append(truth)
    copied = [benchmark.pair_metrics(benchmark.copy_reference(s), s) for s in small_split]
    backwards = [benchmark.pair_metrics(s.target[::-1].copy(), s) for s in small_split]
    for scores in (copied, backwards):  # pose-sensitive: the right character in the wrong pose scores lower
        assert np.mean([c["silhouette"] for c in scores]) < np.mean([t["silhouette"] for t in truths]) - 0.2
    assert np.nanmean([b["path_x"] for b in backwards]) < 0 < np.nanmean([t["path_x"] for t in truths])
    with pytest.raises(ValueError, match="does not match"):
        benchmark.pair_metrics(small_split[0].target[:2], small_split[0])


def test_summary_groups_and_tables(small_split):
    noisy = lambda s: np.clip(s.target.astype(int) + 10, 0, 255).astype(np.uint8)  # noqa: E731
    rows = benchmark.evaluate({"copy": benchmark.copy_reference, "noisy": noisy}, small_split, progress=False)
    assert len(rows) == 12
    summary = benchmark.summarise(rows)
    assert summary["noisy"]["all"]["pairs"] == 6
    assert summary["noisy"]["all"]["psnr"] == pytest.approx(20 * np.log10(255 / 10), abs=0.6)
    tasks = {s.task for s in small_split}
    assert {g for g in summary["copy"] if g.startswith("task:")} == {f"task:{t}" for t in tasks}
    for group, scores in summary["copy"].items():
        members = [r for r in rows if r["method"] == "copy" and group in r["groups"]]
        assert scores["pairs"] == len(members)
        assert scores["iou"] == pytest.approx(np.mean([r["iou"] for r in members]))
    tables = report.markdown_tables(summary, {"noisy": "noisy truth"})
    assert "| noisy truth | 6 |" in tables and "body plan" in tables
    copy = summary["copy"]["all"]
    assert 0 < copy["flicker_character"] < copy["flicker"]  # cameras pan: scenery changes too
    assert summary["noisy"]["all"]["flicker_character"] == 0  # a constant offset changes nothing over time
    split = f"| on the characters | {copy['flicker_character']:.2f} | 0.00 |"
    assert split in tables and f"| elsewhere | {copy['flicker'] - copy['flicker_character']:.2f} | 0.00 |" in tables
    moving = [m for m in benchmark.METRICS if np.isfinite(summary["copy"]["all"][m])]  # 32 px: y moves < 2 px
    assert {"psnr", "silhouette", "path_x", "flicker"} <= set(moving)
    assert {m: w for m, w in report.wins(summary, "noisy", "copy").items() if m in moving} == dict.fromkeys(
        moving, True
    )
    assert "| silhouette, all pairs | precision |" in tables
    plot = report.plot_summary(summary)
    assert plot.dtype == np.uint8 and plot.ndim == 3 and plot.shape[2] == 3


def test_reports_write_strict_json_and_refuse_empty_runs(tmp_path):
    path = report.write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert path.read_text().split() == ["{", '"a":', "null,", '"b":', "[", "null,", "1.5", "]", "}"]
    assert not list(tmp_path.glob(".*partial*"))
    with pytest.raises(Scail2Error, match="no pairs"):
        report.markdown_tables({})
    with pytest.raises(Scail2Error, match="at least 1"):
        benchmark.split_pairs("test", 0)


def test_readme_section_is_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold table\n{report.README_END}\noutro\n")
    report.update_readme(readme, "new table\n")
    assert readme.read_text() == f"intro\n{report.README_START}\nnew table\n{report.README_END}\noutro\n"
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(Scail2Error, match="markers"):
        report.update_readme(tmp_path / "plain.md", "x")


def test_a_report_folder_readme_without_markers_is_left_alone(tmp_path):
    """A report folder may hold the user's own README.md: only one with the benchmark markers receives the tables."""
    (tmp_path / "README.md").write_text("my notes")
    assert report.details_readme(tmp_path) is None
    report.write_benchmark_readmes({}, "protocol", "tables", readme=None, report_dir=tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes"
    (tmp_path / "README.md").write_text(f"{report.README_START}\n{report.README_END}\n")
    assert report.details_readme(tmp_path) == tmp_path / "README.md"


def test_readme_gets_the_headline_and_the_report_folder_every_table(small_split, tmp_path):
    noisy = lambda s: np.clip(s.target.astype(int) + 10, 0, 255).astype(np.uint8)  # noqa: E731
    methods = {"copy_reference": benchmark.copy_reference, "scail2": noisy, "vae_round_trip": lambda s: s.target}
    summary = benchmark.summarise(benchmark.evaluate(methods, small_split, progress=False))
    tables = report.markdown_tables(summary)
    block = f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n"
    readme, details = tmp_path / "README.md", tmp_path / "docs" / "benchmark" / "README.md"
    details.parent.mkdir(parents=True)
    readme.write_text(block)
    details.write_text(block)
    report.write_benchmark_readmes(summary, "protocol line", tables, readme, details.parent)
    first = (readme.read_text(), details.read_text())
    report.write_benchmark_readmes(summary, "protocol line", tables, readme, details.parent)
    assert (readme.read_text(), details.read_text()) == first  # regenerating changes nothing
    head = readme.read_text()
    assert head.startswith(f"intro\n{report.README_START}\n| method | pairs |")
    assert head.endswith(f"{report.README_END}\noutro\n")
    assert "| SCAIL-2 (ours) | 6 |" in head and "(animate)" not in head and "body plan" not in head
    assert "- SCAIL-2 beats copy-reference on PSNR, SSIM, silhouette, path x," in head
    assert "[docs/benchmark/README.md](docs/benchmark/README.md)" in head
    full = details.read_text()
    assert f"{report.README_START}\nprotocol line\n\n{tables}\n![benchmark plot](plot.png)\n{report.README_END}" in full
    details.unlink()  # no README in the report folder: the README points at table.md
    report.write_benchmark_readmes(summary, "protocol line", tables, readme, details.parent)
    assert "[docs/benchmark/table.md](docs/benchmark/table.md)" in readme.read_text()


def test_verdict_names_wins_losses_and_the_ceiling():
    def scores(psnr, ssim, silhouette, path, colour, flicker):
        paths = dict.fromkeys(("path_x", "path_y", "extent_h", "extent_w"), path)
        return {
            "all": {"pairs": 4, "psnr": psnr, "ssim": ssim, "silhouette": silhouette, **paths}
            | {"colour_error": colour, "flicker": flicker}
        }

    summary = {
        "copy_reference": scores(20, 0.76, 0.46, 0.1, 48, 3.0),
        "skeleton": scores(20, 0.70, 0.45, 0.3, 44, 3.8),
        "scail2": scores(21, 0.70, 0.5, 0.3, 43, 3.7),
        "vae_round_trip": scores(25.8, 0.82, 0.93, 0.9, 28, 3.3),
    }
    assert report.verdict_lines(summary) == [
        "SCAIL-2 beats copy-reference on PSNR, silhouette, path x, path y, height, width and colour error, and "
        "loses on SSIM and flicker.",
        "SCAIL-2 beats the skeleton-driven model on PSNR, silhouette, colour error and flicker, and ties on SSIM, "
        "path x, path y, height and width.",
        "The VAE round trip of the ground truth, the ceiling of any model decoded by this VAE, reaches 25.8 dB, "
        "SSIM 0.820 and silhouette 0.930; even it loses to copy-reference on flicker.",
    ]
    assert report.comparison(summary, "scail2", "vae_round_trip") == (
        "SCAIL-2 loses to the VAE round trip on PSNR, SSIM, silhouette, path x, path y, height, width, colour error "
        "and flicker."
    )


def test_model_methods_run_frames_and_skeleton_conditions(small_split):
    from tests.pipelines.components import tiny_pipeline

    pipeline = tiny_pipeline(text=False, image=False)
    settings = SamplingSettings(sampler="euler", steps=2, shift=1.0, guidance_scale=1.0)
    sample = next(s for s in small_split if s.task == "animate")
    frames = benchmark.ModelMethod(pipeline, settings, driving="frames")(sample)
    skeleton = benchmark.ModelMethod(pipeline, settings, driving="skeleton")(sample)
    assert frames.shape == skeleton.shape == sample.target.shape and frames.dtype == np.uint8
    assert not np.array_equal(frames, skeleton)  # the driving condition differs
    again = benchmark.ModelMethod(pipeline, settings, driving="frames")(sample)
    assert np.array_equal(frames, again)
    ceiling = benchmark.VaeRoundTrip(pipeline)(sample)
    assert ceiling.shape == sample.target.shape
    plate = benchmark.target_plate(sample.metadata)
    round_trips = {}
    own = benchmark.method_plate(benchmark.ModelMethod(pipeline, settings), plate, round_trips)
    assert own.shape == plate.shape and not np.array_equal(own, plate)  # the VAE re-renders the empty scene
    assert benchmark.method_plate(benchmark.VaeRoundTrip(pipeline), plate, round_trips) is own  # one round trip
    assert benchmark.method_plate(benchmark.copy_reference, plate) is plate
    dependence = benchmark.driver_dependence(
        {"copy": benchmark.copy_reference, "ours": benchmark.ModelMethod(pipeline, settings)}, [sample], False
    )
    assert list(dependence) == ["ours"] and np.isfinite(dependence["ours"]["rise_driving_latents"])


def test_the_dependence_check_encodes_the_driver_as_each_model_reads_it(small_split):
    from tests.pipelines.components import tiny_pipeline

    settings = SamplingSettings(sampler="euler", steps=1, shift=1.0, guidance_scale=1.0)
    sample = next(s for s in small_split if s.task == "animate")
    layouts = {
        "half": {},
        "added_cue": dict(driving_scale=1, driving_injection="add", driving_signal="pose_cue"),
    }
    methods = {
        name: benchmark.ModelMethod(tiny_pipeline(text=False, image=False, **layout), settings)
        for name, layout in layouts.items()
    }
    seen = {}
    for name, method in methods.items():
        forward = method.pipeline.transformer.forward
        method.pipeline.transformer.forward = lambda *a, _f=forward, _n=name, **k: (
            seen.setdefault(_n, k) and _f(*a, **k)
        )
    dependence = benchmark.driver_dependence(methods, [sample], False)
    assert all(np.isfinite(dependence[name]["rise_driving_latents"]) for name in layouts)
    latent = seen["half"]["hidden_states"].shape[-2:]
    assert seen["half"]["pose_latents"].shape[-2:] == (latent[0] // 2, latent[1] // 2)
    assert seen["added_cue"]["pose_latents"].shape[-2:] == latent
    driving, masks = torch.from_numpy(sample.driving.copy()), torch.from_numpy(sample.driving_mask())
    cue = encode_driving(methods["added_cue"].pipeline.codec, driving, 1, "pose_cue", masks)[0]
    assert any(torch.allclose(given, cue, atol=1e-6) for given in seen["added_cue"]["pose_latents"])
