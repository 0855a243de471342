"""One optimiser step of each trainer against pinned numbers, and the learning-rate schedule of every shipped config.

The numbers live in tests/train/pinned/step.json; `tests/train/pinned/regenerate_step.py` rewrites them (only after
a change meant to move them). Tolerances are tight but not bit-exact: another BLAS or thread count reorders sums.
"""

from __future__ import annotations

import json

import pytest

from tests.train.pinned.regenerate_step import PINNED, learning_rates, transformer_step, vae_step

RTOL = 1e-5
ELEMENT_ATOL = 1e-5  # times the parameter's gradient norm: elements near zero carry rounding of the whole sum


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(PINNED.read_text())


def assert_step_matches(got: dict, pinned: dict) -> None:
    for key, value in pinned.items():
        if key != "parameters":
            assert got[key] == pytest.approx(value, rel=RTOL, abs=1e-9), key
    assert got["parameters"].keys() == pinned["parameters"].keys()
    for name, stats in pinned["parameters"].items():
        mine, atol = got["parameters"][name], ELEMENT_ATOL * stats["grad_norm"]
        for key in ("grad_norm", "update_norm", "ema_shift_norm"):
            assert mine[key] == pytest.approx(stats[key], rel=RTOL), (name, key)
        assert mine["grad_mean"] == pytest.approx(stats["grad_mean"], rel=RTOL, abs=atol), name
        assert mine["grad_head"] == pytest.approx(stats["grad_head"], rel=RTOL, abs=atol), name


def test_learning_rate_schedules_are_pinned(pinned):
    assert learning_rates() == pinned["learning_rates"]  # plain float arithmetic: bit-identical


def test_transformer_step_is_pinned(pinned, tmp_path):
    assert_step_matches(transformer_step(tmp_path), pinned["transformer"])


def test_vae_step_is_pinned(pinned, tmp_path):
    assert_step_matches(vae_step(tmp_path), pinned["vae"])
