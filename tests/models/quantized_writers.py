"""Write tiny quantised transformer files the way users get them: GGUF (ComfyUI-GGUF's layout) and ComfyUI fp8.

`gguf.quants.quantize` encodes Q8_0 but no K-type, so the K-types are encoded here, with a plain min/max fit per
sub-block (llama.cpp searches for better scales, so its files have lower errors than these). The byte layouts
are those that gguf-py's own dequantisers read; `test_quantized_files` checks every encoder against them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from scail2.models.quantize import is_block_linear, quantize_fp8

QK_K = 256  # values per K-type super-block
K_TYPES = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")
GGUF_TYPES = ("Q8_0", *K_TYPES)

# ------------------------------------------------------------------------------------------------------------
# K-type encoders: float32 blocks [n, 256] -> bytes [n, type size]
# ------------------------------------------------------------------------------------------------------------


def _fp16(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values rounded to fp16 as float32, their fp16 bytes [n, 2])."""
    half = values.astype(np.float16).reshape(-1, 1)
    return half.astype(np.float32), half.view(np.uint8).reshape(-1, 2)


def _divide(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, x / np.where(y > 0, y, 1), 0)


def _symmetric(sub: np.ndarray, q_max: int, q_min: int, scale_bits_max: int):
    """Signed codes for sub-blocks [n, s, k]: x ~= d * scale[s] * q, q in [q_min, q_max]; the integer scales are
    in [0, scale_bits_max]. Returns (q, integer scales [n, s], d bytes)."""
    sub_scale = np.abs(sub).max(axis=-1) / q_max  # [n, s]
    d, d_bytes = _fp16(sub_scale.max(axis=-1) / scale_bits_max)
    scales = np.clip(np.rint(_divide(sub_scale, d)), 0, scale_bits_max)
    q = np.clip(np.rint(_divide(sub, (d * scales)[..., None])), q_min, q_max)
    return q.astype(np.int16), scales.astype(np.uint8), d_bytes


def _affine(sub: np.ndarray, q_max: int, scale_bits_max: int):
    """Unsigned codes for sub-blocks [n, s, k]: x ~= d * scale[s] * q - dmin * minimum[s], q in [0, q_max].
    Returns (q, integer scales, integer minimums, d bytes, dmin bytes)."""
    sub_min = -np.minimum(sub.min(axis=-1), 0)  # [n, s], >= 0
    sub_scale = (sub.max(axis=-1) + sub_min) / q_max
    d, d_bytes = _fp16(sub_scale.max(axis=-1) / scale_bits_max)
    dmin, dmin_bytes = _fp16(sub_min.max(axis=-1) / scale_bits_max)
    scales = np.clip(np.rint(_divide(sub_scale, d)), 0, scale_bits_max)
    minimums = np.clip(np.rint(_divide(sub_min, dmin)), 0, scale_bits_max)
    offset = (dmin * minimums)[..., None]
    q = np.clip(np.rint(_divide(sub + offset, (d * scales)[..., None])), 0, q_max)
    return q.astype(np.uint8), scales.astype(np.uint8), minimums.astype(np.uint8), d_bytes, dmin_bytes


def _pack_bits(values: np.ndarray, groups: int, bits: int) -> np.ndarray:
    """values [n, groups, parts, width] -> bytes [n, groups * width]: part p in bits p*bits.. of each byte."""
    parts = values.shape[2]
    shifts = (np.arange(parts, dtype=np.uint8) * bits).reshape(1, 1, parts, 1)
    packed = np.bitwise_or.reduce(values.astype(np.uint8) << shifts, axis=2)
    return packed.reshape(values.shape[0], groups * values.shape[3])


