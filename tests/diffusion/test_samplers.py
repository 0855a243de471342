"""The three samplers against closed forms and against DPM-Solver++(2M) and UniPC written out here in float64.

Two toy denoisers whose answers are known:
- a point mass at x0: the exact velocity is (x - x0) / sigma, and every sampler must land on x0;
- Gaussian data N(mu, tau^2) per element: the exact posterior mean makes the velocity linear in x, and the flow
  ODE carries noise n to mu + tau * n, which the samplers approach as steps grow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scail2.diffusion.samplers import SAMPLERS, FlowSampler

SHAPE = (2, 3, 4, 5)  # unequal sizes, so a swapped axis fails instead of broadcasting


def _tensors(seed: int, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes]


def gaussian_x0(x: torch.Tensor, sigma: float, mu: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_sigma] for x0 ~ N(mu, tau^2) and x_sigma = (1 - sigma) x0 + sigma n."""
    alpha = 1 - sigma
    gain = alpha * tau**2 / (alpha**2 * tau**2 + sigma**2)
    return mu + gain * (x - alpha * mu)


def run_sampler(sampler: FlowSampler, noise: torch.Tensor, x0_fn) -> tuple[torch.Tensor, list[float]]:
    """The sampler loop in fp32 with velocity (x - x0_fn(x, sigma)) / sigma; returns the result and the timesteps."""
    latent, seen = noise.float().clone(), []
    for index, timestep in enumerate(sampler.timesteps):
        sigma = float(sampler.sigmas[index])
        velocity = (latent.double() - x0_fn(latent.double(), sigma)) / sigma
        seen.append(float(timestep))
        latent = sampler.step(velocity.float(), index, latent)
    return latent, seen


# ---------------------------------------------------------------------------------------------------------
# Timesteps handed to the model
# ---------------------------------------------------------------------------------------------------------


def test_each_sampler_hands_the_model_its_timesteps():
    # grid for N = 4, shift 5: sigma 1, 15/16, 5/6, 5/8 -> 1000 * sigma = 1000, 937.5, 833.3, 625
    assert FlowSampler("dpm++", 4, 5.0).timesteps.tolist() == [1000, 937, 833, 625]  # truncated
    euler = FlowSampler("euler", 4, 5.0).timesteps
    torch.testing.assert_close(euler, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))  # fractional
    # UniPC's grid starts at float32(0.999): 0.999 * 5 / (1 + 4 * 0.999) = 0.99980 -> 999
    assert FlowSampler("unipc", 4, 5.0).timesteps.tolist()[0] == 999
    for name in SAMPLERS:
        assert FlowSampler(name, 4, 5.0).timesteps.dtype == torch.float32


@pytest.mark.parametrize("num_steps, shift", [(5, 1.0), (10, 3.0), (16, 5.0), (40, 5.0), (50, 8.0)])
def test_dpm_and_unipc_timesteps_are_upstreams_float64_truncation(num_steps, shift):
    def truncate(u):  # upstream: the float64 grid shifted, times 1000, cut toward zero
        return np.trunc(1000 * (shift * u / (1 + (shift - 1) * u))).tolist()

    dpm = FlowSampler("dpm++", num_steps, shift)
    assert dpm.timesteps.tolist() == truncate(np.linspace(1, 0, num_steps + 1)[:-1])
    unipc = FlowSampler("unipc", num_steps, shift)
    assert unipc.timesteps.tolist() == truncate(np.linspace(float(np.float32(0.999)), 0, num_steps + 1)[:-1])
    for sampler in (dpm, unipc):
        assert sampler.sigmas.dtype == torch.float32 and len(sampler.sigmas) == num_steps + 1
        assert sampler.sigmas[-1] == 0


def test_the_float64_rule_gives_399_where_the_exact_grid_gives_400():
    assert FlowSampler("dpm++", 5, 1.0).timesteps.tolist() == [1000, 800, 600, 399, 199]


def test_the_first_step_is_found_by_position_even_where_timesteps_repeat():
    sampler = FlowSampler("unipc", 400, 5.0)  # steps finer than one timestep unit near sigma = 1
    assert sampler.timesteps[0] == sampler.timesteps[1]
    (x0,) = _tensors(1, SHAPE)
    latent, _ = run_sampler(sampler, torch.randn(SHAPE), lambda x, sigma: x0)
    torch.testing.assert_close(latent, x0.float(), rtol=0, atol=1e-5)


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        FlowSampler("ddim", 4, 5.0)
    with pytest.raises(ValueError, match="at least 1"):
        FlowSampler("euler", 0, 5.0)


