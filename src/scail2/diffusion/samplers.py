"""Flow-matching samplers with one interface: UniPC (default), DPM++ 2M and Euler, each on upstream's grid, and
`sample`, the sampler loop every caller shares (a pure function of a velocity closure, k-diffusion style).

UniPC and DPM++ are diffusers' schedulers given upstream's exact sigma grids; Euler is the plain rectified-flow
step of `flow_matching`. A fresh sampler is built per segment, as upstream does.

Model timesteps: UniPC and DPM++ hand the model upstream's integers (1000 * sigma of the float64 grid, truncated),
while their steps use the fp32 sigmas; Euler hands the model 1000 * sigma of its fp32 grid, fractional like the
timesteps training draws.
"""

from __future__ import annotations

import torch

from scail2.diffusion import flow_matching

SAMPLERS = ("unipc", "dpm++", "euler")


class FlowSampler:
    """Iterate `for index, timestep in enumerate(sampler.timesteps)`, then `latent = sampler.step(v, index, latent)`.

    `timesteps` are the model timesteps as fp32 values (whole numbers for UniPC and DPM++, see the module note);
    `sigmas` are the N+1 fp32 noise levels the steps move between, the last one 0.
    """

    def __init__(self, name: str, num_steps: int, shift: float):
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        self.name, self.num_steps, self.shift = name, num_steps, shift
        self._scheduler = None
        if name in ("unipc", "dpm++"):
            self._scheduler = _unipc(num_steps, shift) if name == "unipc" else _dpm_plus_plus(num_steps, shift)
            # integer timesteps repeat on fine grids; the scheduler must not look its first step up by value
            self._scheduler.set_begin_index(0)
            self.sigmas = self._scheduler.sigmas
            self.timesteps = self._scheduler.timesteps.float()
        else:
            self.sigmas = flow_matching.euler_sigma_grid(num_steps, shift)
            self.timesteps = flow_matching.sigma_to_timestep(self.sigmas[:-1])

    def step(self, velocity: torch.Tensor, index: int, latent: torch.Tensor) -> torch.Tensor:
        if self._scheduler is None:
            return flow_matching.euler_step(latent, velocity, self.sigmas[index], self.sigmas[index + 1])
        timestep = self._scheduler.timesteps[index]
        return self._scheduler.step(velocity, timestep, latent, return_dict=False)[0]


def _unipc(num_steps: int, shift: float):
    """diffusers UniPC reproduces upstream exactly only on upstream's explicit grid; it truncates the timesteps."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=flow_matching.NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
    )
    scheduler.set_timesteps(sigmas=flow_matching.unipc_sigma_grid(num_steps))
    return scheduler


def _dpm_plus_plus(num_steps: int, shift: float):
    """DPM-Solver++ 2M on upstream's grid: fp32 sigmas of the shifted float64 grid, truncated integer timesteps."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=flow_matching.NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
    )
    scheduler.set_timesteps(num_steps)  # resets the solver state; the grid is replaced below
    sigmas = flow_matching.sampling_sigma_grid(num_steps, shift)
    scheduler.sigmas = torch.from_numpy(sigmas).float()
    scheduler.timesteps = flow_matching.truncated_timesteps(sigmas[:-1])
    return scheduler


# ---------------------------------------------------------------------------------------------------------
# The sampler loop
# ---------------------------------------------------------------------------------------------------------


def classifier_free_guidance(velocity: torch.Tensor, scale: float) -> torch.Tensor:
    """[2B, ...] = [unconditional; conditional] -> unconditional + scale * (conditional - unconditional), [B, ...]."""
    unconditional, conditional = velocity.chunk(2)
    return unconditional + scale * (conditional - unconditional)


def sample(
    velocity_fn,
    latent: torch.Tensor,
    sampler: FlowSampler,
    *,
    guidance_scale: float | None = None,
    clean_prefix: torch.Tensor | None = None,
    callback=None,
) -> torch.Tensor:
    """Integrate the flow from `latent` (noise at the sampler's first sigma) to data; returns a new tensor.

    velocity_fn(latent, timestep) -> velocity: `latent` [B, C, T, H, W] as the loop holds it, `timestep` a 0-d
        fp32 tensor of `sampler.timesteps`. With `guidance_scale` None it returns [B, ...]; with a scale it returns
        [unconditional; conditional] stacked on the batch axis ([2B, ...]) for `classifier_free_guidance`.
    clean_prefix: [B, C, t, H, W] clean frames (a segment's history) written over the first t frames of axis 2
        before the first step and after every step, so the model always sees them exact.
    callback(step_index, timestep, latent) -> tensor or None: called after every step, once the prefix is back;
        a returned tensor replaces the latent (and gets the prefix written into it).
    """
    latent = _write_prefix(latent.clone(), clean_prefix)
    for index, timestep in enumerate(sampler.timesteps):
        velocity = velocity_fn(latent, timestep)
        if guidance_scale is not None:
            velocity = classifier_free_guidance(velocity, guidance_scale)
        latent = _write_prefix(sampler.step(velocity, index, latent), clean_prefix)
        if callback is not None:
            replaced = callback(index, timestep, latent)
            # a copy: the caller's tensor is theirs, and the loop writes the prefix in place
            latent = latent if replaced is None else _write_prefix(replaced.clone(), clean_prefix)
    return latent


def _write_prefix(latent: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """In place: the loop owns `latent`, so re-imposing the prefix costs no copy of the latent per step."""
    if prefix is not None:
        latent[:, :, : prefix.shape[2]] = prefix
    return latent
