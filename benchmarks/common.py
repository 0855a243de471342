"""Shared pieces of the benchmark scripts: random-weight models on any device, inputs, timing."""

from __future__ import annotations

import time

import torch

from scail2.models.state_dict_io import kept_in_fp32
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel


def random_transformer(
    preset: str, device: torch.device, storage_dtype: torch.dtype = torch.float32, **overrides
) -> SCAIL2Transformer3DModel:
    """A preset built on the meta device, materialised on `device` with random weights, stored in
    `storage_dtype` except the model's declared fp32 modules."""
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_preset(preset, **overrides)
    return materialise(model, device, storage_dtype, model._keep_in_fp32_modules)


def materialise(model: torch.nn.Module, device: torch.device, storage_dtype: torch.dtype, keep_fp32=()):
    """Allocate a model whose parameters are on the meta device straight in their storage dtype on `device`
    (a 14B model never passes through fp32) and fill it: linear and conv weights N(0, 0.02), biases 0, norm
    scales 1. Parameters named by a whole name part in `keep_fp32` stay fp32, as diffusers' loader keeps them;
    buffers built on a real device (RoPE tables) keep their values."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if not b.is_meta}
    for name, param in model.named_parameters():
        if not kept_in_fp32(name, keep_fp32):
            param.data = param.data.to(storage_dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1 and "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0, 0.02)
        for name, buffer in model.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])
    return model


def build_inputs(model, batch, frames, height, width, device, text_tokens):
    """Random forward inputs for pixel size height x width x frames; returns (inputs, tokens per sample)."""
    cfg, c = model.config, model.latent_channels
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    s = model.driving_scale  # the driving stream's resolution divisor (2: half)
    inputs = dict(
        hidden_states=torch.randn(batch, c, t, h, w, device=device),
        timestep=torch.full((batch,), 500.0, device=device),
        encoder_hidden_states=torch.randn(batch, text_tokens, cfg.text_dim, device=device),
        ref_latents=torch.randn(batch, c, 1, h, w, device=device),
        ref_masks=torch.rand(batch, cfg.mask_dim, 1 + t, h, w, device=device),
        pose_latents=torch.randn(batch, c, t, h // s, w // s, device=device),
        driving_masks=torch.rand(batch, cfg.mask_dim, t, h // s, w // s, device=device),
    )
    if cfg.model_type == "i2v":
        inputs["image_embeds"] = torch.randn(batch, 257, cfg.image_dim, device=device)
    tokens = (1 + t) * (h // 2) * (w // 2) + t * (h // s // 2) * (w // s // 2)
    return inputs, tokens


def timed(fn, device: torch.device):
    """(fn(), seconds), synchronising the GPU around the call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start