# ---------------------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("num_steps", [1, 2, 7])
def test_every_sampler_lands_on_a_point_mass(name, num_steps):
    x0, noise = _tensors(2, SHAPE, SHAPE)
    latent, _ = run_sampler(FlowSampler(name, num_steps, 3.0), noise, lambda x, sigma: x0)
    torch.testing.assert_close(latent, x0.float(), rtol=0, atol=1e-5)


def gaussian_flow_end(noise: torch.Tensor, sigma_start: float, mu: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Where the exact flow ODE carries `noise` at `sigma_start` to at sigma = 0 (mu + tau * noise from 1).

    x_sigma has marginal N((1 - sigma) mu, s(sigma)^2), s^2 = (1 - sigma)^2 tau^2 + sigma^2; the flow keeps the
    standardised value (x - (1 - sigma) mu) / s(sigma) fixed along a path.
    """
    alpha = 1 - sigma_start
    return mu + tau * (noise - alpha * mu) / (alpha**2 * tau**2 + sigma_start**2) ** 0.5


@pytest.mark.parametrize("name, ratio", [("euler", (0.45, 0.55)), ("unipc", (0.2, 0.42)), ("dpm++", (0.2, 0.45))])
def test_every_sampler_converges_to_the_gaussian_flow_at_its_order(name, ratio):
    """Doubling the steps halves Euler's error and cuts the multistep solvers' by more (second order, with
    the first-order final step into sigma = 0)."""
    mu, log_tau, noise = _tensors(3, SHAPE, SHAPE, SHAPE)
    tau = log_tau.mul(0.5).exp()  # 0.19 ... 4.2 across the elements
    errors = []
    for num_steps in (40, 80, 160):
        sampler = FlowSampler(name, num_steps, 3.0)
        latent, _ = run_sampler(sampler, noise, lambda x, sigma: gaussian_x0(x, sigma, mu, tau))
        exact = gaussian_flow_end(noise, float(sampler.sigmas[0]), mu, tau)  # UniPC starts at 0.9998
        errors.append((latent.double() - exact).abs().max().item())
    for coarse, fine in zip(errors, errors[1:]):
        assert ratio[0] < fine / coarse < ratio[1], errors
    assert errors[-1] < (0.06 if name == "euler" else 5e-3), errors


# ---------------------------------------------------------------------------------------------------------
# The multistep solvers written out in float64 (Lu et al. 2022; Zhao et al. 2023), with alpha = 1 - sigma
# ---------------------------------------------------------------------------------------------------------


def _lambda(sigma: float) -> float:
    """Half the log signal-to-noise ratio, log(alpha / sigma): -inf at sigma = 1 (pure noise), +inf at 0."""
    if sigma in (0.0, 1.0):
        return math.inf if sigma == 0 else -math.inf
    return math.log(1 - sigma) - math.log(sigma)


def dpm_solver_pp_2m(sigmas: list[float], noise: torch.Tensor, x0_fn) -> torch.Tensor:
    """Second order from the second step on, first order on the first and on the final step to sigma = 0."""
    x, previous = noise.clone(), None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        d = x0_fn(x, s)
        h = _lambda(t) - _lambda(s)
        phi = math.expm1(-h)  # e^{-h} - 1, -1 on the final step
        x_next = (t / s) * x - (1 - t) * phi * d
        if previous is not None and t > 0:
            r = (_lambda(s) - _lambda(sigmas[i - 1])) / h
            x_next = x_next - 0.5 * (1 - t) * phi * (d - previous) / r  # midpoint correction
        x, previous = x_next, d
    return x


def _unipc_coefficients(h: float, r: float | None) -> list[float]:
    """Solve for UniC's weights with B(h) = e^{-h} - 1 (bh2); `r` the ratio of the older step (None: order 1)."""
    hh = -h
    b_h = math.expm1(hh)
    phi_1 = b_h / hh - 1  # (e^{hh} - 1 - hh) / hh
    phi_2 = phi_1 / hh - 0.5  # (e^{hh} - 1 - hh - hh^2 / 2) / hh^2
    if r is None:
        return [0.5]
    rhs = np.array([phi_1 / b_h, 2 * phi_2 / b_h])
    return np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), rhs).tolist()  # rows: r^0, r^1 of (r, 1)


