"""Bias-Aware DPO on flow-matching errors: a Diffusion-DPO objective against a frozen reference.

See docs/architecture.md, "DPO".

For a preference pair (winner w, loser l) under the same conditioning c, both are noised with the SAME noise
eps and sigma, and each model's per-sample velocity error is measured:

    e(x) = weighted mean over (C, T, H, W) of (v_hat(x_sigma, sigma, c) - (eps - x))^2

    logits = -(beta / 2) * [(e_w - e_w_ref) - (e_l - e_l_ref)]      loss = mean over pairs of -log sigmoid(logits)

This is Diffusion-DPO (Wallace et al. 2023) with the epsilon error replaced by the rectified-flow velocity
error: under a Gaussian transition with unit variance the log-likelihood is -1/2 * squared error, hence the
factor 1/2, kept so that beta means what it means in the Diffusion-DPO paper (and in Flow-DPO ports). beta is
constant over sigma (no per-timestep weighting); the errors are means, not sums, so beta does not depend on
the video size. Upstream's loss is not public; the reasons for every choice are in docs/dpo.md.

Why one noise and one sigma for both videos: the error of a denoiser varies by orders of magnitude with
sigma and noticeably with the noise draw, while the winner/loser difference is small. Sharing (eps, sigma)
makes e_w - e_l measure only the videos' difference (a control variate), which is what the objective
compares; subtracting the reference's gap then removes how hard this (eps, sigma) is for the pair. It also
makes the loss indifferent to a pair whose winner equals its loser (zero gradient, up to rounding).

The trainer calls `preference_loss` once per step with the transformer's keyword arguments; the reference is
either a frozen copy or, with `reference=None`, the LoRA policy itself with its adapters disabled (no second
copy of the backbone in memory).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scail2.diffusion.flow_matching import add_noise, sigma_to_timestep, velocity_target
from scail2.errors import Scail2Error
from scail2.optional import require

LIMB_CHANNEL, FACE_CHANNEL = 0, 1  # channels of the cache's detail_masks [B, 2, T, h, w]


# ------------------------------------------------------------------------------------------------------------
# 1. Config
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPOConfig:
    """Settings of the DPO stage (`dpo:` section of a training config). Upstream publishes only rank and steps."""

    beta: float = 5000.0  # KL strength; Diffusion-DPO's value for SD1.5; higher keeps the policy nearer the reference
    limb_weight: float = 0.5  # extra error weight on limb-end latent cells (upstream RFLossAmp uses 0.5 for hands)
    face_weight: float = 0.5  # extra error weight on face/head cells (RFLossAmp: 0.5 for faces)
    lora_rank: int = 128  # upstream: rank-128 LoRA on the frozen backbone
    lora_alpha: float | None = None  # LoRA scale alpha / rank; None -> alpha = rank (scale 1)
    steps: int = 400  # upstream: 400 DPO steps after pre-training
    learning_rate: float = 1e-5  # AdamW learning rate of the LoRA weights (upstream silent; pre-training used 1e-5)

    def __post_init__(self):
        checks = (
            (math.isfinite(self.beta) and self.beta > 0, f"dpo.beta must be a positive number, got {self.beta}"),
            (
                self.limb_weight >= 0 and self.face_weight >= 0,
                f"dpo.limb_weight and dpo.face_weight must be >= 0, got {self.limb_weight} and {self.face_weight}",
            ),
            (
                isinstance(self.lora_rank, int) and self.lora_rank >= 1,
                f"dpo.lora_rank must be a positive integer, got {self.lora_rank!r}",
            ),
            (self.lora_alpha is None or self.lora_alpha > 0, f"dpo.lora_alpha must be positive, got {self.lora_alpha}"),
            (
                isinstance(self.steps, int) and self.steps >= 1,
                f"dpo.steps must be a positive integer, got {self.steps!r}",
            ),
            (
                math.isfinite(self.learning_rate) and self.learning_rate > 0,
                f"dpo.learning_rate must be a positive number, got {self.learning_rate}",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise Scail2Error(message)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DPOConfig:
        """From the `dpo:` mapping of a training config; unknown keys are errors."""
        values = dict(values or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise Scail2Error(
                f"unknown config key(s) {', '.join('dpo.' + k for k in unknown)}; known: {', '.join(known)}"
            )
        return cls(**values)

    @property
    def lora_scale_alpha(self) -> float:
        return float(self.lora_rank if self.lora_alpha is None else self.lora_alpha)


# ------------------------------------------------------------------------------------------------------------
# 2. Errors and the objective
# ------------------------------------------------------------------------------------------------------------


def region_weights_from_detail(detail_masks: torch.Tensor, limb_weight: float, face_weight: float) -> torch.Tensor:
    """Per-cell weights [B, 1, T, h, w] = 1 + limb_weight * limb + face_weight * face.

    `detail_masks` [B, 2, T, h, w] is the cache's coverage of limb ends (channel 0) and face/head (channel 1).
    """
    if detail_masks.ndim != 5 or detail_masks.shape[1] != 2:
        raise ValueError(f"detail_masks must be [B, 2, T, h, w] (limb ends, face), got {tuple(detail_masks.shape)}")
    masks = detail_masks.float()
    limbs, faces = masks[:, LIMB_CHANNEL : LIMB_CHANNEL + 1], masks[:, FACE_CHANNEL : FACE_CHANNEL + 1]
    return 1.0 + limb_weight * limbs + face_weight * faces


def flow_matching_errors(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    region_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample weighted mean squared error [B] between predicted and target velocities [B, C, T, H, W].

    `loss_mask` (e.g. [B, 1, T, 1, 1], 0 on clean history frames) and `region_weights` ([B, 1, T, H, W]) broadcast
    against the prediction; the result is sum(w * err^2) / sum(w) with w = mask * weights over every element, so
    it is the plain mean without mask and weights, and weighting moves emphasis without changing the error's
    scale (beta keeps its meaning whatever the share of detail pixels). A sample with no kept element gives 0.
    """
    if prediction.shape != target.shape or prediction.ndim != 5:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must be the same "
            "[B, C, T, H, W] shape"
        )
    squared = (prediction.float() - target.float()).square()
    weight = torch.ones((), dtype=squared.dtype, device=squared.device)
    for extra in (loss_mask, region_weights):
        if extra is not None:
            weight = weight * extra.to(squared.dtype)
    weight = torch.broadcast_to(weight, squared.shape)  # a view: no copy of the weights per channel
    dims = tuple(range(1, squared.ndim))
    total = (weight * squared).sum(dim=dims)
    return total / weight.sum(dim=dims).clamp_min(torch.finfo(squared.dtype).tiny)


