"""Rectified-flow parametrisation shared by training and sampling (see docs/architecture.md).

    x_sigma = (1 - sigma) * x0 + sigma * noise        velocity target v = noise - x0
    model timestep t = 1000 * sigma                    x0 = x_sigma - sigma * v

Training draws sigma = sigmoid(N(0, 1)) and shifts it with the resolution-dependent factor; sampling uses
the same shift formula on a descending grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas, shift: float):
    """sigma' = s*sigma / (1 + (s-1)*sigma): spends more steps at high noise for s > 1 (works on tensors/arrays)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    return sigma * NUM_TRAIN_TIMESTEPS


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Interpolate between data and noise; `sigma` is [B] and broadcasts over the other axes."""
    sigma = _per_sample(sigma, x0)
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def predict_x0(x_sigma: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The data estimate a velocity implies (the inverse of `add_noise` given v); samplers' x0 parametrisation."""
    return x_sigma - _per_sample(sigma, x_sigma) * velocity


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of dx/dsigma = v from sigma to sigma_next."""
    return x + _per_sample(sigma_next - sigma, x) * velocity


def masked_velocity_loss(prediction: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over all elements of mask * (v_pred - v)^2 -> [B].

    As upstream, the mean runs over every element (masked ones count as zeros), not over the mask's area.
    """
    squared = (prediction - target).square() * loss_mask
    return squared.flatten(1).mean(dim=1)


def resolution_shift(latent_height: int, latent_width: int) -> float:
    """Training-time shift factor e^mu, mu linear in tokens per latent frame (256 -> 0.5, 4096 -> 1.15)."""
    tokens = latent_height * latent_width / 4
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    return math.exp(mu)


def sample_training_sigmas(
    batch: int, shift: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """sigma = sigmoid(z), z ~ N(0, 1), then shifted: [B] fp32 in (0, 1)."""
    z = torch.randn(batch, generator=generator, device=device)
    return shift_sigmas(torch.sigmoid(z), shift)


def unipc_sigma_grid(num_steps: int) -> np.ndarray:
    """Upstream's UniPC grid: linspace from float32(0.999) to 0 (N+1 points, last dropped), then shifted.

    Pass it to diffusers' flow UniPC scheduler as `set_timesteps(sigmas=...)` (before shifting: the scheduler
    applies `flow_shift` itself) to reproduce upstream's timesteps exactly.
    """
    return np.linspace(float(np.float32(0.999)), 0, num_steps + 1)[:-1]


def sampling_sigma_grid(num_steps: int, shift: float) -> np.ndarray:
    """Upstream's shifted descending grid from 1 to 0 with N+1 points, float64 (the SAT / DPM++ grid).

    numpy's linspace, not torch's: the two round differently in the last bit, and the integer timesteps of
    `truncated_timesteps` depend on that bit wherever 1000 * sigma lands on an integer.
    """
    return shift_sigmas(np.linspace(1.0, 0.0, num_steps + 1), shift)


def truncated_timesteps(sigmas: np.ndarray) -> torch.Tensor:
    """Upstream's model timesteps for a float64 grid: 1000 * sigma truncated toward zero, int64 (961.54 -> 961)."""
    return torch.from_numpy(np.asarray(sigmas, dtype=np.float64) * NUM_TRAIN_TIMESTEPS).to(torch.int64)


def euler_sigma_grid(num_steps: int, shift: float) -> torch.Tensor:
    """`sampling_sigma_grid` rounded to fp32, final 0 included."""
    return torch.from_numpy(sampling_sigma_grid(num_steps, shift)).float()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return values.reshape(-1, *([1] * (like.ndim - 1))) if values.ndim else values
