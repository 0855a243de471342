"""DirectAnimator in the benchmark: animation pairs only, its cue driver-dependence check and the eval flag."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from scail2.errors import Scail2Error
from scail2.eval import benchmark, report
from scail2.eval.directanimator import DirectAnimatorMethod, directanimator_method
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from tests.eval.test_benchmark import SMALL
from tests.pipelines.test_pipeline_directanimator import tiny_directanimator_pipeline

SETTINGS = SamplingSettings(sampler="euler", steps=2, shift=1.0, guidance_scale=1.0)


@pytest.fixture(scope="module")
def pairs():
    generator = benchmark.ProceduralPairGenerator(SMALL)
    samples = [generator.generate(index) for index in range(8)]
    animated = [s for s in samples if s.task == "animate"][:1]
    other = [s for s in samples if s.task != "animate"][:1]
    assert animated and other
    return animated + other


def test_directanimator_scores_animation_pairs_only_and_reads_its_pose_cue(pairs):
    method = DirectAnimatorMethod(tiny_directanimator_pipeline(), SETTINGS, seed=0)
    rows = benchmark.evaluate({"copy_reference": benchmark.copy_reference, "directanimator": method}, pairs, False)
    mine = [row for row in rows if row["method"] == "directanimator"]
    assert [row["task"] for row in mine] == ["animate"] and np.isfinite(mine[0]["silhouette"])
    summary = benchmark.summarise(rows)
    assert summary["directanimator"]["all"]["pairs"] == 1 and summary["copy_reference"]["all"]["pairs"] == 2
    tables = report.markdown_tables(summary)  # plans the method skipped show n/a, not a KeyError
    assert "DirectAnimator (animation pairs only)" in tables
    report.plot_summary(summary)
    dependence = benchmark.driver_dependence({"directanimator": method}, pairs, False)["directanimator"]
    assert dependence["character_loss"] > 0
    assert dependence["rise_driving_latents"] != 0 and np.isfinite(dependence["rise_driving_masks"])
    assert "DirectAnimator" in report.dependence_table({"directanimator": dependence})


def test_the_flag_wants_a_directanimator_folder(tmp_path):
    with pytest.raises(Scail2Error, match="--directanimator-model .* no model_index.json"):
        directanimator_method(tmp_path, SETTINGS)
    tiny_directanimator_pipeline().save_pretrained(tmp_path / "da")
    method = directanimator_method(tmp_path / "da", SETTINGS, seed=2)
    assert isinstance(method, DirectAnimatorMethod) and method.seed == 2 and method.pipeline.cue_settings.grid == 8
    args = argparse.Namespace(
        split="test", model=None, skeleton_model="none", directanimator_model="runs/da/export/model", pairs=4,
        steps=None, shift=None, json=None, report_dir=None, readme=None, seed=0, no_dependence=True,
    )  # fmt: skip
    assert "--directanimator-model runs/da/export/model" in report.command_line(args)


def test_skeleton_driving_generates_from_skeleton_pose_cues(pairs):
    pipeline = tiny_directanimator_pipeline()
    from_frames = DirectAnimatorMethod(pipeline, SETTINGS, seed=0)(pairs[0])
    from_skeleton = DirectAnimatorMethod(pipeline, SETTINGS, driving="skeleton", seed=0)(pairs[0])
    assert from_skeleton.shape == from_frames.shape and not np.array_equal(from_skeleton, from_frames)
    np.testing.assert_array_equal(
        DirectAnimatorMethod(pipeline, SETTINGS, driving="skeleton", seed=0)(pairs[0]), from_skeleton
    )
