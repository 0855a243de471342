"""Where a generation keeps its weights and activations: offload modes, the guidance batch, VAE tiling.

`MemorySettings` is the data (`scail2 animate --offload/--cfg-mode/--vae-tiling/--encoders-on-cpu`);
`SCAIL2Pipeline.enable_memory_settings` applies it. The helpers below run without a GPU, so they are tested on a CPU:

    offload      none        every component on the accelerator, except the encoders between jobs
                 model       diffusers' `enable_model_cpu_offload`: one whole component on the accelerator at a time
                 group       diffusers' block-level group offloading of the transformer, one block at a time, the
                             next block prefetched on a CUDA stream; the VAE stays on the accelerator
                 sequential  accelerate's per-layer offload, as diffusers' `enable_sequential_cpu_offload`: one
                             layer at a time (slowest, smallest)
    cfg_mode     batched     the unconditional and conditional passes as one batch of two
                 sequential  one pass after the other: half the activations, the same result
                 auto        batched unless the accelerator is short of memory (see `choose_cfg_mode`)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from scail2.conditioning.geometry import SPATIAL_STRIDE, TEMPORAL_STRIDE
from scail2.errors import Scail2Error
from scail2.pipelines.memory_activations import transformer_forward_bytes, transformer_tokens

OFFLOAD_MODES = ("none", "model", "group", "sequential")
CFG_MODES = ("batched", "sequential", "auto")


@dataclass(frozen=True)
class MemorySettings:
    """How one pipeline spends accelerator memory; every option keeps the output (tiling within its tolerance)."""

    offload: str = "none"  # none | model | group | sequential (see the module note)
    cfg_mode: str = "auto"  # batched | sequential | auto: how the two guidance passes run
    vae_tiling: bool = False  # decode in overlapping spatial tiles (diffusers' AutoencoderKLWan tiling)
    encoders_on_cpu: bool = False  # run umT5 and CLIP on the CPU; they never touch the accelerator
    vae_tile_size: int = 256  # tile edge in pixels (diffusers' default)
    vae_tile_stride: int = 192  # distance between tiles in pixels; the rest is blended

    def __post_init__(self):
        if self.offload not in OFFLOAD_MODES:
            raise Scail2Error(f"--offload {self.offload!r} is not one of {', '.join(OFFLOAD_MODES)}")
        if self.cfg_mode not in CFG_MODES:
            raise Scail2Error(f"--cfg-mode {self.cfg_mode!r} is not one of {', '.join(CFG_MODES)}")
        size, stride = self.vae_tile_size, self.vae_tile_stride
        if size % 16 or stride % 16 or not 0 < stride <= size:
            raise Scail2Error(
                f"VAE tiles of {size} px every {stride} px: both must be multiples of 16 with 0 < stride <= size"
            )


# ---------------------------------------------------------------------------------------------------------
# Guidance: batched or sequential
# ---------------------------------------------------------------------------------------------------------


def pass_activation_bytes(config: dict, latent_shape: tuple[int, int, int], extra_refs: int, precision: str) -> int:
    """The activation peak of one transformer pass over a latent [z, T_lat, h, w] (`latent_shape` = (T_lat, h,
    w)), by the memory plan's model of a forward (`scail2.pipelines.memory_activations`)."""
    frames, height, width = latent_shape
    pixels = ((frames - 1) * TEMPORAL_STRIDE + 1, height * SPATIAL_STRIDE, width * SPATIAL_STRIDE)
    tokens = transformer_tokens(config, *pixels, extra_refs)
    return transformer_forward_bytes(config, tokens, 1, precision)


def available_accelerator_bytes(device: torch.device) -> int | None:
    """What the accelerator can still give this process: the driver's free memory plus what torch's caching
    allocator holds unused. None where it cannot be measured (CPU)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def choose_cfg_mode(mode: str, passes: int, available: int | None, per_pass: int) -> str:
    """`auto` is batched unless memory is short: "short" means the accelerator's available bytes, measured before
    a segment's first step, are fewer than `passes` times one pass's activation peak. Unmeasurable memory (CPU)
    is never short. One pass needs no choice."""
    if mode != "auto":
        return mode
    if passes < 2 or available is None or available >= passes * per_pass:
        return "batched"
    return "sequential"


# ---------------------------------------------------------------------------------------------------------
# VAE tiling
# ---------------------------------------------------------------------------------------------------------


@contextmanager
def tiled_decoding(vae, settings: MemorySettings):
    """Inside the block the VAE decodes in diffusers' overlapping spatial tiles when `settings.vae_tiling`; encodes
    stay whole (they run outside the block), so the conditioning the transformer sees is exact."""
    if not settings.vae_tiling:
        yield
        return
    was_tiling = vae.use_tiling
    size, stride = settings.vae_tile_size, settings.vae_tile_stride
    vae.enable_tiling(size, size, stride, stride)
    try:
        yield
    finally:
        vae.use_tiling = was_tiling


# ---------------------------------------------------------------------------------------------------------
# Offload hooks
# ---------------------------------------------------------------------------------------------------------


def has_accelerate_hooks(module: torch.nn.Module) -> bool:
    """True when accelerate's model or sequential offload hooks place this module."""
    return hasattr(module, "_hf_hook")


def detach_accelerate_hooks(module: torch.nn.Module) -> None:
    """Remove accelerate's offload hooks; sequential offload's weights come back from their CPU copies."""
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(module, recurse=True)
    module.to("cpu")