def unipc_bh2(sigmas: list[float], noise: torch.Tensor, x0_fn) -> torch.Tensor:
    """UniP-2 predictor (weight 1/2 on the divided difference) and UniC corrector, order 1 first and last."""
    n = len(sigmas) - 1
    x, history, orders = noise.clone(), [], []  # history: (x0 prediction, sigma) of earlier steps
    previous_x = None
    for i in range(n):
        d = x0_fn(x, sigmas[i])
        if i > 0:  # correct x with the fresh prediction, at the order the previous predictor used
            s0, t = sigmas[i - 1], sigmas[i]
            h = _lambda(t) - _lambda(s0)
            d0 = history[-1][0]
            base = (t / s0) * previous_x - (1 - t) * math.expm1(-h) * d0
            if orders[-1] == 1:
                rho = _unipc_coefficients(h, None)
                x = base - (1 - t) * math.expm1(-h) * rho[0] * (d - d0)
            else:
                d1, s1 = history[-2]
                r = (_lambda(s1) - _lambda(s0)) / h
                rho = _unipc_coefficients(h, r)
                correction = rho[0] * (d1 - d0) / r + rho[1] * (d - d0)
                x = base - (1 - t) * math.expm1(-h) * correction
        history.append((d, sigmas[i]))
        order = 1 if i == 0 or i == n - 1 else 2
        orders.append(order)
        s0, t = sigmas[i], sigmas[i + 1]
        h = _lambda(t) - _lambda(s0)
        x_next = (t / s0) * x - (1 - t) * math.expm1(-h) * d
        if order == 2:
            d1, s1 = history[-2]
            r = (_lambda(s1) - _lambda(s0)) / h
            x_next = x_next - (1 - t) * math.expm1(-h) * 0.5 * (d1 - d) / r
        previous_x, x = x, x_next
    return x


def _gaussian_case(seed: int):
    mu, log_tau, noise = _tensors(seed, SHAPE, SHAPE, SHAPE)
    tau = log_tau.mul(0.5).exp()
    return noise, lambda x, sigma: gaussian_x0(x, sigma, mu, tau)


@pytest.mark.parametrize("num_steps, shift", [(2, 5.0), (5, 3.0), (8, 5.0), (16, 5.0)])
def test_dpm_plus_plus_equals_dpm_solver_pp_2m_by_hand(num_steps, shift):
    sampler = FlowSampler("dpm++", num_steps, shift)
    noise, x0_fn = _gaussian_case(4)
    latent, _ = run_sampler(sampler, noise, x0_fn)
    expected = dpm_solver_pp_2m(sampler.sigmas.double().tolist(), noise, x0_fn)
    torch.testing.assert_close(latent.double(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("num_steps, shift", [(2, 5.0), (3, 3.0), (6, 5.0), (12, 5.0)])
def test_unipc_equals_unipc_bh2_by_hand(num_steps, shift):
    sampler = FlowSampler("unipc", num_steps, shift)
    noise, x0_fn = _gaussian_case(5)
    latent, _ = run_sampler(sampler, noise, x0_fn)
    expected = unipc_bh2(sampler.sigmas.double().tolist(), noise, x0_fn)
    torch.testing.assert_close(latent.double(), expected, rtol=0, atol=2e-6)


def test_the_hand_written_solvers_are_not_trivially_equal():
    """Guards the two comparisons above: the solvers differ from each other and from Euler at few steps."""
    noise, x0_fn = _gaussian_case(6)
    sigmas = FlowSampler("dpm++", 6, 5.0).sigmas.double().tolist()
    dpm, unipc = dpm_solver_pp_2m(sigmas, noise, x0_fn), unipc_bh2(sigmas, noise, x0_fn)
    euler, _ = run_sampler(FlowSampler("euler", 6, 5.0), noise, x0_fn)
    assert (dpm - unipc).abs().max() > 1e-3 and (dpm - euler.double()).abs().max() > 1e-3
