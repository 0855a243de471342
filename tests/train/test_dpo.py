"""Bias-Aware DPO: the weighted flow-matching errors, the Diffusion-DPO objective, and a few steps on a tiny model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from scail2.errors import Scail2Error
from scail2.train.dpo import (
    DPOConfig,
    diffusion_dpo_loss,
    dpo_lora_config,
    flow_matching_errors,
    lora_disabled,
    preference_loss,
    region_weights_from_detail,
)
from tests.models.helpers import tiny_inputs, tiny_model

MODEL_KEYS = ("hidden_states", "timestep")


def _conditioning(model, seed: int = 0, history: bool = False) -> tuple[dict, torch.Tensor]:
    """The transformer's keyword arguments for B=2 samples, and a clean latent of the right shape."""
    inputs = tiny_inputs(model, seed=seed, history=history)
    latent = inputs["hidden_states"]
    return {k: v for k, v in inputs.items() if k not in MODEL_KEYS}, latent


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------


def test_errors_are_the_plain_mean_without_mask_or_weights():
    g = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, 4, 5, 6, generator=g)
    expected = (prediction - target).square().mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(flow_matching_errors(prediction, target), expected, rtol=1e-6, atol=0)
    ones = torch.ones(2, 1, 4, 5, 6)
    torch.testing.assert_close(
        flow_matching_errors(prediction, target, ones[..., :1, :1], ones), expected, rtol=1e-6, atol=0
    )


def test_region_weights_change_the_errors_as_hand_computed():
    # One sample, one channel, one frame, cells with errors 1, 2, 3 (squared 1, 4, 9). Cell 1 is all limb end,
    # cell 2 half face: weights 1, 1 + 0.5, 1 + 2 * 0.5 -> (1 + 1.5 * 4 + 2 * 9) / (1 + 1.5 + 2) = 25 / 4.5.
    prediction = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 1, 3)
    detail = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]]).view(1, 2, 1, 1, 3)
    weights = region_weights_from_detail(detail, limb_weight=0.5, face_weight=2.0)
    assert weights.shape == (1, 1, 1, 1, 3)
    torch.testing.assert_close(weights.flatten(), torch.tensor([1.0, 1.5, 2.0]))
    error = flow_matching_errors(prediction, torch.zeros_like(prediction), region_weights=weights)
    assert error.item() == pytest.approx(25 / 4.5, rel=1e-6)
    assert flow_matching_errors(prediction, torch.zeros_like(prediction)).item() == pytest.approx(14 / 3, rel=1e-6)


def test_weights_broadcast_over_channels_and_keep_samples_apart():
    g = torch.Generator().manual_seed(1)
    prediction, target = torch.randn(2, 3, 2, 4, 5, generator=g), torch.randn(2, 3, 2, 4, 5, generator=g)
    detail = torch.rand(2, 2, 2, 4, 5, generator=g)
    weights = region_weights_from_detail(detail, 0.7, 1.3)
    errors = flow_matching_errors(prediction, target, region_weights=weights)
    for b in range(2):  # an explicit loop over elements as the reference
        num = den = 0.0
        for c in range(3):
            for t in range(2):
                for y in range(4):
                    for x in range(5):
                        w = 1 + 0.7 * detail[b, 0, t, y, x].item() + 1.3 * detail[b, 1, t, y, x].item()
                        num += w * (prediction[b, c, t, y, x] - target[b, c, t, y, x]).item() ** 2
                        den += w
        assert errors[b].item() == pytest.approx(num / den, rel=1e-5)


