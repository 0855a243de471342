"""Activation bytes of each component of a job, from its config: the transformer by a calibrated model of its
forward, the VAE and the encoders by tracing their own forward on the meta device.

The VAE and the encoders run in their stored dtype without autocast, so their forward traced on meta tensors
(`scail2.pipelines.live_bytes.traced_peak`) allocates exactly what it would on the GPU, frame chunking and
causal caches included (tiled decoding: one tile's trace plus the tiles held until blending). The transformer
runs under bf16 autocast on GPUs, which the meta device cannot trace, so its per-block peak is a small table
(`BLOCK_MEMORY`) measured on the real forward on CPU with the same tracker (`measure_block_memory`; tests
check the table against it and at 14B scale). See docs/architecture.md, "Memory plan".
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from scail2.conditioning.geometry import SPATIAL_STRIDE, TEMPORAL_STRIDE
from scail2.models.transformer_directanimator import CUES, is_directanimator_config
from scail2.pipelines.live_bytes import peak_tensor_bytes, traced_peak

# ------------------------------------------------------------------------------------------------------------
# 1. Token counts (docs/architecture.md, "Token layout")
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenCounts:
    """Self-attention tokens per sample of one segment, and the cross-attention context length."""

    extra_refs: int
    reference: int
    video: int
    driving: int
    context: int  # CLIP tokens + text_len
    cues: int = 0  # DirectAnimator: tokens of its pose and face cue streams, held beside the sequence

    @property
    def total(self) -> int:
        return self.extra_refs + self.reference + self.video + self.driving

    def describe(self) -> str:
        if self.cues:
            return f"{self.total:,} tokens: reference + video, cues added per block, no driving stream"
        return f"{self.total:,} tokens"


# CLIP ViT-H/14 tokens per image (256 patches + the class token), what an i2v transformer attends to.
CLIP_TOKENS = 257


def transformer_tokens(config: dict, frames: int, height: int, width: int, extra_refs: int = 0) -> TokenCounts:
    """Tokens of a `frames` x `height` x `width` segment: extra refs, reference, video, driving (at 1/driving_scale
    resolution: half by default; none of their own when `driving_injection` is "add"). A DirectAnimator config has
    no driving stream; its pose and face cues are two video-sized token streams added to the video tokens in every
    block (`cues`)."""
    _, p_h, p_w = config.get("patch_size", (1, 2, 2))
    latent_frames = (frames - 1) // TEMPORAL_STRIDE + 1
    grid = (height // SPATIAL_STRIDE // p_h) * (width // SPATIAL_STRIDE // p_w)
    scale = config.get("driving_scale", 2)
    driving_grid = (height // SPATIAL_STRIDE // scale // p_h) * (width // SPATIAL_STRIDE // scale // p_w)
    image_tokens = CLIP_TOKENS if config.get("model_type", "i2v") == "i2v" else 0
    cue_model = is_directanimator_config(config)
    return TokenCounts(
        extra_refs=extra_refs * grid,
        reference=grid,
        video=latent_frames * grid,
        driving=0 if cue_model or config.get("driving_injection") == "add" else latent_frames * driving_grid,
        context=image_tokens + config.get("text_len", 512),
        cues=len(CUES) * latent_frames * grid if cue_model else 0,
    )


# ------------------------------------------------------------------------------------------------------------
# 2. The transformer forward
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockMemory:
    """Bytes one block holds beyond its input, in units of one fp32 [B, S, dim] tensor ("units").

    The block's peak is the largest of its three stages; `measure_block_memory` re-derives every field.
    """

    attention: float  # self-attention: keys, values, the block's output stream and one token chunk's temporaries
    cross_base: float  # cross-attention: the same tensors ...
    cross_per_context: float  # ... plus this many units per context token / S (keys and values of the context)
    ffn_base: float  # FFN: the same tensors ...
    ffn_per_hidden: float  # ... plus this many units per ffn_dim / dim (none: chunks shrink as the FFN widens)

    def units(self, ffn_ratio: float, context_ratio: float) -> float:
        return max(
            self.attention,
            self.cross_base + self.cross_per_context * context_ratio,
            self.ffn_base + self.ffn_per_hidden * ffn_ratio,
        )


# Measured on this package's forward (`measure_block_memory`): fp32 weights; bf16 weights under bf16 autocast.
# Without autograd a block runs in token chunks (`SCAIL2TransformerBlock.forward_chunked`): it holds the keys and
# values of the sequence, its fp32 output stream, and one chunk's temporaries (`chunk_units` = 0.5), so every
# stage peaks alike; only a context longer than the sequence (never a video's) adds its own keys and values.
BLOCK_MEMORY = {
    "fp32": BlockMemory(attention=3.5, cross_base=3.0, cross_per_context=2.5, ffn_base=3.4, ffn_per_hidden=0.0),
    "bf16": BlockMemory(attention=2.5, cross_base=1.0, cross_per_context=4.0, ffn_base=2.25, ffn_per_hidden=0.0),
}
# Below `SCAIL2TransformerBlock.chunk_min_unit_bytes` per unit a block runs whole, with these peaks instead.
BLOCK_MEMORY_WHOLE = {
    "fp32": BlockMemory(attention=6.0, cross_base=5.0, cross_per_context=2.5, ffn_base=4.0, ffn_per_hidden=2.0),
    "bf16": BlockMemory(attention=6.5, cross_base=2.5, cross_per_context=4.0, ffn_base=4.0, ffn_per_hidden=1.0),
}
COMPUTE_BYTES = {"fp32": 4, "bf16": 2}


def block_memory(precision: str, unit_bytes: int) -> BlockMemory:
    """The block table that applies to a forward whose fp32 [B, S, dim] tensor has `unit_bytes` bytes."""
    from scail2.models.transformer_scail2 import SCAIL2TransformerBlock

    chunked = unit_bytes >= SCAIL2TransformerBlock.chunk_min_unit_bytes
    return (BLOCK_MEMORY if chunked else BLOCK_MEMORY_WHOLE)[precision]


# Patch embedding, in units: the embedded streams and their concatenation, plus this many units per input value
# of a token (latent and mask channels over its patch) / dim, for the inputs' concatenated copies (measured on
# the tiny configs, where dim is as small as the inputs; at 14B the term is 0.02 units).
EMBEDDING_UNITS = 2.0
EMBEDDING_UNITS_PER_INPUT = 0.65


# DirectAnimator's cues, in units of one fp32 [B, cue tokens, dim] tensor (both cue streams, twice the video
# tokens): the embedded cue tokens held for the whole forward (1 unit in fp32, 0.5 as bf16 under autocast), plus
# the new stream each block's cue addition makes while its input is still held (about 0.6: the sequence is 5/6
# video tokens at 17 frames). Fitted to the forward of mid-size models, chunked and whole (1.09-1.15 bf16,
# 1.58-1.68 fp32); tests/pipelines/test_memory_plan_directanimator.py checks it on a tiny model (within 15%).
CUE_UNITS = {"fp32": 1.6, "bf16": 1.1}


def transformer_forward_bytes(config: dict, tokens: TokenCounts, batch: int, precision: str) -> int:
    """Peak bytes one forward allocates beyond its weights and inputs: the fp32 residual stream and one block's
    stages (blocks run one after another under no_grad) or, where the model is narrower than its inputs, the
    patch embedding; plus the embedded context, the RoPE table and DirectAnimator's cue streams."""
    dim, heads = config["dim"], config["num_heads"]
    unit = batch * tokens.total * dim * 4
    inputs = (config.get("in_dim", 20) + config.get("mask_dim", 28)) * math.prod(config.get("patch_size", (1, 2, 2)))
    embedding = EMBEDDING_UNITS + EMBEDDING_UNITS_PER_INPUT * inputs / dim - 1  # the stream's own unit is below
    block = block_memory(precision, unit).units(config["ffn_dim"] / dim, tokens.context / tokens.total)
    block = max(block, embedding)
    context = batch * tokens.context * dim * COMPUTE_BYTES[precision]
    rope = tokens.total * (dim // heads) * 4  # [S, head_dim/2, 2] fp32
    cues = int(CUE_UNITS[precision] * batch * tokens.cues * dim * 4)
    return int((1 + block) * unit) + context + rope + cues


def measure_block_memory(
    precision: str, dim: int = 256, ffn_dim: int = 256, tokens: int = 2048, context: int = 1, chunked: bool = True
) -> float:
    """Units one block of this package's transformer holds beyond its input on CPU (real tensors, this tracker).

    bf16 runs bf16 weights under CPU bf16 autocast, as GPUs run them. With the defaults (ffn_dim = dim, one
    context token) this is the attention stage; a wide `ffn_dim` measures the FFN stage, a long `context` the
    cross-attention stage.
    """
    from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    model = SCAIL2Transformer3DModel(
        model_type="t2v", dim=dim, ffn_dim=ffn_dim, num_heads=dim // 64, num_layers=1, freq_dim=64, text_dim=8
    ).eval()
    block = model.blocks[0].to(dtype)
    block.chunk_min_unit_bytes = 0 if chunked else float("inf")  # this size runs whole otherwise
    for name, parameter in block.named_parameters():
        if "modulation" in name or "norm" in name:
            parameter.data = parameter.data.float()  # the declared fp32 modules
    x = torch.randn(1, tokens, dim, generator=generator)
    time_modulation = torch.randn(1, 6, dim, generator=generator)
    context_tokens = torch.randn(1, context, dim, generator=generator).to(dtype)
    rope = torch.randn(tokens, dim // model.config.num_heads // 2, 2, generator=generator)  # [S, head_dim/2, 2]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        peak = peak_tensor_bytes(lambda: block(x, time_modulation, context_tokens, rope, 0))
    return peak / (tokens * dim * 4)


# ------------------------------------------------------------------------------------------------------------
# 3. VAE encode and decode, traced
# ------------------------------------------------------------------------------------------------------------

# Frame counts traced before extrapolating: decoding caches two frames per causal convolution, so from the
# third latent frame on every further latent frame adds the same bytes (its pixels); encoding, in chunks of
# four frames, is affine from 9 frames on.
DECODE_TRACED = (3, 4)
ENCODE_TRACED = (9, 13)


def _affine(traced, count: int, points: tuple[int, int], step: int) -> int:
    """traced(count) for count <= points[1]; beyond, the straight line through the two traced points."""
    if count <= points[1]:
        return traced(count)
    low, high = traced(points[0]), traced(points[1])
    per_step = (high - low) / ((points[1] - points[0]) // step)
    return int(high + per_step * ((count - points[1]) // step))


@contextlib.contextmanager
def untiled(vae) -> Iterator[None]:
    """The VAE's whole-frame path while tracing (tiled decoding is sized from one tile's trace)."""
    tiling, vae.use_tiling = vae.use_tiling, False
    try:
        yield
    finally:
        vae.use_tiling = tiling


def _tile_grid(size: int, stride: int, tile: int) -> list[int]:
    """Sizes of the overlapping tiles diffusers' tiled VAE cuts one axis of `size` into."""
    return [min(tile, size - start) for start in range(0, size, stride)]


def vae_decode_bytes(vae, latent_frames: int, latent_height: int, latent_width: int, tiled: bool) -> int:
    """Peak bytes of decoding one segment's latent to clamped fp32 pixels, as `VideoLatentCodec.decode` does."""
    ratio = vae.spatial_compression_ratio
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    if not tiled or (latent_height <= tile_h and latent_width <= tile_w):
        return _decode_untiled(vae, latent_frames, latent_height, latent_width)
    # Tiled: every decoded tile is kept until they are blended, then rows, the whole video and its clamp.
    stride_h, stride_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
    frames = (latent_frames - 1) * TEMPORAL_STRIDE + 1
    pixel = 3 * frames * ratio * ratio * 4  # fp32 bytes of one latent cell's decoded pixels, all frames
    tiles = [
        h * w * pixel
        for h in _tile_grid(latent_height, stride_h, tile_h)
        for w in _tile_grid(latent_width, stride_w, tile_w)
    ]
    one_tile = _decode_untiled(vae, latent_frames, min(tile_h, latent_height), min(tile_w, latent_width))
    video = latent_height * latent_width * pixel
    return max(sum(tiles) - tiles[-1] + one_tile, sum(tiles) + 3 * video)


@functools.lru_cache(maxsize=64)
def _decode_untiled(vae, latent_frames: int, latent_height: int, latent_width: int) -> int:
    dtype = next(vae.parameters()).dtype

    def decode(count: int) -> int:
        def run():
            latent = torch.empty(1, vae.config.z_dim, count, latent_height, latent_width, device="meta")
            return vae.decode(latent.to(dtype)).sample.float().clamp(-1, 1)

        with untiled(vae):
            return traced_peak(run)

    return _affine(decode, latent_frames, DECODE_TRACED, 1)


def vae_encode_bytes(vae, frames: int, height: int, width: int, tiled: bool, batch: int = 1) -> int:
    """Peak bytes of encoding `batch` clips of `frames` pixel frames (the fp32 pixels on the device included)."""
    tile_h, tile_w = vae.tile_sample_min_height, vae.tile_sample_min_width
    if not tiled or (height <= tile_h and width <= tile_w):
        return _encode_untiled(vae, frames, height, width, batch)
    ratio = vae.spatial_compression_ratio
    latent_frames = (frames - 1) // TEMPORAL_STRIDE + 1
    latent = 2 * vae.config.z_dim * latent_frames * 4  # mean and log-variance of one latent cell, fp32
    tiles = [
        h * w * latent
        for h in _tile_grid(height // ratio, vae.tile_sample_stride_height // ratio, tile_h // ratio)
        for w in _tile_grid(width // ratio, vae.tile_sample_stride_width // ratio, tile_w // ratio)
    ]
    pixels = batch * 3 * frames * height * width * 4
    return pixels + batch * (_encode_untiled(vae, frames, min(tile_h, height), min(tile_w, width), 1) + sum(tiles))


@functools.lru_cache(maxsize=64)
def _encode_untiled(vae, frames: int, height: int, width: int, batch: int) -> int:
    dtype = next(vae.parameters()).dtype

    def encode(count: int) -> int:
        def run():
            pixels = torch.empty(batch, 3, count, height, width, device="meta")
            return vae.encode(pixels.to(dtype)).latent_dist.mode().float()

        with untiled(vae):
            return traced_peak(run)

    return _affine(encode, frames, ENCODE_TRACED, TEMPORAL_STRIDE)


# ------------------------------------------------------------------------------------------------------------
# 4. Encoders, traced
# ------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def text_encoder_bytes(text_encoder, prompts: int, tokens: int) -> int:
    """Peak bytes of encoding `prompts` prompts padded to `tokens` (the all-ones attention mask left out:
    it only adds [prompts, tokens] integers)."""

    def run():
        input_ids = torch.zeros(prompts, tokens, dtype=torch.long, device="meta")
        return text_encoder(input_ids=input_ids).last_hidden_state

    return traced_peak(run)


@functools.lru_cache(maxsize=16)
def image_encoder_bytes(image_encoder, images: int) -> int:
    """Peak bytes of the CLIP features of `images` reference images, every hidden state returned as the
    pipeline asks for them."""
    size = image_encoder.config.image_size
    dtype = next(image_encoder.parameters()).dtype

    def run():
        pixels = torch.empty(images, 3, size, size, device="meta", dtype=dtype)
        return image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]

    return traced_peak(run)
