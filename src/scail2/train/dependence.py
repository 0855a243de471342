"""How much a model reads its driving stream: the rise of the flow loss on character cells when the driving
latents, or the driving masks, are zeroed.

A model that animates from the driver must predict the character worse without it; one that paints the
reference wherever the coarse masks say barely notices the latents going. Every sample is scored at the same
noise levels with the same noise (drawn from `seed` and the sample's position), with no history frames and no
augmentation, so two checkpoints or two variants are compared on identical inputs. The loss is the masked
flow-matching error weighted by the target's character coverage per latent cell (`target_masks` of the
cache), summed over samples and noise levels; a rise is (variant - intact) / intact.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from scail2.conditioning import history_mask
from scail2.data.latent_cache import CachedSample
from scail2.diffusion import flow_matching
from scail2.errors import Scail2Error

# Mid noise levels: at sigma near 0 the answer is in the input, near 1 the driver is all there is to go on.
DEPENDENCE_SIGMAS = (0.3, 0.5, 0.7, 0.9)
VARIANTS = ("driving_latents", "driving_masks")


def dependence_inputs(sample: CachedSample, sigma: float, generator: torch.Generator, text_dim: int) -> dict:
    """One sample's model inputs at noise level `sigma` (no history), its velocity target and its loss mask."""
    t = sample.tensors
    if "target_masks" not in t:
        raise Scail2Error(
            f"sample {sample.key}: the cache has no target_masks; rebuild it with `scail2 cache` (format version 2)"
        )
    x0 = t["target_latents"].float()
    frames, height, width = x0.shape[1:]
    noise = torch.randn(x0.shape, generator=generator)
    text = t["text_embeds"].float() if "text_embeds" in t else torch.zeros(1, text_dim)
    ref_masks = t["ref_masks"].float()
    ref_masks = torch.cat([ref_masks, torch.zeros(ref_masks.shape[0], frames, height, width)], 1)
    inputs = dict(
        hidden_states=flow_matching.add_noise(x0, noise, torch.tensor(sigma)),
        timestep=flow_matching.sigma_to_timestep(torch.tensor(sigma)),
        encoder_hidden_states=text,
        ref_latents=t["ref_latents"].float(),
        ref_masks=ref_masks,
        pose_latents=t["pose_latents"].float(),
        driving_masks=t["driving_masks"].float(),
        history_mask=history_mask(frames, 0, height, width),
        replace=torch.tensor(sample.replace),
    )
    if "image_embeds" in t:
        inputs["image_embeds"] = t["image_embeds"].float()
    return {"inputs": inputs, "target": flow_matching.velocity_target(x0, noise), "mask": t["target_masks"].float()}


# each variant: the model input it zeroes
ZEROED_INPUTS = {"driving_latents": "pose_latents", "driving_masks": "driving_masks"}


@torch.no_grad()
def driver_dependence(
    model,
    samples: list[CachedSample],
    sigmas: tuple[float, ...] = DEPENDENCE_SIGMAS,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    make_case=dependence_inputs,
    zeroed_inputs: dict[str, str] = ZEROED_INPUTS,
) -> dict[str, float]:
    """{"character_loss": intact, "character_loss_zero_<variant>": ..., "rise_<variant>": relative rise} for
    each variant of `zeroed_inputs` (VARIANTS by default), over `samples` at `sigmas` (one forward per sample
    and level, the variants batched).

    `make_case(sample, sigma, generator, text_dim)` builds the inputs, target and mask (models with other
    inputs pass their own), and `zeroed_inputs` names the input each variant zeroes."""
    if not samples:
        raise Scail2Error("the driver-dependence check needs at least one sample")
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    totals = dict.fromkeys((None, *zeroed_inputs), 0.0)
    for index, sample in enumerate(samples):
        for level, sigma in enumerate(sigmas):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index * 101 + level)
            case = make_case(sample, sigma, generator, model.config.text_dim)
            clean = case["inputs"]
            variants = [clean] + [{**clean, name: torch.zeros_like(clean[name])} for name in zeroed_inputs.values()]
            inputs = {k: torch.stack([v[k] for v in variants]).to(device) for k in case["inputs"]}
            with autocast:
                prediction = model(**inputs).sample  # [V, C, T, h, w]: intact first, then each variant
            loss = flow_matching.masked_velocity_loss(
                prediction.float(), case["target"][None].to(device), case["mask"][None].to(device)
            )
            for variant, value in zip(totals, loss.tolist()):
                totals[variant] += value
    intact = totals[None]
    result = {"character_loss": intact / (len(samples) * len(sigmas))}
    for variant in zeroed_inputs:
        result[f"character_loss_zero_{variant}"] = totals[variant] / (len(samples) * len(sigmas))
        result[f"rise_{variant}"] = (totals[variant] - intact) / intact if intact > 0 else float("nan")
    return result
