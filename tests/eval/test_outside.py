"""Clips from outside the procedural world: deterministic, exact masks, scored by the benchmark like any pair."""

from __future__ import annotations

import numpy as np
import pytest

from scail2.eval import benchmark
from scail2.eval.metrics import dilate
from scail2.eval.outside import outside_pair, outside_plate


@pytest.fixture(scope="module")
def pairs():
    return [outside_pair(i, size=64, frames=9) for i in range(3)]


def test_outside_pairs_are_deterministic_and_travel_along_a_curve(pairs):
    again = outside_pair(1, size=64, frames=9)
    assert np.array_equal(again.target, pairs[1].target) and again.key == pairs[1].key
    for sample in pairs:
        sample.check()
        assert sample.task == "animate" and (sample.target_ids > 0).any(axis=(1, 2)).all()  # visible throughout
        outside = ~dilate(sample.target_ids > 0, 1)  # beyond the anti-aliased rim: the plain backdrop
        assert np.array_equal(sample.target[outside], outside_plate(sample.metadata)[outside])
        xs = [np.nonzero(frame.any(axis=0))[0].mean() for frame in sample.driving_ids]
        assert abs(xs[-1] - xs[0]) > 0.3 * 64  # across the frame
        assert not np.array_equal(sample.driving[0], sample.target[0])  # another creature, another backdrop


def test_benchmark_scores_outside_pairs_against_their_backdrop(pairs):
    for sample in pairs:
        truth = benchmark.pair_metrics(sample.target, sample)
        assert truth["silhouette"] >= 0.99 and truth["path_x"] > 0.99
        copied = benchmark.pair_metrics(benchmark.copy_reference(sample), sample)
        assert copied["silhouette"] < 0.6 and not copied["path_x"] > 0.5  # a still creature follows no path
    assert [s.key for s in benchmark.split_pairs(benchmark.OUTSIDE_SPLIT, 1)] == ["outside-00000"]
