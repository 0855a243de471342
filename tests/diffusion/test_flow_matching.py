"""The rectified-flow parametrisation against values worked out by hand or re-derived here in float64."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from scail2.diffusion import flow_matching as fm


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# Shift and grids
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigma, shift, expected",
    [
        (0.5, 3.0, 0.75),  # 1.5 / 2
        (0.25, 5.0, 0.625),  # 1.25 / 2
        (0.5, 1.0, 0.5),  # shift 1 is the identity
        (0.5, 0.5, 1 / 3),  # 0.25 / 0.75: below 1 the grid moves towards low noise
        (0.0, 7.0, 0.0),
        (1.0, 7.0, 1.0),
    ],
)
def test_shift_formula_by_hand(sigma, shift, expected):
    assert fm.shift_sigmas(sigma, shift) == pytest.approx(expected, rel=1e-15)
    assert fm.shift_sigmas(np.array([sigma]), shift)[0] == pytest.approx(expected, rel=1e-15)
    assert fm.shift_sigmas(torch.tensor([sigma], dtype=torch.float64), shift).item() == pytest.approx(expected)


def test_shift_keeps_order_and_spends_more_of_the_grid_at_high_noise():
    sigmas = torch.linspace(0, 1, 11, dtype=torch.float64)
    shifted = fm.shift_sigmas(sigmas, 5.0)
    assert torch.all(shifted[1:] > shifted[:-1])
    assert torch.all(shifted[1:-1] > sigmas[1:-1])


def test_sampling_grid_by_hand():
    # linspace(1, 0, 5) = 1, 3/4, 1/2, 1/4, 0; shifted by 5: 1, 15/16, 5/6, 5/8, 0
    grid = fm.sampling_sigma_grid(4, 5.0)
    assert grid.dtype == np.float64 and grid.shape == (5,)
    np.testing.assert_allclose(grid, [1.0, 15 / 16, 5 / 6, 5 / 8, 0.0], rtol=1e-15, atol=0)
    euler = fm.euler_sigma_grid(4, 5.0)
    assert euler.dtype == torch.float32
    assert euler.tolist() == [1.0, 0.9375, np.float32(5 / 6).item(), 0.625, 0.0]


@pytest.mark.parametrize("num_steps, shift", [(1, 5.0), (7, 3.0), (16, 5.0), (40, 5.0), (23, 0.7)])
def test_grids_equal_a_float64_rederivation(num_steps, shift):
    u = np.array([1.0 - i / num_steps for i in range(num_steps)] + [0.0])  # not linspace: an independent route
    expected = shift * u / (1.0 + (shift - 1.0) * u)
    np.testing.assert_allclose(fm.sampling_sigma_grid(num_steps, shift), expected, rtol=1e-14, atol=0)
    assert torch.equal(fm.euler_sigma_grid(num_steps, shift), torch.from_numpy(expected.astype(np.float32)))


def test_unipc_grid_starts_at_float32_0999_and_drops_the_final_zero():
    start = float(np.float32(0.999))  # 0.99900001287..., not 0.999
    assert start != 0.999
    grid = fm.unipc_sigma_grid(4)
    assert grid.dtype == np.float64 and grid.shape == (4,)
    np.testing.assert_allclose(grid, [start, 0.75 * start, 0.5 * start, 0.25 * start], rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------------------


def test_truncated_timesteps_truncate_instead_of_rounding():
    # the N = 4, shift 5 grid: 1000, 937.5, 833.3, 625 -> 1000, 937, 833, 625 (rounding would give 938)
    timesteps = fm.truncated_timesteps(fm.sampling_sigma_grid(4, 5.0)[:-1])
    assert timesteps.dtype == torch.int64
    assert timesteps.tolist() == [1000, 937, 833, 625]


def test_truncated_timesteps_follow_the_float64_value_not_the_exact_fraction():
    # numpy's linspace(1, 0, 6) holds 0.4 and 0.2 a hair low, so 1000 * sigma is 399.99... and 199.99...:
    # upstream hands the model 399 and 199 where the exact fractions give 400 and 200
    grid = fm.sampling_sigma_grid(5, 1.0)
    exact = [Fraction(5 - i, 5) * 1000 for i in range(5)]
    assert [int(value) for value in exact] == [1000, 800, 600, 400, 200]
    assert fm.truncated_timesteps(grid[:-1]).tolist() == [1000, 800, 600, 399, 199]


def test_sigma_to_timestep_scales_by_the_training_horizon():
    assert fm.NUM_TRAIN_TIMESTEPS == 1000
    assert fm.sigma_to_timestep(torch.tensor([0.0, 0.25, 0.9615])).tolist() == pytest.approx([0.0, 250.0, 961.5])


# ---------------------------------------------------------------------------------------------------------
# Interpolation, velocity, x0
# ---------------------------------------------------------------------------------------------------------


def test_add_noise_velocity_and_x0_are_one_parametrisation():
    g = _generator(0)
    x0, noise = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    sigma = torch.tensor([0.2, 0.7])
    x = fm.add_noise(x0, noise, sigma)
    for b, s in enumerate((0.2, 0.7)):  # per sample, written out
        torch.testing.assert_close(x[b], (1 - s) * x0[b] + s * noise[b])
    velocity = fm.velocity_target(x0, noise)
    torch.testing.assert_close(velocity, noise - x0)
    torch.testing.assert_close(fm.predict_x0(x, velocity, sigma), x0, rtol=0, atol=1e-6)
    # dx/dsigma = v is constant along a straight path: one Euler step to 0 is x0, one to 1 is the noise
    torch.testing.assert_close(fm.euler_step(x, velocity, sigma, torch.zeros(2)), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(fm.euler_step(x, velocity, sigma, torch.ones(2)), noise, rtol=0, atol=1e-6)


def test_a_scalar_sigma_broadcasts_over_the_whole_batch():
    x0, noise = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert torch.equal(fm.add_noise(x0, noise, torch.tensor(0.25)), torch.full((2, 3, 4), 0.25))
    assert torch.equal(fm.add_noise(x0, noise, torch.tensor([0.25])), torch.full((2, 3, 4), 0.25))


def test_masked_velocity_loss_averages_over_every_element():
    prediction, target = torch.full((2, 3, 4), 2.0), torch.zeros(2, 3, 4)
    mask = torch.zeros(2, 3, 4)
    mask[0, :, :2] = 1  # half of sample 0; none of sample 1
    assert fm.masked_velocity_loss(prediction, target, mask).tolist() == [2.0, 0.0]  # 4 * 12 / 24


# ---------------------------------------------------------------------------------------------------------
# Training-time sigmas and the resolution shift
# ---------------------------------------------------------------------------------------------------------


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_training_sigmas_are_a_shifted_logit_normal(shift):
    n = 40_000
    sigmas = fm.sample_training_sigmas(n, shift, generator=_generator(7))
    assert sigmas.shape == (n,) and sigmas.dtype == torch.float32
    assert 0 < sigmas.min() and sigmas.max() < 1
    # the shift is monotone, so quantiles map through it: the median is shift(1/2) = s / (1 + s), and
    # P(sigma < shift(sigmoid(1))) = Phi(1); tolerances are ~4 standard errors at n = 40,000
    assert sigmas.median().item() == pytest.approx(shift / (1 + shift), abs=0.01)
    one = 1 / (1 + math.exp(-1))
    below = (sigmas < shift * one / (1 + (shift - 1) * one)).float().mean().item()
    assert below == pytest.approx(_normal_cdf(1.0), abs=0.01)
    if shift == 1.0:  # sigmoid(z) with z symmetric about 0 has mean 1/2
        assert sigmas.mean().item() == pytest.approx(0.5, abs=0.005)


def test_training_sigmas_repeat_with_the_generator_seed():
    first = fm.sample_training_sigmas(6, 3.0, generator=_generator(1))
    assert torch.equal(first, fm.sample_training_sigmas(6, 3.0, generator=_generator(1)))
    assert not torch.equal(first, fm.sample_training_sigmas(6, 3.0, generator=_generator(2)))


@pytest.mark.parametrize(
    "height, width, mu",
    [
        (32, 32, 0.5),  # 256 tokens per latent frame
        (16, 64, 0.5),  # the same token count on an unequal grid
        (128, 128, 1.15),  # 4096 tokens
        (64, 136, 0.825),  # 2176 tokens: halfway
        (60, 104, 0.5 + 0.65 * (1560 - 256) / 3840),  # 480x832 video
    ],
)
def test_resolution_shift_is_exp_of_a_line_in_token_count(height, width, mu):
    assert fm.resolution_shift(height, width) == pytest.approx(math.exp(mu), rel=1e-12)
