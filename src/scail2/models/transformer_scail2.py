"""SCAIL-2 video diffusion transformer (Wan2.1-I2V lineage) with in-context driving conditioning.

The model denoises a video latent while attending, in one token sequence, to the reference frame(s) and to
the driving video encoded at half resolution (`driving_scale` 2, the official weights; 1 keeps it at the video's
resolution, for small models whose half-resolution driving grid is too coarse to show a pose):

    tokens = [extra reference frames | reference | video | driving stream]

A small model may instead add each driving token to the video token on its grid cell (`driving_injection` "add",
with `driving_scale` 1), and read DirectAnimator's pose cue of the driving frames rather than the frames
themselves (`driving_signal` "pose_cue"): the sequence is then [extra refs | reference | video + driving].

Every architecture number is a config field; the official 14B model is the `14b` preset. Parameter names are
the Wan names of the released checkpoint after upstream conversion, so a Wan-style state dict loads as is.

Sections: 1. config and presets, 2. RoPE, 3. norms and embeddings, 4. attention, 5. block and head, 6. model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from scail2.conditioning.geometry import check_driving_injection, check_driving_scale
from scail2.conditioning.masks import HISTORY_MASK_CHANNELS, MASK_CHANNELS
from scail2.conditioning.streams import check_driving_signal
from scail2.models.attention import SCAIL2AttnProcessor

# ------------------------------------------------------------------------------------------------------------
# 1. Config and presets
# ------------------------------------------------------------------------------------------------------------

# Constructor keywords of the named architectures. Fields not given take the constructor defaults (= 14b).
SCAIL2_PRESETS: dict[str, dict] = {
    # The released SCAIL-2 model: 16,395,544,384 parameters.
    "14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Upstream's config-1.3b.json (no weights were released for it).
    "1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    # The bundled demo model (7.8 M parameters, trained on 2 CPU cores at 128x128): no image encoder and one
    # text token, since the padded 512 text and 257 CLIP tokens would cost more than its 464 video tokens.
    "demo": dict(
        model_type="t2v", dim=256, ffn_dim=704, num_heads=4, num_layers=8, freq_dim=64, text_dim=16, text_len=1
    ),
    # For tests: unequal sizes everywhere so a swapped axis fails. head_dim 16 -> RoPE pairs t/h/w = 4/2/2.
    "tiny": dict(dim=32, ffn_dim=56, num_heads=2, num_layers=2, freq_dim=18, text_dim=20, text_len=7, image_dim=24),
}


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per head given to the time, height and width axes (22/21/21 for head_dim 128)."""
    hw_pairs = head_dim // 6
    return head_dim // 2 - 2 * hw_pairs, hw_pairs, hw_pairs


# ------------------------------------------------------------------------------------------------------------
# 2. RoPE: 3-axis rotary positions with SCAIL-2's mode-specific shifts
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeShift:
    """Position offset (time, height, width) of one token segment on the video patch grid."""

    t: int = 0
    h: int = 0
    w: int = 0


def scail2_rope_shifts(num_extra_refs: int, replace: bool, offset: int) -> dict[str, RopeShift]:
    """The RoPE shift table for each segment: extra refs, reference, video, driving stream.

    See docs/architecture.md, "RoPE shifts".

    Animation separates the reference in time (video starts one frame after it); replacement separates it in
    height by `offset`. The driving stream is always shifted by `offset` in width.
    """
    k = num_extra_refs
    ref_h = offset if replace else 0
    video_t = k if replace else k + 1
    return {
        "extra_refs": RopeShift(0, ref_h, 0),
        "reference": RopeShift(k, ref_h, 0),
        "video": RopeShift(video_t, 0, 0),
        "driving": RopeShift(video_t, 0, offset),
    }


def grid_positions(frames: int, height: int, width: int, shift: RopeShift) -> torch.Tensor:
    """Integer positions [frames*height*width, 3] of a (t, h, w) row-major token grid plus its shift."""
    t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    positions = torch.stack([t + shift.t, h + shift.h, w + shift.w], dim=-1)
    return positions.reshape(-1, 3)


