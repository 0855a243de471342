"""The DirectAnimator comparison's driving-video degradations, its driver rescaling and its per-body-plan tables
(the script itself is run by hand)."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_directanimator import (
    VIDEO_DEGRADATIONS,
    Bench,
    DegradedDriverMethod,
    character_anchor,
    degrade,
    degrade_pair,
    markdown,
    rescale_character,
)
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.eval.benchmark import copy_reference
from scail2.eval.directanimator import DirectAnimatorMethod


def test_degradations_keep_the_shape_and_do_what_they_say():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    for name in VIDEO_DEGRADATIONS:
        out = degrade(video, name)
        assert out.shape == video.shape and out.dtype == np.uint8
    darker = degrade(video, "darkened").astype(float)
    assert np.allclose(darker, np.round(video * 0.35), atol=1)
    for name in ("blurred", "low_resolution"):  # both remove pixel-level detail: neighbours grow alike
        detail = lambda v: np.abs(np.diff(v.astype(float), axis=2)).mean()  # noqa: E731
        assert detail(degrade(video, name)) < 0.5 * detail(video)


def _clip_with_a_block():
    """A 2-frame 8 x 8 clip: a 2 x 2 character (id 1, detail 3) whose bottom centre is (4, 6), on white."""
    frames = np.full((2, 8, 8, 3), 255, np.uint8)
    ids = np.zeros((2, 8, 8), np.uint8)
    ids[:, 4:6, 3:5] = 1
    frames[ids > 0] = (200, 10, 10)
    detail = np.where(ids > 0, 3, 0).astype(np.uint8)
    plate = np.zeros_like(frames)
    return frames, ids, detail, plate


def test_rescale_character_scales_about_the_bottom_centre_over_the_plate():
    frames, ids, detail, plate = _clip_with_a_block()
    assert character_anchor(ids) == (4.0, 6.0)
    big, big_ids, big_detail = rescale_character(frames, ids, detail, plate, 2.0)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True  # twice the size, the same bottom centre
    assert (big_ids[0] > 0).tolist() == expected.tolist() and (big_ids[1] > 0).tolist() == expected.tolist()
    assert (big_detail > 0).tolist() == (big_ids > 0).tolist()
    assert (big[big_ids > 0] == (200, 10, 10)).all() and (big[big_ids == 0] == 0).all()  # the plate elsewhere
    small, small_ids, _ = rescale_character(frames, ids, detail, plate, 0.5)
    assert np.argwhere(small_ids[0]).tolist() == [[5, 3]]  # one pixel, feet on the same ground line
    again = rescale_character(frames, ids, detail, plate, 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(again, (small, small_ids, _)))  # deterministic
    same = rescale_character(frames, ids, detail, plate, 1.0)
    assert np.array_equal(same[0], np.where(ids[..., None] > 0, frames, plate)) and np.array_equal(same[1], ids)


def test_per_plan_groups_are_kept_and_tabled():
    pairs = [ProceduralPairGenerator(SynthConfig(32, 32, 3, ("animate",), seed=2000)).generate(i) for i in range(3)]
    bench = Bench.__new__(Bench)
    result = bench.score({"copy_reference": copy_reference}, pairs, dependence=False)["copy_reference"]
    plans = sorted({p.metadata["body_plans"]["reference"][0] for p in pairs})
    assert result["all"]["pairs"] == 3 and result["task:animate"]["pairs"] == 3
    assert sorted(g.removeprefix("plan:") for g in result if g.startswith("plan:")) == plans
    assert sum(result[f"plan:{p}"]["pairs"] for p in plans) == 3
    table = markdown({"main": {"copy_reference": result}})
    assert "per body plan" in table and all(f"| {p} | copy_reference |" in table for p in plans)
    assert "per body plan" not in markdown({"main": {"copy_reference": {"all": result["all"]}}})  # older results


def test_a_degraded_driver_method_generates_from_the_degraded_pair():
    from scail2.pipelines.pipeline_scail2 import SamplingSettings
    from tests.pipelines.test_pipeline_directanimator import tiny_directanimator_pipeline

    pair = ProceduralPairGenerator(SynthConfig(32, 32, 5, ("animate",), seed=2000)).generate(0)
    settings = SamplingSettings(sampler="euler", steps=2, shift=1.0, guidance_scale=1.0)
    pipeline = tiny_directanimator_pipeline()
    degraded = DegradedDriverMethod(pipeline, settings, "frames", 0, "small_driver")
    expected = DirectAnimatorMethod(pipeline, settings, seed=0)(degrade_pair(pair, "small_driver"))
    np.testing.assert_array_equal(degraded(pair), expected)
