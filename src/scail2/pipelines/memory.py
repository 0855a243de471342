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

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from scail2.errors import Scail2Error

OFFLOAD_MODES = ("none", "model", "group", "sequential")
CFG_MODES = ("batched", "sequential", "auto")

# One pass of the transformer holds about this many fp32 copies of its [tokens, dim] residual stream at its peak
# (the residual, the normed and modulated input, q, k, v, their rotated copies, the attention output); the FFN's
# wider hidden state is bf16 and fits in the same budget. A deliberately rough, slightly generous figure.
ACTIVATION_COPIES_PER_PASS = 8


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


def transformer_tokens(
    patch_size: tuple[int, int, int], frames: int, height: int, width: int, extra_refs: int = 0
) -> int:
    """Tokens per sample of one forward on a [z, frames, height, width] latent: the extra views, the reference
    and the video at full latent size, the driving stream at half size (docs/architecture.md, Token layout)."""
    p_t, p_h, p_w = patch_size
    full = (height // p_h) * (width // p_w)
    half = (height // 2 // p_h) * (width // 2 // p_w)
    return (extra_refs + 1 + frames // p_t) * full + frames // p_t * half


def pass_activation_bytes(tokens: int, dim: int) -> int:
    """The activation peak of one transformer pass, by the rule of `ACTIVATION_COPIES_PER_PASS`."""
    return ACTIVATION_COPIES_PER_PASS * tokens * dim * 4


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


# ---------------------------------------------------------------------------------------------------------
# Measuring tensor bytes without an accelerator
# ---------------------------------------------------------------------------------------------------------


class TensorBytesTracker(TorchDispatchMode):
    """Live and peak bytes of the tensors that operations create inside the block, per device type.

    Counts storages (views share their base's bytes) from the moment an operation returns them until the last
    tensor created on them is freed. Tensors that exist before the block (weights) are not counted. This is what
    the CPU can measure in place of `torch.cuda.max_memory_allocated`.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._owners: dict[tuple[str, int], list[int]] = {}  # storage -> [tensors holding it, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor)
        return output

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        kind, key = tensor.device.type, (tensor.device.type, storage.data_ptr())
        if storage.nbytes() == 0:
            return
        if key not in self._owners:
            self._owners[key] = [0, storage.nbytes()]
            self.live[kind] = self.live.get(kind, 0) + storage.nbytes()
            self.peak[kind] = max(self.peak.get(kind, 0), self.live[kind])
        self._owners[key][0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: tuple[str, int]) -> None:
        owner = self._owners[key]
        owner[0] -= 1
        if owner[0] == 0:
            self.live[key[0]] -= owner[1]
            del self._owners[key]