def _k_scales(scales: np.ndarray, minimums: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and minimums [n, 8] -> the 12 bytes Q4_K and Q5_K store them in."""
    low_s, high_s, low_m, high_m = scales[:, :4], scales[:, 4:], minimums[:, :4], minimums[:, 4:]
    first = (low_s & 63) | ((high_s >> 4) << 6)
    second = (low_m & 63) | ((high_m >> 4) << 6)
    third = (high_s & 15) | ((high_m & 15) << 4)
    return np.concatenate([first, second, third], axis=1).astype(np.uint8)


def encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    q, scales, d = _symmetric(blocks.reshape(n, 16, 16), 31, -32, 127)
    level = (q + 32).reshape(n, QK_K).astype(np.uint8)  # 0..63
    low = _pack_bits((level & 15).reshape(n, 2, 2, 64), 2, 4)  # [n, 128]
    high = _pack_bits((level >> 4).reshape(n, 2, 4, 32), 2, 2)  # [n, 64]
    return np.concatenate([low, high, scales.astype(np.int8).view(np.uint8), d], axis=1)


def encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    q, scales, minimums, d, dmin = _affine(blocks.reshape(n, 8, 32), 31, 63)
    q = q.reshape(n, QK_K)
    low = _pack_bits((q & 15).reshape(n, 4, 2, 32), 4, 4)  # [n, 128]
    high = _pack_bits((q >> 4).reshape(n, 1, 8, 32), 1, 1)  # [n, 32]
    return np.concatenate([d, dmin, _k_scales(scales, minimums), high, low], axis=1)


def encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    q, scales, minimums, d, dmin = _affine(blocks.reshape(n, 8, 32), 15, 63)
    low = _pack_bits(q.reshape(n, 4, 2, 32), 4, 4)  # [n, 128]
    return np.concatenate([d, dmin, _k_scales(scales, minimums), low], axis=1)


def encode_q3_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    q, scales, d = _symmetric(blocks.reshape(n, 16, 16), 3, -4, 31)
    stored = scales + 32  # 6-bit, read back as stored - 32
    low_scales = _pack_bits((stored & 15).reshape(n, 1, 2, 8), 1, 4)  # [n, 8]
    high_scales = _pack_bits((stored >> 4).reshape(n, 1, 4, 4), 1, 2)  # [n, 4]
    level = (q + 4).reshape(n, QK_K).astype(np.uint8)  # 0..7: 2 low bits, and a high bit that is set for q >= 0
    low = _pack_bits((level & 3).reshape(n, 2, 4, 32), 2, 2)  # [n, 64]
    high = _pack_bits((level >> 2).reshape(n, 1, 8, 32), 1, 1)  # [n, 32]
    return np.concatenate([high, low, low_scales, high_scales, d], axis=1)


def encode_q2_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    q, scales, minimums, d, dmin = _affine(blocks.reshape(n, 16, 16), 3, 15)
    packed = _pack_bits(q.reshape(n, QK_K).reshape(n, 2, 4, 32), 2, 2)  # [n, 64]
    return np.concatenate([scales | (minimums << 4), packed, d, dmin], axis=1)


K_ENCODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q6_K": encode_q6_k,
    "Q5_K": encode_q5_k,
    "Q4_K": encode_q4_k,
    "Q3_K": encode_q3_k,
    "Q2_K": encode_q2_k,
}


def gguf_quantize(weight: np.ndarray, type_name: str) -> np.ndarray:
    """float32 [rows, cols] -> GGUF bytes [rows, bytes per row] of `type_name`."""
    import gguf

    if type_name not in K_ENCODERS:
        return gguf.quants.quantize(weight, gguf.GGMLQuantizationType[type_name])
    rows = weight.shape[0]
    blocks = weight.astype(np.float32).reshape(-1, QK_K)
    return K_ENCODERS[type_name](blocks).reshape(rows, -1)


# ------------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------------


def _gguf_type_of(name: str, tensor: torch.Tensor, linear_type: str) -> str:
    """ComfyUI-GGUF's choice: 1-D tensors F32; linears quantised where their rows split into whole blocks."""
    import gguf

    block_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[linear_type]][0]
    if tensor.ndim == 2 and tensor.shape[1] % block_size == 0:
        return linear_type
    return "F32" if tensor.ndim == 1 else "F16"


def write_gguf(
    path: Path, state: dict[str, torch.Tensor], linear_type: str, prefix: str = "", types: dict | None = None
) -> Path:
    """A GGUF file of a Wan-named state dict: block and other 2-D weights in `linear_type` (F16 where rows do
    not split into blocks), 1-D tensors F32, convolution weights flattened with `comfy.gguf.orig_shape`;
    `types` names the type of single tensors instead."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="wan")
    for name, tensor in state.items():
        data = tensor.detach().float().numpy()
        if data.ndim > 2:  # GGML tensors have at most 4 dims; ComfyUI-GGUF stores the true shape beside them
            writer.add_array(f"comfy.gguf.orig_shape.{prefix}{name}", list(data.shape))
            data = data.reshape(-1, 256) if data.size % 256 == 0 else data.reshape(data.shape[0], -1)
        kind = (types or {}).get(name) or _gguf_type_of(name, torch.from_numpy(data), linear_type)
        if kind == "F32":
            writer.add_tensor(prefix + name, data)
        elif kind == "F16":
            writer.add_tensor(prefix + name, data.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(prefix + name, gguf_quantize(data, kind), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_comfy_fp8(path: Path, state: dict[str, torch.Tensor], layout: str = "scaled_fp8") -> Path:
    """A ComfyUI fp8 file: block linears e4m3 with one fp32 scale per tensor, the rest bf16.

    layout "scaled_fp8": `model.diffusion_model.` keys, `X.scale_weight`, `X.scale_input` (1.0) and the
    `scaled_fp8` marker; "metadata": `X.weight_scale`, `X.input_scale` and `_quantization_metadata`;
    "unscaled": fp8 weights cast directly, no scales.
    """
    prefix = "model.diffusion_model." if layout == "scaled_fp8" else ""
    out, layers = {}, {}
    for name, tensor in state.items():
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and is_block_linear(module)):
            out[prefix + name] = tensor.to(torch.bfloat16).contiguous()
            continue
        if layout == "unscaled":
            out[prefix + name] = tensor.to(torch.float8_e4m3fn)
            continue
        scale = tensor.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
        out[prefix + name] = (tensor.float() / scale).to(torch.float8_e4m3fn)
        scale_name, input_name = (
            ("scale_weight", "scale_input") if layout == "scaled_fp8" else ("weight_scale", "input_scale")
        )
        out[f"{prefix}{module}.{scale_name}"] = scale.reshape(())
        out[f"{prefix}{module}.{input_name}"] = torch.ones(())
        layers[module] = {"format": "float8_e4m3fn"}
    metadata = {"format": "pt"}
    if layout == "scaled_fp8":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    elif layout == "metadata":
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    save_file(out, str(path), metadata=metadata)
    return path


def per_row_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What `FP8Linear` stores for each block linear of a state dict (used to check folder contents)."""
    return {k: quantize_fp8(v)[0] for k, v in state.items() if k.endswith(".weight") and is_block_linear(k[:-7])}