def axis_rotations(positions: torch.Tensor, pairs: int, theta: float) -> torch.Tensor:
    """Unit complex rotations [N, pairs] (complex128) of one axis for integer positions [N]; the frequency
    ladder is theta^(-2j / axis_dim) with axis_dim = 2 * pairs."""
    axis_dim = 2 * pairs
    inverse_freq = 1.0 / torch.pow(theta, torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
    angles = torch.outer(positions.to(torch.float64), inverse_freq)
    return torch.polar(torch.ones_like(angles), angles)


def rope_rotations(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Unit complex rotations [N, head_dim/2] (complex128) for positions [N, 3]: time pairs, then h, then w."""
    pairs = rope_axis_pairs(head_dim)
    return torch.cat([axis_rotations(positions[:, axis], pairs[axis], theta) for axis in range(3)], dim=1)


def driving_rope_rotations(
    frames: int, height: int, width: int, shift: RopeShift, head_dim: int, theta: float, scale: int = 2
) -> torch.Tensor:
    """Rotations [frames*(height/scale)*(width/scale), head_dim/2] of the driving stream.

    Built on the full video grid. For the half-resolution stream (scale 2) it is then 2x2-averaged over (h, w)
    on the real and imaginary parts separately, as upstream does: the averaged rotations have magnitude below 1,
    and the trained model expects exactly that. At scale 1 a driving token sits on its video token's position,
    so it takes that rotation, shifted, unpooled.
    """
    full = rope_rotations(grid_positions(frames, height, width, shift), head_dim, theta)
    if check_driving_scale(scale) == 1:
        return full
    full = full.reshape(frames, height, width, -1).permute(0, 3, 1, 2)  # [T, D/2, h, w]
    real = F.avg_pool2d(full.real, kernel_size=2, stride=2)
    imag = F.avg_pool2d(full.imag, kernel_size=2, stride=2)
    pooled = torch.complex(real, imag).permute(0, 2, 3, 1)  # [T, h/2, w/2, D/2]
    return pooled.reshape(-1, pooled.shape[-1])


def scail2_rope_table(
    frames: int,
    height: int,
    width: int,
    num_extra_refs: int,
    replace: bool,
    head_dim: int,
    theta: float,
    offset: int,
    driving_scale: int = 2,
    driving_injection: str = "append",
) -> torch.Tensor:
    """Complex128 rotations [S, head_dim/2] for the whole sequence [extra refs | reference | video | driving]
    ([extra refs | reference | video] when the driving tokens are added to the video's).

    `height` and `width` are the video patch grid (latent H/2, W/2); the driving grid is 1/`driving_scale` of it.
    Added driving tokens (`driving_injection` "add") have no rows of their own: they take the video's.
    """
    shifts = scail2_rope_shifts(num_extra_refs, replace, offset)
    parts = [
        rope_rotations(grid_positions(num_extra_refs, height, width, shifts["extra_refs"]), head_dim, theta),
        rope_rotations(grid_positions(1, height, width, shifts["reference"]), head_dim, theta),
        rope_rotations(grid_positions(frames, height, width, shifts["video"]), head_dim, theta),
    ]
    if check_driving_injection(driving_injection, driving_scale) == "append":
        parts.append(driving_rope_rotations(frames, height, width, shifts["driving"], head_dim, theta, driving_scale))
    return torch.cat(parts, dim=0)


@dataclass(frozen=True)
class RopeAxisTables:
    """Per axis (time, height, width), fp32 (re, im) rotations [num_positions, pairs, 2] of the integer positions
    0 .. num_positions-1 (`single`), and of the means of two neighbours, (r(p) + r(p+1)) / 2 (`pooled`).

    A token's rotation depends on each of its three positions alone, and the driving stream's 2x2 average
    factorises the same way (the time pairs are constant inside a window; the height pairs average rows 2i and
    2i+1, the width pairs columns 2j and 2j+1). So any sequence's table is gathered from these rows on the
    device: the float64 trigonometry runs once per model and device, never per shape.
    """

    single: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    pooled: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    @property
    def num_positions(self) -> int:
        return self.single[0].shape[0]

    @classmethod
    def build(cls, head_dim: int, theta: float, num_positions: int, device: torch.device) -> RopeAxisTables:
        """Computed in float64 on the CPU, rounded once to fp32, then moved to `device`."""
        positions = torch.arange(num_positions + 1)
        single, pooled = [], []
        for pairs in rope_axis_pairs(head_dim):
            rotations = axis_rotations(positions, pairs, theta)  # [num_positions + 1, pairs] complex128
            single.append(torch.view_as_real(rotations[:-1]).float().to(device))
            pooled.append(torch.view_as_real((rotations[:-1] + rotations[1:]) / 2).float().to(device))
        return cls(tuple(single), tuple(pooled))


def rope_positions_needed(frames: int, height: int, width: int, num_extra_refs: int, offset: int) -> int:
    """Positions 0 .. N-1 that cover every axis of a sequence (the shifts add up to `offset` on h and w)."""
    return offset + max(num_extra_refs + 1 + frames, height, width) + 1


def _grid_rotations(
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], t: torch.Tensor, h: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Rotations [len(t)*len(h)*len(w), head_dim/2, 2] of a (t, h, w) row-major grid, given each axis'
    table rows (indices into `tables`)."""
    rows = [tables[0][t], tables[1][h], tables[2][w]]  # [n_axis, pairs_axis, 2] each
    grid = (len(t), len(h), len(w))
    parts = [
        rows[0][:, None, None].expand(*grid, -1, 2),
        rows[1][None, :, None].expand(*grid, -1, 2),
        rows[2][None, None, :].expand(*grid, -1, 2),
    ]
    return torch.cat(parts, dim=3).flatten(0, 2)  # [T, h, w, D/2, 2] -> [T*h*w, D/2, 2]


def scail2_rope_rotations(
    axis_tables: RopeAxisTables,
    frames: int,
    height: int,
    width: int,
    num_extra_refs: int,
    replace: bool,
    offset: int,
    driving_scale: int = 2,
    driving_injection: str = "append",
) -> torch.Tensor:
    """fp32 rotations [S, head_dim/2, 2] (re, im) of the whole sequence, gathered on the tables' device.

    Equal to `scail2_rope_table` rounded to fp32 (the driving means are taken in float64 in both).
    """
    device = axis_tables.single[0].device
    arange = lambda n: torch.arange(n, device=device)  # noqa: E731
    shifts = scail2_rope_shifts(num_extra_refs, replace, offset)
    streams = [("extra_refs", num_extra_refs), ("reference", 1), ("video", frames)]
    parts = [
        _grid_rotations(
            axis_tables.single,
            arange(n) + shifts[name].t,
            arange(height) + shifts[name].h,
            arange(width) + shifts[name].w,
        )
        for name, n in streams
    ]
    if check_driving_injection(driving_injection, driving_scale) == "add":
        return torch.cat(parts, dim=0)
    driving = shifts["driving"]
    scale = driving_scale
    spatial = axis_tables.pooled[1:] if scale == 2 else axis_tables.single[1:]  # scale 1: no 2x2 mean
    parts.append(
        _grid_rotations(
            (axis_tables.single[0], *spatial),
            arange(frames) + driving.t,
            scale * arange(height // scale) + driving.h,
            scale * arange(width // scale) + driving.w,
        )
    )
    return torch.cat(parts, dim=0)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of every head: x [B, S, heads, D], rotation [S, D/2, 2] (re, im)
    shared by the batch, or [B, S, D/2, 2] per sample.

    Computed in fp32 (upstream uses float64); the rotations are computed in float64 and rounded once.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, S, heads, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    rotation = rotation if rotation.ndim == 4 else rotation[None]  # [B or 1, S, D/2, 2]
    rot_real = rotation[:, :, None, :, 0]
    rot_imag = rotation[:, :, None, :, 1]
    rotated = torch.stack([real * rot_real - imag * rot_imag, real * rot_imag + imag * rot_real], dim=-1)
    return rotated.flatten(-2)  # [B, S, heads, D]


# ------------------------------------------------------------------------------------------------------------
# 3. Norms and embeddings
# ------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) computed in fp32, cast back to the input dtype, then scaled by the (fp32) weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def timestep_sinusoid(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] -> [B, dim] = [cos, sin] of t * 10000^(-k/(dim/2)); float64 on B values only, returned as fp32."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float64, device=timestep.device) / half
    angles = torch.outer(timestep.to(torch.float64), torch.pow(10000.0, -exponents))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class ImageEmbedding(nn.Module):
    """CLIP image tokens -> model width (Wan `MLPProj`): LayerNorm, Linear, GELU, Linear, LayerNorm."""

    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(image_dim),
            nn.Linear(image_dim, image_dim),
            nn.GELU(),
            nn.Linear(image_dim, dim),
            nn.LayerNorm(dim),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(image_embeds)


def compute_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype a layer's input must have for its matmul to use the stored weights without casting them.

    That is the weight dtype (of the first weighted layer, for a Sequential), unless the layer declares a
    `compute_dtype` (quantised layers) or diffusers' layerwise casting stores its weights in a narrower dtype
    and upcasts them to its compute dtype for the call; activations never take a storage-only dtype (fp8).
    """
    layer = next(m for m in layer.modules() if isinstance(getattr(m, "weight", None), torch.Tensor))
    declared = getattr(layer, "compute_dtype", None)
    if declared is not None:
        return declared
    hooks = getattr(layer, "_diffusers_hook", None)
    casting = None if hooks is None else hooks.get_hook("layerwise_casting")
    if casting is not None:
        return casting.compute_dtype
    dtype = layer.weight.dtype
    # weights in a storage-only dtype (fp8, integer codes) that declare nothing compute in bf16
    return dtype if dtype.is_floating_point and dtype.itemsize > 1 else torch.bfloat16


def feed(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) with x cast to the layer's compute dtype (an activation cast; the weights are used as stored)."""
    return layer(x.to(compute_dtype(layer)))


# ------------------------------------------------------------------------------------------------------------
# 4. Attention
# ------------------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module, AttentionModuleMixin):
    """Full attention over the whole token sequence with RMS-normalised q/k and 3-axis RoPE."""

    _supports_qkv_fusion = False

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.processor = SCAIL2AttnProcessor()  # the kernel (`model.set_attention_backend`)
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        # Set by `SCAIL2Transformer3DModel.enable_sequence_parallel`: x holds one rank's tokens, and keys, values
        # and queries cross the ranks after RoPE (scail2.parallel.ulysses). None: the whole sequence is here.
        self.sequence_parallel = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        k, v = self.exchange(*self.keys_values(x, rope))
        return self.attend(x, rope, k, v)  # [B, S, dim]

    def keys_values(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, rotated keys and the values [B, S, heads, head_dim] of `x`, in the values' dtype."""
        heads = (self.num_heads, -1)
        k = self.norm_k(self.k(x)).unflatten(-1, heads)
        v = self.v(x).unflatten(-1, heads)
        return apply_rope(k, rope).to(v.dtype), v

    def exchange(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values as attention takes them: as given, or under sequence parallelism every rank's tokens
        of this rank's heads."""
        return (k, v) if self.sequence_parallel is None else self.sequence_parallel.keys_values(k, v)

    def attend(self, x: torch.Tensor, rope: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The output [B, S', dim] of the queries of `x` (S' tokens, `rope` their rows) over given keys and values:
        `forward` for one chunk of query tokens."""
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)), rope).to(v.dtype)
        if self.sequence_parallel is not None:
            return self.o(self.sequence_parallel.attention(self.processor, q, k, v).flatten(2))
        return self.o(self.processor(q, k, v).flatten(2))


class CrossAttention(nn.Module, AttentionModuleMixin):
    """Attention from video tokens to the text tokens and, for i2v, separately to the CLIP image tokens."""

    _supports_qkv_fusion = False

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image_tokens: bool):
        super().__init__()
        self.processor = SCAIL2AttnProcessor()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        if image_tokens:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
        return self.attend(x, self.keys_values(context, num_image_tokens))

    def keys_values(self, context: torch.Tensor, num_image_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) [B, L, heads, head_dim] of the text tokens, then of the image tokens if any, each pair in
        its values' dtype."""
        heads = (self.num_heads, -1)
        image_context, text_context = context[:, :num_image_tokens], context[:, num_image_tokens:]
        k = self.norm_k(feed(self.k, text_context)).unflatten(-1, heads)
        v = feed(self.v, text_context).unflatten(-1, heads)
        pairs = [(k.to(v.dtype), v)]
        if num_image_tokens:
            k_img = self.norm_k_img(feed(self.k_img, image_context)).unflatten(-1, heads)
            v_img = feed(self.v_img, image_context).unflatten(-1, heads)
            pairs.append((k_img.to(v_img.dtype), v_img))
        return pairs

    def attend(self, x: torch.Tensor, keys_values: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The output [B, S, dim] of the queries of `x` over the text and the image tokens, summed."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # [B, S, heads, head_dim]
        out = None
        for k, v in keys_values:
            part = self.processor(q.to(v.dtype), k, v)
            out = part if out is None else out + part
        return self.o(out.flatten(2))


# ------------------------------------------------------------------------------------------------------------
# 5. Block and head
# ------------------------------------------------------------------------------------------------------------


def modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return normed.float() * (1 + scale) + shift


def token_chunks(tokens: int, chunk: int) -> list[slice]:
    """Consecutive slices of at most `chunk` tokens covering 0 .. tokens-1."""
    return [slice(start, min(start + chunk, tokens)) for start in range(0, tokens, chunk)]


def rope_rows(rope: torch.Tensor, rows: slice) -> torch.Tensor:
    """The rotations of some tokens: rows of a [S, D/2, 2] table or of a per-sample [B, S, D/2, 2] one."""
    return rope[rows] if rope.ndim == 3 else rope[:, rows]


def write_rows(buffer: torch.Tensor | None, rows: slice, values: torch.Tensor, tokens: int) -> torch.Tensor:
    """Write `values` [B, len(rows), ...] into rows of `buffer` [B, tokens, ...], allocated like `values` when None."""
    if buffer is None:
        buffer = values.new_empty(values.shape[0], tokens, *values.shape[2:])
    buffer[:, rows] = values
    return buffer


class SCAIL2TransformerBlock(nn.Module):
    """Self-attention and FFN under adaLN modulation from the timestep; ungated cross-attention between them."""

    # Without autograd the block runs in token chunks (`forward_chunked`) whose temporaries total at most this
    # many fp32 [S, dim] tensors: well under the keys, values and output stream (3 units in fp32) it runs beside,
    # so the block's peak stays theirs, while the 14B model's 48,832 tokens still make chunks of ~1,700 tokens,
    # matmuls large enough to fill a GPU.
    chunk_units = 0.5
    # The fp32 rows of `dim` one chunk's token holds at its widest besides the FFN's hidden rows (measured
    # with `scail2.pipelines.memory_activations.measure_block_memory`): the modulated input, the projected and
    # normalised query, its rotation's halves, the attention output and its projection.
    chunk_temporaries = 6.0
    # A sequence this small in bytes (one fp32 [B, S, dim] tensor) runs whole even without autograd: its peak is
    # small anyway, and many small chunks cost more in per-call overhead than they save (the bundled demo model,
    # 464 tokens in 23 chunks per block, ran 1.45x slower). The 14B model's unit is 1 GB at 48,832 tokens.
    chunk_min_unit_bytes = 64 * 2**20

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: bool,
        cross_attn_norm: bool,
        eps: float,
        image_tokens: bool,
    ):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm, eps, image_tokens)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        time_modulation: torch.Tensor,
        context: torch.Tensor,
        rope: torch.Tensor,
        num_image_tokens: int,
    ) -> torch.Tensor:
        if not torch.is_grad_enabled() and hidden_states.numel() * 4 >= self.chunk_min_unit_bytes:
            return self.forward_chunked(hidden_states, time_modulation, context, rope, num_image_tokens)
        # time_modulation [B, 6, dim] fp32 -> six [B, 1, dim] vectors; the residual stream stays fp32.
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + time_modulation).chunk(
            6, dim=1
        )
        # Matmul inputs take the projections' compute dtype; norms and modulation stay in fp32 (see
        # docs/architecture.md, "Precision").
        attn_in = modulate(self.norm1(hidden_states), shift_sa, scale_sa)
        hidden_states = hidden_states + self.self_attn(attn_in.to(compute_dtype(self.self_attn.q)), rope) * gate_sa
        cross_in = self.norm3(hidden_states).to(compute_dtype(self.cross_attn.q))
        hidden_states = hidden_states + self.cross_attn(cross_in, context, num_image_tokens)
        ffn_in = modulate(self.norm2(hidden_states), shift_ff, scale_ff)
        return hidden_states + feed(self.ffn, ffn_in) * gate_ff

    def forward_chunked(
        self,
        x: torch.Tensor,
        time_modulation: torch.Tensor,
        context: torch.Tensor,
        rope: torch.Tensor,
        num_image_tokens: int,
    ) -> torch.Tensor:
        """`forward` without autograd, in chunks of query tokens: the same operations on the same values (up to
        the rounding of matmuls over fewer rows), holding beyond the input only the keys, the values, the output
        stream and one chunk's temporaries (docs/architecture.md, "Memory plan").

        Everything but the keys and values of self-attention is row-wise: each token's queries, attention output,
        cross-attention and FFN depend on its own row of the stream, so a chunk runs all of them at once.
        """
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + time_modulation).chunk(
            6, dim=1
        )
        attn, cross, attn_dtype = self.self_attn, self.cross_attn, compute_dtype(self.self_attn.q)
        chunks = token_chunks(x.shape[1], self.chunk_tokens(x.shape[1]))

        def attention_input(rows: slice) -> torch.Tensor:
            return modulate(self.norm1(x[:, rows]), shift_sa, scale_sa).to(attn_dtype)

        # 1. Keys and values of the whole sequence.
        k = v = None
        for rows in chunks:
            k_rows, v_rows = attn.keys_values(attention_input(rows), rope_rows(rope, rows))
            k, v = write_rows(k, rows, k_rows, x.shape[1]), write_rows(v, rows, v_rows, x.shape[1])
        k, v = attn.exchange(k, v)
        # 2. Per chunk of queries: self-attention into a new fp32 stream, then cross-attention and FFN in place.
        context_kv = cross.keys_values(context, num_image_tokens)
        out = None
        for rows in chunks:
            attended = attn.attend(attention_input(rows), rope_rows(rope, rows), k, v)
            stream = x[:, rows] + attended * gate_sa
            del attended
            stream = stream + cross.attend(self.norm3(stream).to(compute_dtype(cross.q)), context_kv)
            ffn_in = modulate(self.norm2(stream), shift_ff, scale_ff)
            out = write_rows(out, rows, stream + feed(self.ffn, ffn_in) * gate_ff, x.shape[1])
        return out

    def chunk_tokens(self, tokens: int) -> int:
        """Tokens per chunk of `forward_chunked`: one chunk's temporaries, about `chunk_temporaries` fp32 rows
        of `dim` plus the FFN's two hidden rows of `ffn_dim` per token, stay within `chunk_units` of one fp32
        [tokens, dim] tensor."""
        dim, ffn_dim = self.ffn[0].in_features, self.ffn[0].out_features
        per_token = self.chunk_temporaries + 2 * ffn_dim / dim
        return max(1, int(tokens * self.chunk_units / per_token))


# diffusers' step caches (FirstBlockCache, MagCache, ...) find a block's residual stream through this entry: the
# `hidden_states` argument in, the returned tensor out (there is no separate text stream to carry).
TransformerBlockRegistry.register(SCAIL2TransformerBlock, TransformerBlockMetadata(return_hidden_states_index=0))


class SCAIL2Head(nn.Module):
    """Final modulated LayerNorm and projection to patch pixels; fed the unprojected time embedding."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            shift, scale = (self.modulation.float() + time_embedding.unsqueeze(1)).chunk(2, dim=1)
            out = modulate(self.norm(x), shift, scale)
            return feed(self.head, out).float()


# ------------------------------------------------------------------------------------------------------------
# 6. Model
# ------------------------------------------------------------------------------------------------------------


@dataclass
class SCAIL2TransformerOutput(BaseOutput):
    """`sample`: the predicted flow velocity (noise minus clean latent) [B, out_dim, T, H, W], fp32."""

    sample: torch.Tensor


class SCAIL2Transformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin):
    r"""The SCAIL-2 diffusion transformer.

    Config fields carry upstream's constructor names (`config-14b.json`), plus `image_dim` (CLIP width),
    `rope_theta` and `rope_offset` (the +120 patch shift that separates the driving stream and, in replacement,
    the references). `model_type` "i2v" adds the CLIP image tokens; "t2v" leaves them out (small models).

    `driving_scale` divides the driving stream's resolution. 2 is SCAIL-2's layout and what the official weights
    use: driving latents and masks [B, C, T, H/2, W/2], whose RoPE rows are the video grid's, shifted by
    `rope_offset` in width and 2x2-averaged. 1 keeps them at the video latent's size [B, C, T, H, W], so every
    driving token lines up with one video token and takes its rotation shifted by `rope_offset` in width, not
    averaged. It is for small models: at 128x128 with patch 2 the half-resolution stream has 4x4 tokens per
    frame, about one per character, too coarse to carry a pose (4x the driving tokens at scale 1). The
    pipeline and `scail2 cache` read it from here, so the driving inputs always match the model.

    `driving_injection` "add" (driving_scale 1 only) sums each driving token, with its mask embedding, into the
    video token on the same cell instead of appending it: the model reads the driver where it draws, the
    sequence loses the driving tokens, and the driving stream needs no RoPE rows. `driving_signal` says what the
    pipeline and the cache encode as driving latents: "frames" (SCAIL-2) or "pose_cue", DirectAnimator's grey
    low-pass pose cue of the driving characters (`scail2.conditioning.streams`). On small models trained from
    scratch, the pose cue added on the video grid is the layout that reads its driver (docs/benchmark/closeup.md).

    LoRA adapters attach through diffusers' `PeftAdapterMixin` (`add_adapter`, `set_adapters`, ...), step caches
    through its `CacheMixin` (`enable_cache(FirstBlockCacheConfig(...))`; scail2.models.step_cache).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SCAIL2TransformerBlock"]
    _repeated_blocks = ["SCAIL2TransformerBlock"]
    # Kept fp32 when the rest is loaded in bf16 (docs/architecture.md, "Precision"): the timestep path, the
    # modulation tables and every norm that has weights. diffusers matches an entry against the dot-separated
    # parts of a parameter name, so each entry is a whole name part: "img_emb" keeps the CLIP projection fp32
    # with its two LayerNorms, whose own names ("proj.0", "proj.4") cannot be told apart from other
    # Sequentials' linears (8.2 M parameters in the 14B model). No entry is a substring of another name, so
    # substring matching (diffusers' `dtype`, layerwise casting's skip patterns) picks the same parameters.
    _keep_in_fp32_modules = [
        "time_embedding",
        "time_projection",
        "modulation",
        "norm3",
        "norm_q",
        "norm_k",
        "norm_k_img",
        "img_emb",
    ]
    # Ulysses sequence parallelism (scail2.parallel.ulysses), set by `enable_sequence_parallel`; None: one process.
    sequence_parallel = None
    # Sequences whose RoPE rotations stay cached on the device (a few shapes per job: segments share one).
    rope_cache_size = 8
    # Positions past the RoPE offset that the per-axis tables cover from the start: grids up to 256 patches
    # (4096 pixels) and sequences up to 256 frames never rebuild them.
    rope_table_span = 256

    @register_to_config
    def __init__(
        self,
        model_type: str = "i2v",
        patch_size: tuple[int, int, int] = (1, 2, 2),
        text_len: int = 512,
        in_dim: int = 20,
        mask_dim: int = MASK_CHANNELS,
        dim: int = 5120,
        ffn_dim: int = 13824,
        freq_dim: int = 256,
        text_dim: int = 4096,
        out_dim: int = 16,
        num_heads: int = 40,
        num_layers: int = 40,
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        image_dim: int = 1280,
        rope_theta: float = 10000.0,
        rope_offset: int = 120,
        driving_scale: int = 2,
        driving_injection: str = "append",
        driving_signal: str = "frames",
    ):
        super().__init__()
        if model_type not in ("i2v", "t2v"):
            raise ValueError(f"model_type must be 'i2v' or 't2v', got {model_type!r}")
        check_driving_injection(driving_injection, driving_scale)
        check_driving_signal(driving_signal)
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of an even size")
        patch_size = tuple(patch_size)
        self.gradient_checkpointing = False

        # 1. Patch embeddings: video and references, driving stream, and the shared 28-channel mask embedding.
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.patch_embedding_pose = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.patch_embedding_mask = nn.Conv3d(mask_dim, dim, kernel_size=patch_size, stride=patch_size)

        # 2. Condition embeddings: text, timestep (sinusoid -> MLP -> six modulation vectors), CLIP image.
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        if model_type == "i2v":
            self.img_emb = ImageEmbedding(image_dim, dim)

        # 3. Transformer blocks.
        self.blocks = nn.ModuleList(
            SCAIL2TransformerBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, model_type == "i2v")
            for _ in range(num_layers)
        )

        # 4. Output head.
        self.head = SCAIL2Head(dim, out_dim, patch_size, eps)
        self._rope_axis_tables: dict[str, RopeAxisTables] = {}
        self._rope_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def patch_embeddings(self) -> list[nn.Conv3d]:
        """The input patch embeddings that `init_weights` draws (a variant without a driving stream has fewer)."""
        names = ("patch_embedding", "patch_embedding_pose", "patch_embedding_mask")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    def init_weights(self) -> None:
        """Initialisation for training from scratch, as Wan does: Xavier-uniform projections and patch embeddings,
        zero biases, N(0, 0.02) text and time embeddings, and a zero output head (the untrained model predicts
        zero velocity, so early training does not start from large random outputs)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for conv in self.patch_embeddings():
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        for embedding in (self.text_embedding, self.time_embedding):
            for module in embedding:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> SCAIL2Transformer3DModel:
        """diffusers' loader, except for folders whose config.json has a `quantization` entry (fp8 or GGUF
        linears): `scail2.models.quantize.load_transformer` keeps those weights as they are stored."""
        from scail2.models import quantize

        folder = quantize.quantized_folder(pretrained_model_name_or_path, kwargs.get("subfolder"))
        if folder is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return quantize.load_transformer(folder, torch_dtype=kwargs.get("torch_dtype") or kwargs.get("dtype"))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SCAIL2Transformer3DModel:
        """Build a named architecture (`14b`, `1.3b`, `tiny`) with random weights."""
        if name not in SCAIL2_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(SCAIL2_PRESETS)}")
        return cls(**{**SCAIL2_PRESETS[name], **overrides})

    def enable_sequence_parallel(self, plan) -> None:
        """Run self-attention under a sequence-parallel plan (`scail2.parallel.UlyssesAttention`; None: off): the
        blocks see one rank's share of the tokens, and the plan's collectives join them inside self-attention."""
        self.sequence_parallel = plan
        for block in self.blocks:
            block.self_attn.sequence_parallel = plan

    @property
    def latent_channels(self) -> int:
        return self.config.in_dim - HISTORY_MASK_CHANNELS

    @property
    def driving_scale(self) -> int:
        """The config's `driving_scale`; 2 for a subclass that has no driving stream and leaves the field out of
        its config (`ignore_for_config`)."""
        return self.config.get("driving_scale", 2)

    @property
    def driving_injection(self) -> str:
        """The config's `driving_injection` ("append" where the config predates the field)."""
        return self.config.get("driving_injection", "append")

    @property
    def driving_signal(self) -> str:
        """The config's `driving_signal` ("frames" where the config predates the field)."""
        return self.config.get("driving_signal", "frames")

    # -------------------------------------------------------------------------------------------------------
    # Input checks
    # -------------------------------------------------------------------------------------------------------

    def check_inputs(
        self,
        hidden_states,
        timestep,
        encoder_hidden_states,
        image_embeds,
        ref_latents,
        ref_masks,
        pose_latents,
        driving_masks,
        history_mask,
        extra_ref_latents,
        extra_ref_masks,
    ) -> None:
        """Raise a ValueError naming the tensor, the shape it got and the shape it needs."""
        cfg = self.config
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be [B, C, T, H, W], got shape {tuple(hidden_states.shape)}")
        b, c, t, h, w = hidden_states.shape
        _, p_h, p_w = cfg.patch_size
        s = self.driving_scale
        if h % (s * p_h) or w % (s * p_w):
            raise ValueError(
                f"hidden_states has latent size H={h}, W={w}; both must be multiples of {s * p_h} and {s * p_w} "
                f"(the driving stream is 1/{s} of the video grid and is patchified too): use pixel sizes that are "
                "multiples of 32"
            )
        c_lat, c_mask = self.latent_channels, cfg.mask_dim
        expected = {
            "hidden_states": (b, c_lat, t, h, w),
            "timestep": (b,),
            "ref_latents": (b, c_lat, 1, h, w),
            "ref_masks": (b, c_mask, 1 + t, h, w),
            "pose_latents": (b, c_lat, t, h // s, w // s),
            "driving_masks": (b, c_mask, t, h // s, w // s),
        }
        given = {
            "hidden_states": hidden_states,
            "timestep": timestep,
            "ref_latents": ref_latents,
            "ref_masks": ref_masks,
            "pose_latents": pose_latents,
            "driving_masks": driving_masks,
        }
        if history_mask is not None:
            expected["history_mask"] = (b, HISTORY_MASK_CHANNELS, t, h, w)
            given["history_mask"] = history_mask
        if (extra_ref_latents is None) != (extra_ref_masks is None):
            raise ValueError("extra_ref_latents and extra_ref_masks must be given together")
        if extra_ref_latents is not None:
            n = extra_ref_latents.shape[2] if extra_ref_latents.ndim == 5 else -1
            expected["extra_ref_latents"] = (b, c_lat, n, h, w)
            expected["extra_ref_masks"] = (b, c_mask, n, h, w)
            given.update(extra_ref_latents=extra_ref_latents, extra_ref_masks=extra_ref_masks)
        for name, need in expected.items():
            got = tuple(given[name].shape)
            if got != need:
                raise ValueError(f"{name} has shape {got} but needs {need}")
        self._check_context(b, encoder_hidden_states, image_embeds)

    def _check_context(self, batch: int, encoder_hidden_states: torch.Tensor, image_embeds) -> None:
        cfg = self.config
        text = tuple(encoder_hidden_states.shape)
        if len(text) != 3 or text[0] != batch or text[2] != cfg.text_dim or text[1] > cfg.text_len:
            raise ValueError(
                f"encoder_hidden_states has shape {text} but needs ({batch}, L, {cfg.text_dim}) "
                f"with L <= {cfg.text_len}"
            )
        if cfg.model_type == "i2v":
            if image_embeds is None:
                raise ValueError(f"image_embeds is required by an i2v model: shape ({batch}, 257, {cfg.image_dim})")
            image = tuple(image_embeds.shape)
            if len(image) != 3 or image[0] != batch or image[2] != cfg.image_dim:
                raise ValueError(f"image_embeds has shape {image} but needs ({batch}, N, {cfg.image_dim})")
        elif image_embeds is not None:
            raise ValueError("image_embeds was given but this model has model_type 't2v' (no image tokens)")

    # -------------------------------------------------------------------------------------------------------
    # Forward pieces
    # -------------------------------------------------------------------------------------------------------

    def embed_tokens(
        self,
        hidden_states,
        ref_latents,
        ref_masks,
        pose_latents,
        driving_masks,
        history_mask,
        extra_ref_latents,
        extra_ref_masks,
    ) -> torch.Tensor:
        """Patch-embed every stream and concatenate [extra refs | reference | video | driving] -> [B, S, dim]
        (with `driving_injection` "add": [extra refs | reference | video + driving])."""
        b, _, t, h, w = hidden_states.shape
        ones = hidden_states.new_ones(b, HISTORY_MASK_CHANNELS, 1, h, w)
        if history_mask is None:
            history_mask = hidden_states.new_zeros(b, HISTORY_MASK_CHANNELS, t, h, w)
        video_mask = history_mask
        video = torch.cat([hidden_states, video_mask.to(hidden_states.dtype)], dim=1)  # [B, in_dim, T, H, W]
        reference = torch.cat([ref_latents, ones.to(ref_latents.dtype)], dim=1)  # [B, in_dim, 1, H, W]
        pose_h, pose_w = pose_latents.shape[-2:]  # H/s, W/s for driving_scale s
        pose_ones = ones[..., :pose_h, :pose_w].expand(-1, -1, t, -1, -1)
        driving = torch.cat([pose_latents, pose_ones.to(pose_latents.dtype)], dim=1)  # [B, in_dim, T, H/s, W/s]

        # Main stream: the mask embedding's bias reaches the video tokens too (their mask frames are zeros).
        main = feed(self.patch_embedding, torch.cat([reference, video], dim=2))
        main = main + feed(self.patch_embedding_mask, ref_masks)  # [B, dim, 1+T, h', w']
        streams = [main]
        if extra_ref_latents is not None:
            n = extra_ref_latents.shape[2]
            extra = torch.cat([extra_ref_latents, ones.expand(-1, -1, n, -1, -1).to(extra_ref_latents.dtype)], dim=1)
            extra = feed(self.patch_embedding, extra) + feed(self.patch_embedding_mask, extra_ref_masks)
            streams.insert(0, extra)
        pose = feed(self.patch_embedding_pose, driving) + feed(self.patch_embedding_mask, driving_masks)
        if self.driving_injection == "add":  # the video frames follow the reference frame on the main grid
            streams[-1] = torch.cat([main[:, :, :1], main[:, :, 1:] + pose], dim=2)
        else:
            streams.append(pose)
        # Each [B, dim, t, h, w] -> [B, t*h*w, dim] in (t, h, w) row-major order.
        return torch.cat([s.flatten(2).transpose(1, 2) for s in streams], dim=1)

    def rope_table(
        self,
        frames: int,
        height: int,
        width: int,
        num_extra_refs: int,
        replace: bool | torch.Tensor,
        device: torch.device,
    ) -> torch.Tensor:
        """Rotations [S, head_dim/2, 2] (fp32 real, imag) for a patch grid, built on `device` and cached per
        shape, mode and device (the last `rope_cache_size` sequences).

        A per-sample `replace` [B] (mixed-mode training batches) gives [B, S, head_dim/2, 2].
        """
        if isinstance(replace, torch.Tensor) and replace.ndim == 1:
            tables = [self.rope_table(frames, height, width, num_extra_refs, mode, device) for mode in (False, True)]
            return torch.where(replace.to(device)[:, None, None, None], tables[1][None], tables[0][None])
        key = (frames, height, width, num_extra_refs, bool(replace), str(device))
        if key in self._rope_cache:
            self._rope_cache.move_to_end(key)
            return self._rope_cache[key]
        needed = rope_positions_needed(frames, height, width, num_extra_refs, self.config.rope_offset)
        table = scail2_rope_rotations(
            self.rope_axis_tables(device, needed),
            frames,
            height,
            width,
            num_extra_refs,
            bool(replace),
            self.config.rope_offset,
            self.driving_scale,
            self.driving_injection,
        )
        self._rope_cache[key] = table
        while len(self._rope_cache) > self.rope_cache_size:
            self._rope_cache.popitem(last=False)
        return table

    def rope_axis_tables(self, device: torch.device, num_positions: int) -> RopeAxisTables:
        """The per-axis rotation tables on `device`, covering at least `num_positions` positions; rebuilt (at
        twice the size or more) only when a sequence reaches beyond them."""
        tables = self._rope_axis_tables.get(str(device))
        if tables is None or tables.num_positions < num_positions:
            cfg = self.config
            size = max(num_positions, cfg.rope_offset + self.rope_table_span)
            size = size if tables is None else max(size, 2 * tables.num_positions)
            tables = RopeAxisTables.build(cfg.dim // cfg.num_heads, cfg.rope_theta, size, device)
            self._rope_axis_tables[str(device)] = tables
        return tables

    def embed_time(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timestep [B] -> (embedding [B, dim], block modulation [B, 6, dim]), both fp32."""
        with torch.autocast(device_type=timestep.device.type, enabled=False):
            sinusoid = timestep_sinusoid(timestep, self.config.freq_dim)
            embedding = feed(self.time_embedding, sinusoid).float()
            modulation = feed(self.time_projection, embedding).float()
        return embedding, modulation.unflatten(1, (6, self.config.dim))

    def embed_context(self, encoder_hidden_states: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """[image tokens | text tokens zero-padded to text_len] -> [B, N_img + text_len, dim]; no mask, as upstream."""
        pad = self.config.text_len - encoder_hidden_states.shape[1]
        text = F.pad(encoder_hidden_states, (0, 0, 0, pad))  # [B, text_len, text_dim]
        context = feed(self.text_embedding, text)
        if image_embeds is not None:
            # an fp32-kept module: autocast would copy its weights to bf16 on every call
            with torch.autocast(device_type=image_embeds.device.type, enabled=False):
                image = feed(self.img_emb, image_embeds)
            context = torch.cat([image.to(context.dtype), context], dim=1)
        return context

    def unpatchify(self, tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Video tokens [B, T*h*w, p_t*p_h*p_w*C] -> latent [B, C, T*p_t, h*p_h, w*p_w]."""
        p_t, p_h, p_w = self.config.patch_size
        b, c = tokens.shape[0], self.config.out_dim
        x = tokens.reshape(b, frames, height, width, p_t, p_h, p_w, c)  # [B, T, h, w, pt, ph, pw, C]
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)  # [B, C, T, pt, h, ph, w, pw]
        return x.reshape(b, c, frames * p_t, height * p_h, width * p_w)

    # -------------------------------------------------------------------------------------------------------
    # Forward
    # -------------------------------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        ref_latents: torch.Tensor,
        ref_masks: torch.Tensor,
        pose_latents: torch.Tensor,
        driving_masks: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        replace: bool | torch.Tensor = False,
        history_mask: torch.Tensor | None = None,
        extra_ref_latents: torch.Tensor | None = None,
        extra_ref_masks: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SCAIL2TransformerOutput | tuple[torch.Tensor]:
        r"""Predict the flow velocity for a noisy video latent.

        Args (B batch, C=16 latent channels, T latent frames, H/W latent height/width, both multiples of 4):
            hidden_states: noisy video latent [B, C, T, H, W].
            timestep: [B], 1000 * sigma.
            encoder_hidden_states: text encoder output [B, L, text_dim], L <= text_len (zero-padded here).
            ref_latents: reference image latent [B, C, 1, H, W].
            ref_masks: 28-channel reference mask [B, 28, 1+T, H, W] (zeros over the video frames).
            pose_latents: driving video latent at 1/driving_scale resolution [B, C, T, H/s, W/s] (s = 2: half).
            driving_masks: 28-channel driving masks [B, 28, T, H/s, W/s].
            image_embeds: CLIP features [B, 257, image_dim] (i2v models only).
            replace: replacement mode (references shifted in height) instead of animation (shifted in time);
                a bool for the batch, or a bool tensor [B] per sample.
            history_mask: [B, 4, T, H, W], ones on clean history frames; zeros when not given.
            extra_ref_latents / extra_ref_masks: additional reference views [B, C, N, H, W] / [B, 28, N, H, W].

        Returns:
            `SCAIL2TransformerOutput` with `sample` [B, out_dim, T, H, W] (fp32), or a 1-tuple.
        """
        # 0. Check shapes.
        self.check_inputs(
            hidden_states,
            timestep,
            encoder_hidden_states,
            image_embeds,
            ref_latents,
            ref_masks,
            pose_latents,
            driving_masks,
            history_mask,
            extra_ref_latents,
            extra_ref_masks,
        )
        _, _, frames, height, width = hidden_states.shape
        _, p_h, p_w = self.config.patch_size
        grid_h, grid_w = height // p_h, width // p_w
        num_extra = 0 if extra_ref_latents is None else extra_ref_latents.shape[2]

        # 1. Tokens of every stream, and their rotary positions.
        x = self.embed_tokens(
            hidden_states,
            ref_latents,
            ref_masks,
            pose_latents,
            driving_masks,
            history_mask,
            extra_ref_latents,
            extra_ref_masks,
        )
        rope = self.rope_table(frames, grid_h, grid_w, num_extra, replace, x.device)
        if self.sequence_parallel is not None:
            x, rope = self.sequence_parallel.shard(x, rope)  # this rank's tokens and their rotations

        # 2. Timestep and context embeddings.
        time_embedding, time_modulation = self.embed_time(timestep)
        context = self.embed_context(encoder_hidden_states, image_embeds)
        num_image_tokens = 0 if image_embeds is None else image_embeds.shape[1]

        # 3. Transformer blocks.
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, time_modulation, context, rope, num_image_tokens)
            else:
                x = block(x, time_modulation, context, rope, num_image_tokens)

        # 4. Head on the video tokens only (extra refs and the reference come first, any driving tokens last).
        if self.sequence_parallel is not None:
            x = self.sequence_parallel.gather(x)  # [B, S, dim] on every rank
        start = (num_extra + 1) * grid_h * grid_w
        video_tokens = x[:, start : start + frames * grid_h * grid_w]
        out = self.unpatchify(self.head(video_tokens, time_embedding), frames, grid_h, grid_w)
        return SCAIL2TransformerOutput(sample=out) if return_dict else (out,)