def test_history_frames_are_excluded_from_the_errors():
    g = torch.Generator().manual_seed(2)
    prediction, target = torch.randn(2, 3, 4, 2, 3, generator=g), torch.randn(2, 3, 4, 2, 3, generator=g)
    mask = torch.ones(2, 1, 4, 1, 1)
    mask[:, :, :2] = 0  # two clean history frames
    errors = flow_matching_errors(prediction, target, loss_mask=mask)
    torch.testing.assert_close(errors, (prediction - target)[:, :, 2:].square().mean(dim=(1, 2, 3, 4)))
    spoiled = prediction.clone()
    spoiled[:, :, :2] += 100.0
    torch.testing.assert_close(flow_matching_errors(spoiled, target, loss_mask=mask), errors, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------------------


def test_dpo_loss_matches_the_formula_with_pinned_numbers():
    # Policy fits the winner 0.001 better than the reference, the loser equally: logit = 1000 / 2 * 0.001 = 0.5.
    loss, metrics = diffusion_dpo_loss(
        torch.tensor([0.500, 0.7]),
        torch.tensor([0.600, 0.9]),
        torch.tensor([0.501, 0.7]),
        torch.tensor([0.600, 0.9]),
        beta=1000.0,
    )
    expected = (math.log1p(math.exp(-0.5)) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["implicit_accuracy"].item() == 0.5  # the tie in the second pair counts as wrong
    assert metrics["reward_margin"].item() == pytest.approx(0.25, rel=1e-3)
    assert metrics["reference_loser_error"].item() == pytest.approx(0.75)


def test_loss_falls_as_the_policy_improves_the_winner_relative_to_the_reference():
    reference_winner, reference_loser = torch.tensor([0.4, 0.8]), torch.tensor([0.5, 0.6])
    losses = []
    for improvement in (0.0, 1e-4, 5e-4, 2e-3):
        loss, _ = diffusion_dpo_loss(
            reference_winner - improvement, reference_loser.clone(), reference_winner, reference_loser, beta=5000.0
        )
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(2.0))
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    # and the gradient says so: lower the winner's error, raise the loser's
    policy_winner = reference_winner.clone().requires_grad_(True)
    policy_loser = reference_loser.clone().requires_grad_(True)
    diffusion_dpo_loss(policy_winner, policy_loser, reference_winner, reference_loser, beta=5000.0)[0].backward()
    assert (policy_winner.grad > 0).all() and (policy_loser.grad < 0).all()


def test_reference_errors_carry_no_gradient():
    reference = torch.tensor([0.3, 0.2], requires_grad=True)
    policy = torch.tensor([0.1, 0.4], requires_grad=True)
    diffusion_dpo_loss(policy, policy * 2, reference, reference * 3, beta=10.0)[0].backward()
    assert reference.grad is None and policy.grad is not None


def _zero_pair_gradients(dtype: torch.dtype, winner_equals_loser: bool) -> dict[str, torch.Tensor]:
    # nn.Module.to, not ModelMixin.to: the latter keeps the declared fp32 modules in fp32
    policy = torch.nn.Module.to(tiny_model(seed=3), dtype).requires_grad_(True)
    reference = torch.nn.Module.to(tiny_model(seed=4), dtype).requires_grad_(False)  # a real reference gap
    conditioning, latent = _conditioning(policy, seed=5)
    conditioning = {k: v.to(dtype) for k, v in conditioning.items()}
    latent = latent.to(dtype)
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(latent.shape, generator=g, dtype=dtype)
    detail = torch.rand(2, 2, *latent.shape[2:], generator=g, dtype=dtype)
    loser = latent.clone() if winner_equals_loser else latent + 0.1
    loss, metrics = preference_loss(
        policy,
        reference,
        latent,
        loser,
        conditioning,
        noise,
        torch.tensor([0.83, 0.21], dtype=dtype),
        DPOConfig(),
        detail,
    )
    loss.backward()
    if winner_equals_loser:
        assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6) and metrics["reward_margin"].item() == 0.0
    return {name: p.grad for name, p in policy.named_parameters() if p.grad is not None}


def test_zero_gradient_when_the_winner_equals_the_loser():
    # In float64 the winner's and loser's gradients cancel to below 1e-12 (exactly, except on the parameter the
    # model uses twice per pass, patch_embedding_mask, where ~1e-15 of accumulation rounding remains).
    largest = max(g.abs().max().item() for g in _zero_pair_gradients(torch.float64, True).values())
    assert largest < 1e-12, largest
    # In float32 that rounding is ~1e-7 of the gradient a real pair gets; every other parameter is exactly 0.
    scale = max(g.abs().max().item() for g in _zero_pair_gradients(torch.float32, False).values())
    gradients = _zero_pair_gradients(torch.float32, True)
    assert len(gradients) > 40 and max(g.abs().max().item() for g in gradients.values()) < 1e-6 * scale
    assert {name for name, g in gradients.items() if g.any()} <= {
        "patch_embedding_mask.weight",
        "patch_embedding_mask.bias",
    }


# ------------------------------------------------------------------------------------------------------------
# Through the transformer
# ------------------------------------------------------------------------------------------------------------


