"""`samplers.sample`, the loop every caller shares: guidance, clean prefix, callback, and no hidden state."""

from __future__ import annotations

import pytest
import torch

from scail2.diffusion.samplers import FlowSampler, classifier_free_guidance, sample

SHAPE = (1, 3, 4, 5, 6)  # [B, C, T, H, W], unequal sizes


def _randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def point_mass(x0: torch.Tensor, sampler: FlowSampler, calls: list | None = None):
    """The exact velocity towards x0, looking sigma up by call order (integer timesteps are not sigmas)."""

    def velocity(latent, timestep):
        index = len(calls) if calls is not None else int((sampler.timesteps == timestep).nonzero()[0])
        if calls is not None:
            calls.append((float(timestep), latent.clone()))
        return (latent - x0) / sampler.sigmas[index]

    return velocity


def test_classifier_free_guidance_by_hand():
    velocity = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # [unconditional; conditional]
    assert classifier_free_guidance(velocity, 2.5).tolist() == [[6.0, 12.0]]  # 1 + 2.5 * 2, 2 + 2.5 * 4
    assert torch.equal(classifier_free_guidance(velocity, 1.0), velocity[1:])


@pytest.mark.parametrize("name", ["unipc", "dpm++", "euler"])
def test_sample_equals_the_loop_written_out_and_leaves_its_input_alone(name):
    x0, noise = _randn(0, *SHAPE), _randn(1, *SHAPE)
    kept = noise.clone()
    sampler = FlowSampler(name, 5, 3.0)
    calls = []
    result = sample(point_mass(x0, sampler, calls), noise, sampler)
    assert torch.equal(noise, kept)
    assert [t for t, _ in calls] == sampler.timesteps.tolist()

    by_hand, latent = FlowSampler(name, 5, 3.0), noise.clone()
    for index, _ in enumerate(by_hand.timesteps):
        latent = by_hand.step((latent - x0) / by_hand.sigmas[index], index, latent)
    assert torch.equal(result, latent)
    torch.testing.assert_close(result, x0, rtol=0, atol=1e-5)


def test_guidance_combines_the_two_halves_the_velocity_returns():
    x0, noise = _randn(2, *SHAPE), _randn(3, *SHAPE)
    sampler = FlowSampler("euler", 3, 3.0)
    conditional = point_mass(x0, sampler)

    def stacked(latent, timestep):  # [unconditional; conditional]; unconditional pulls towards 0
        return torch.cat(
            [latent / sampler.sigmas[int((sampler.timesteps == timestep).nonzero()[0])], conditional(latent, timestep)]
        )

    guided = sample(stacked, noise, FlowSampler("euler", 3, 3.0), guidance_scale=1.0)
    torch.testing.assert_close(guided, x0, rtol=0, atol=1e-5)  # scale 1 is the conditional flow alone
    half = sample(stacked, noise, FlowSampler("euler", 3, 3.0), guidance_scale=0.5)
    torch.testing.assert_close(half, x0 / 2, rtol=0, atol=1e-5)  # u + 0.5 (c - u): the flow to x0 / 2


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_the_clean_prefix_is_seen_by_every_call_and_kept_exactly(name):
    x0, noise = _randn(4, *SHAPE), _randn(5, *SHAPE)
    prefix = _randn(6, 1, 3, 2, 5, 6)
    sampler = FlowSampler(name, 4, 5.0)
    calls = []
    result = sample(point_mass(x0, sampler, calls), noise, sampler, clean_prefix=prefix)
    assert len(calls) == 4
    for _, seen in calls:
        assert torch.equal(seen[:, :, :2], prefix)
    assert torch.equal(result[:, :, :2], prefix)
    torch.testing.assert_close(result[:, :, 2:], x0[:, :, 2:], rtol=0, atol=1e-5)


def test_the_callback_sees_every_step_and_may_replace_the_latent():
    x0, noise, prefix = _randn(7, *SHAPE), _randn(8, *SHAPE), _randn(9, 1, 3, 1, 5, 6)
    sampler = FlowSampler("dpm++", 4, 5.0)
    seen = []

    def callback(index, timestep, latent):
        seen.append((index, float(timestep)))
        assert torch.equal(latent[:, :, :1], prefix)  # the prefix is back before the callback runs
        return torch.zeros_like(latent) if index == 3 else None

    result = sample(point_mass(x0, sampler), noise, sampler, clean_prefix=prefix, callback=callback)
    assert seen == list(enumerate(sampler.timesteps.tolist()))
    assert torch.equal(result[:, :, :1], prefix)  # re-imposed on the callback's tensor too
    assert result[:, :, 1:].abs().max() == 0
