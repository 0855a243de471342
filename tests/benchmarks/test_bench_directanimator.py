"""The DirectAnimator comparison's driving-video degradations (the script itself is run by hand)."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_directanimator import DEGRADATIONS, degrade


def test_degradations_keep_the_shape_and_do_what_they_say():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    for name in DEGRADATIONS:
        out = degrade(video, name)
        assert out.shape == video.shape and out.dtype == np.uint8
    darker = degrade(video, "darkened").astype(float)
    assert np.allclose(darker, np.round(video * 0.35), atol=1)
    for name in ("blurred", "low_resolution"):  # both remove pixel-level detail: neighbours grow alike
        detail = lambda v: np.abs(np.diff(v.astype(float), axis=2)).mean()  # noqa: E731
        assert detail(degrade(video, name)) < 0.5 * detail(video)