def test_history_frames_are_the_winners_in_both_inputs_and_not_scored():
    model = tiny_model(seed=8)
    conditioning, winner = _conditioning(model, seed=9, history=True)  # first 2 of 3 latent frames are history
    g = torch.Generator().manual_seed(10)
    loser, noise = winner + torch.randn(winner.shape, generator=g), torch.randn(winner.shape, generator=g)
    reference = tiny_model(seed=11)
    sigma = torch.tensor([0.6, 0.35])
    with torch.no_grad():
        _, metrics = preference_loss(model, reference, winner, loser, conditioning, noise, sigma, DPOConfig())
        changed_history = loser.clone()
        changed_history[:, :, :2] = torch.randn(changed_history[:, :, :2].shape, generator=g)
        _, same = preference_loss(model, reference, winner, changed_history, conditioning, noise, sigma, DPOConfig())
    for key, value in metrics.items():
        assert same[key].item() == value.item(), key
    assert metrics["policy_loser_error"].item() != metrics["policy_winner_error"].item()


def _lora_policy(seed: int, rank: int = 4):
    from peft import inject_adapter_in_model

    base = tiny_model(seed=seed)
    reference = copy.deepcopy(base).requires_grad_(False)
    policy = inject_adapter_in_model(dpo_lora_config(DPOConfig(lora_rank=rank)), base)
    return policy, reference


def test_a_few_steps_on_one_pair_raise_the_implicit_accuracy_and_margin():
    policy, reference = _lora_policy(seed=12)
    frozen = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k}
    conditioning, winner = _conditioning(policy, seed=13)
    g = torch.Generator().manual_seed(14)
    loser = winner + 0.5 * torch.randn(winner.shape, generator=g)
    detail = (torch.rand(2, 2, *winner.shape[2:], generator=g) > 0.7).float()
    draws = [(torch.randn(winner.shape, generator=g), torch.rand(2, generator=g)) for _ in range(3)]
    config = DPOConfig(lora_rank=4)

    def held_out() -> dict[str, float]:
        with torch.no_grad():
            runs = [
                preference_loss(policy, reference, winner, loser, conditioning, n, s, config, detail)[1]
                for n, s in draws
            ]
        return {k: sum(r[k].item() for r in runs) / len(runs) for k in ("loss", "implicit_accuracy", "reward_margin")}

    before = held_out()
    assert before == {"loss": pytest.approx(math.log(2.0)), "implicit_accuracy": 0.0, "reward_margin": 0.0}
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and all(p.requires_grad == ("lora_" in n) for n, p in policy.named_parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    for _ in range(6):
        noise, sigma = torch.randn(winner.shape, generator=g), torch.rand(2, generator=g)
        loss, _ = preference_loss(policy, reference, winner, loser, conditioning, noise, sigma, config, detail)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out()
    assert after["implicit_accuracy"] == 1.0 and after["reward_margin"] > 0.5 and after["loss"] < 0.5, after
    for key, value in policy.state_dict().items():  # the base stayed frozen
        if key in frozen:
            assert torch.equal(value, frozen[key]), key
    # The disabled-LoRA policy is the same reference as the frozen copy, without a second model in memory.
    with torch.no_grad():
        noise, sigma = draws[0]
        _, copied = preference_loss(policy, reference, winner, loser, conditioning, noise, sigma, config, detail)
        _, disabled = preference_loss(policy, None, winner, loser, conditioning, noise, sigma, config, detail)
    for key in copied:
        assert disabled[key].item() == pytest.approx(copied[key].item(), rel=1e-5, abs=1e-6), key
    assert all(p.requires_grad == ("lora_" in n) for n, p in policy.named_parameters())


def test_lora_disabled_needs_a_lora_policy():
    with pytest.raises(Scail2Error, match="has no peft LoRA layers"):
        with lora_disabled(tiny_model(seed=0)):
            pass


# ------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------


def test_config_defaults_follow_upstream_and_bad_values_are_refused():
    config = DPOConfig()
    assert (config.lora_rank, config.steps, config.lora_scale_alpha) == (128, 400, 128.0)
    assert DPOConfig.from_dict({"beta": 2500, "face_weight": 1.0}).beta == 2500
    for values, message in (
        ({"beta": 0}, "dpo.beta must be a positive number"),
        ({"beta": float("nan")}, "dpo.beta must be a positive number"),
        ({"limb_weight": -1}, "must be >= 0"),
        ({"lora_rank": 0}, "dpo.lora_rank must be a positive integer"),
        ({"steps": 2.5}, "dpo.steps must be a positive integer"),
        ({"learning_rate": -1e-5}, "dpo.learning_rate must be a positive number"),
        ({"lora_alpha": 0}, "dpo.lora_alpha must be positive"),
        ({"betta": 1}, "unknown config key(s) dpo.betta; known: beta,"),
    ):
        with pytest.raises(Scail2Error, match=__import__("re").escape(message)):
            DPOConfig.from_dict(values)