def diffusion_dpo_loss(
    policy_winner: torch.Tensor,
    policy_loser: torch.Tensor,
    reference_winner: torch.Tensor,
    reference_loser: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Diffusion-DPO on per-sample errors [B]: mean of -log sigmoid(-(beta/2) * ((e_w - e_w_ref) - (e_l - e_l_ref))).

    The reference errors carry no gradient. Metrics (detached scalars): `implicit_accuracy` (share of pairs whose
    implicit reward prefers the winner, ties count as wrong), `reward_margin` (mean logit), the winner's and
    loser's implicit rewards -(beta/2)(e - e_ref), and the four mean errors.
    """
    reference_winner, reference_loser = reference_winner.detach(), reference_loser.detach()
    scale = 0.5 * beta
    winner_reward = -scale * (policy_winner - reference_winner)
    loser_reward = -scale * (policy_loser - reference_loser)
    logits = winner_reward - loser_reward
    loss = -F.logsigmoid(logits).mean()
    metrics = {
        "loss": loss.detach(),
        "implicit_accuracy": (logits > 0).float().mean().detach(),
        "reward_margin": logits.mean().detach(),
        "winner_reward": winner_reward.mean().detach(),
        "loser_reward": loser_reward.mean().detach(),
        "policy_winner_error": policy_winner.mean().detach(),
        "policy_loser_error": policy_loser.mean().detach(),
        "reference_winner_error": reference_winner.mean(),
        "reference_loser_error": reference_loser.mean(),
    }
    return loss, metrics


# ------------------------------------------------------------------------------------------------------------
# 3. One DPO step's loss through the transformer
# ------------------------------------------------------------------------------------------------------------


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """The model with its peft LoRA layers bypassed (the frozen base = the DPO reference), restored afterwards."""
    BaseTunerLayer = require("peft.tuners.tuners_utils", purpose="DPO with LoRA").BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise Scail2Error(
            "reference=None means 'the policy with its LoRA disabled', but the policy has no peft "
            "LoRA layers; add LoRA to the policy (dpo trains LoRA on a frozen base) or pass a frozen "
            "reference model"
        )
    # peft toggles requires_grad when it disables/enables adapters; put every flag back exactly as it was.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_disabled = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _history_frames(conditioning: dict[str, Any], like: torch.Tensor) -> torch.Tensor | None:
    """[B, 1, T, 1, 1] True on clean history frames, from the transformer's history_mask [B, 4, T, H, W]."""
    mask = conditioning.get("history_mask")
    if mask is None:
        return None
    return (mask[:, :1, :, :1, :1] > 0.5).to(like.device)


def _velocity(model: nn.Module, noisy: torch.Tensor, sigma: torch.Tensor, conditioning: dict[str, Any]) -> torch.Tensor:
    """The model's predicted velocity [B, C, T, H, W] for one noisy batch."""
    return model(noisy, sigma_to_timestep(sigma).to(noisy.device), **conditioning).sample


def preference_loss(
    policy: nn.Module,
    reference: nn.Module | None,
    winner: torch.Tensor,
    loser: torch.Tensor,
    conditioning: dict[str, Any],
    noise: torch.Tensor,
    sigma: torch.Tensor,
    config: DPOConfig,
    detail_masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss of a batch of preference pairs through the transformer.

    winner, loser, noise: [B, C, T, H, W] clean latents (target_latents, loser_latents) and ONE noise for both;
    sigma: [B]; conditioning: the transformer's keyword arguments for B samples (encoder_hidden_states,
    ref_latents, ref_masks, pose_latents, driving_masks, image_embeds, replace, history_mask, ...);
    detail_masks: the cache's [B, 2, T, H, W] for region weights; reference: a frozen model, or None for
    the policy with its LoRA disabled. History frames (ones in history_mask) are the WINNER's clean latents in
    both inputs, so the two videos share every condition, and are left out of the errors. Call it inside the
    trainer's autocast; the errors are computed in fp32. Returns (loss, metrics of diffusion_dpo_loss).
    """
    if not winner.shape == loser.shape == noise.shape:
        raise ValueError(
            f"winner {tuple(winner.shape)}, loser {tuple(loser.shape)} and noise {tuple(noise.shape)} "
            "must have the same shape"
        )
    history = _history_frames(conditioning, winner)
    noisy = [add_noise(winner, noise, sigma), add_noise(loser, noise, sigma)]
    targets = [velocity_target(winner, noise), velocity_target(loser, noise)]
    loss_mask = None
    if history is not None:
        noisy = [torch.where(history, winner.to(x.dtype), x) for x in noisy]
        loss_mask = (~history).float()
    weights = None
    if detail_masks is not None:
        weights = region_weights_from_detail(detail_masks, config.limb_weight, config.face_weight)
    # Winners and losers take separate passes rather than one doubled batch (same FLOPs): a parameter's gradient
    # is then a winner-pass sum plus a loser-pass sum from the same kernels in the same order, which cancel
    # exactly when winner == loser. (Only patch_embedding_mask, applied twice per pass, keeps ~1e-7 relative
    # rounding from the interleaved accumulation; a doubled batch leaves that on every parameter.)
    with torch.no_grad():
        if reference is None:
            with lora_disabled(policy):
                reference_velocity = [_velocity(policy, x, sigma, conditioning) for x in noisy]
        else:
            reference_velocity = [_velocity(reference, x, sigma, conditioning) for x in noisy]
    policy_velocity = [_velocity(policy, x, sigma, conditioning) for x in noisy]
    policy_errors = [flow_matching_errors(v, t, loss_mask, weights) for v, t in zip(policy_velocity, targets)]
    reference_errors = [flow_matching_errors(v, t, loss_mask, weights) for v, t in zip(reference_velocity, targets)]
    return diffusion_dpo_loss(*policy_errors, *reference_errors, beta=config.beta)


def dpo_lora_config(config: DPOConfig, target_modules: list[str] | None = None):
    """A peft LoraConfig for the DPO stage: rank `config.lora_rank` on the blocks' attention and FFN linears."""
    LoraConfig = require("peft", purpose="DPO with LoRA").LoraConfig

    targets = target_modules or ["q", "k", "v", "o", "ffn.0", "ffn.2"]
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_scale_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        init_lora_weights=True,
    )
