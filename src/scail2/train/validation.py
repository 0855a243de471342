"""Periodic validation videos: the model generates the first cached sample; target | generated, side by side.

The model's conditions come from the trainer: a trainer with its own inputs (Same2X's cue model) defines
`validation_velocity(reference, tensors, text, sample)`, the sampler's velocity function over the sample's
cached tensors (batch 1); other trainers run SCAIL-2's (`segment_velocity`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from scail2.conditioning import EncodedReference, SegmentConditions, VideoLatentCodec, model_video_to_frames
from scail2.diffusion import samplers
from scail2.pipelines.pipeline_scail2 import SamplingSettings, transformer_velocity

VALIDATION_FPS = 16


def components_folder(config) -> Path | None:
    """The model folder whose vae/ (and encoders) validation and export use."""
    for candidate in (config.model.components, config.model.pretrained):
        if candidate and (Path(candidate) / "vae").is_dir():
            return Path(candidate)
    return None


def segment_velocity(trainer, reference: EncodedReference, tensors: dict, text: torch.Tensor, sample):
    """SCAIL-2's velocity over the sample's driving stream."""
    conditions = SegmentConditions(pose_latents=tensors["pose_latents"], driving_masks=tensors["driving_masks"])
    return transformer_velocity(
        trainer.model,
        trainer.group.device,
        reference,
        conditions,
        text,
        replace=sample.replace,
        autocast_dtype=trainer.autocast,
    )


@torch.no_grad()
def write_validation_video(trainer, sample_index: int = 0) -> Path | None:
    """Every process runs the sampler (FSDP shards the weights); the main process decodes and writes the MP4."""
    from diffusers import AutoencoderKLWan

    from scail2.preprocess.video_io import write_mp4

    folder = components_folder(trainer.config)
    if folder is None:
        return None
    sample = trainer.cache[sample_index]
    t = {k: v.float()[None] for k, v in sample.tensors.items()}
    reference = EncodedReference(latent=t["ref_latents"], mask=t["ref_masks"], image_embeds=t.get("image_embeds"))
    text = t.get("text_embeds", torch.zeros(1, 1, trainer.model.config.text_dim))
    noise = torch.randn(t["target_latents"].shape, generator=torch.Generator().manual_seed(trainer.config.train.seed))
    settings = SamplingSettings(
        sampler="euler", steps=trainer.config.train.validation_steps, shift=3.0, guidance_scale=1.0
    )
    own = getattr(trainer, "validation_velocity", None)
    velocity = (own or partial(segment_velocity, trainer))(reference, t, text, sample)
    sampler = samplers.FlowSampler(settings.sampler, settings.steps, settings.shift)
    trainer.model.eval()
    latent = samplers.sample(velocity, noise.to(trainer.group.device), sampler)
    trainer.model.train()
    if not trainer.group.is_main:
        return None
    codec = VideoLatentCodec(AutoencoderKLWan.from_pretrained(folder / "vae").eval())
    pair = torch.cat([codec.decode(t["target_latents"])[0], codec.decode(latent.cpu())[0]], dim=-1)  # [3, T, H, 2W]
    frames = model_video_to_frames(pair)
    path = trainer.out / "validation" / f"step-{trainer.step:08d}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(path, frames, VALIDATION_FPS)
