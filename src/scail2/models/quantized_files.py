"""Read the quantised SCAIL-2 files users already have: GGUF and ComfyUI fp8 safetensors.

Both hold Wan-named tensors (`blocks.0.self_attn.q.weight`, optionally prefixed `model.diffusion_model.`), so
`scail2.models.convert` maps them with its Wan plan. Their linear weights come out as `QuantizedWeight`s, kept
quantised; everything else as plain tensors.

- GGUF (ComfyUI-GGUF's layout): GGML blocks, dims listed innermost first; tensors with more than two dims or
  rows that are no multiple of the block size are stored reshaped, their true shape under the metadata key
  `comfy.gguf.orig_shape.<name>`; biases and norms are F32.
- ComfyUI fp8: float8 weights (e4m3fn, or e5m2) with a per-tensor fp32 scale, `X.scale_weight` in the older
  `scaled_fp8` files (marked by a `scaled_fp8` tensor) or `X.weight_scale` in files whose safetensors metadata
  holds `_quantization_metadata`; activation scales (`scale_input`, `input_scale`) are not used, since the
  activations are scaled per token at run time. fp8 weights without any scale (plain `fp8_e4m3fn` files) load
  with scale 1. The per-tensor scale becomes a per-row scale with one value: the fp8 values carry over unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from scail2.errors import Scail2Error
from scail2.models.quantize import FP8_DTYPES, QuantizedWeight, gguf_type
from scail2.optional import require

# ------------------------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------------------------

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."


class GGUFCheckpoint:
    """Name -> tensor access to a GGUF file (memory-mapped; a tensor is read when asked for)."""

    def __init__(self, path: Path):
        gguf = require("gguf", purpose="reading GGUF weights")
        self.path = path
        try:
            self._reader = gguf.GGUFReader(str(path))
        except (ValueError, OSError, KeyError) as error:
            raise Scail2Error(f"{path}: cannot be read as GGUF ({error}); download the file again") from None
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}
        self._unquantized = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
        for key, entry in self._tensors.items():  # every type checked before anything is read or written
            if entry.tensor_type not in self._unquantized:
                try:
                    gguf_type(entry.tensor_type.name)
                except Scail2Error as error:
                    raise Scail2Error(f"{path}: tensor {key}: {error}") from None

    def keys(self) -> list[str]:
        return list(self._tensors)

    def _orig_shape(self, key: str) -> tuple[int, ...] | None:
        field = self._reader.get_field(ORIG_SHAPE_KEY + key)
        return None if field is None else tuple(int(dim) for dim in field.contents())

    def shape(self, key: str) -> tuple[int, ...]:
        return self._orig_shape(key) or tuple(int(dim) for dim in reversed(self._tensors[key].shape))

    def tensor(self, key: str) -> torch.Tensor | QuantizedWeight:
        entry = self._tensors[key]
        data = torch.from_numpy(np.array(entry.data))  # a copy: the memory map is read-only
        shape = self.shape(key)
        if entry.tensor_type in self._unquantized:
            return data.reshape(shape)
        weight = QuantizedWeight(entry.tensor_type.name, data)
        if entry.tensor_type.name == "BF16" or len(shape) != 2 or self._orig_shape(key) is not None:
            return weight.dequantize(torch.float32).reshape(shape)  # no linear weight in its row layout
        return weight


# ------------------------------------------------------------------------------------------------------------
# ComfyUI fp8 safetensors
# ------------------------------------------------------------------------------------------------------------

MARKER_KEY = "scaled_fp8"
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
# Per-layer entries that carry nothing this implementation uses.
IGNORED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
FP8_SAFETENSORS_DTYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def holds_fp8(path: Path) -> bool:
    """Whether a safetensors file has float8 tensors or ComfyUI's fp8 markers."""
    with safe_open(str(path), framework="pt") as handle:
        if "_quantization_metadata" in (handle.metadata() or {}):
            return True
        return any(
            key.endswith(MARKER_KEY) or handle.get_slice(key).get_dtype() in FP8_SAFETENSORS_DTYPES
            for key in handle.keys()
        )


def _check_quantization_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Refuse layer formats other than fp8 (int8 blocks, fp4, ...) with one line."""
    layers = json.loads(metadata.get("_quantization_metadata", "{}") or "{}").get("layers", {})
    formats = sorted({layer.get("format", "?") for layer in layers.values()} - set(FP8_DTYPES))
    if formats:
        raise Scail2Error(
            f"{path}: quantised with {', '.join(formats)}, which scail2 does not read; use an fp8_scaled, "
            "GGUF or bf16 file"
        )


class ScaledFP8Checkpoint:
    """Name -> tensor access to a ComfyUI fp8 safetensors file; scale entries are folded into the weights."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = safe_open(str(path), framework="pt")
        _check_quantization_metadata(path, self._handle.metadata() or {})
        keys = list(self._handle.keys())
        self._scales = {key.rsplit(".", 1)[0]: key for key in keys if key.endswith(WEIGHT_SCALE_SUFFIXES)}
        skipped = set(self._scales.values())
        self._keys = [key for key in keys if key not in skipped and not _ignored(key)]

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor | QuantizedWeight:
        data = self._handle.get_tensor(key)
        kind = str(data.dtype).removeprefix("torch.")
        if kind not in FP8_DTYPES:
            return data
        module = key.removesuffix(".weight")
        scale_key = self._scales.get(module)
        scale = self._handle.get_tensor(scale_key).float() if scale_key else torch.ones(())
        if data.ndim != 2 or not key.endswith(".weight"):
            return data.float() * scale
        rows = scale.reshape(-1).expand(data.shape[0]) if scale.numel() == 1 else scale.reshape(data.shape[0])
        return QuantizedWeight(kind, data, rows.contiguous())


def _ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES) or key.rsplit(".", 1)[-1] == MARKER_KEY
