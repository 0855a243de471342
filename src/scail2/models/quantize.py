"""Smaller transformer weights: fp8 and GGUF linears that stay quantised in memory, dequantised one layer at a time.

Only the linears of the transformer blocks are quantised (q/k/v/o of both attentions, k_img/v_img, the FFN):
they hold ~16 B of the 14B model's parameters. Embeddings, norms, modulation and the head keep their dtype.

- `FP8Linear`: float8 e4m3 weights with one fp32 scale per output channel (`weight`, `weight_scale`, `bias`).
  On a GPU with fp8 tensor cores (compute capability >= 8.9) the matmul runs in `torch._scaled_mm` with
  per-token activation scales computed on the fly; elsewhere the weight is dequantised to the activation dtype
  per call. Activations become fp8 only as the scaled matmul's operand.
- `GGUFLinear`: GGUF blocks (Q8_0, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, ...) in diffusers' `GGUFParameter`,
  dequantised per call with diffusers' GGUF dequantisers.

A model folder with such weights says so in its config.json, one entry per quantised linear:

    "quantization": {"method": "fp8", "weights": {"blocks.0.self_attn.q": "float8_e4m3fn", ...}}

(`method` "gguf" maps each linear to its GGML type, e.g. "Q4_K", and the weight holds the raw blocks as uint8
[out, bytes per row]). `load_transformer` reads such folders (and quantises a plain folder while loading it,
`quantize="fp8"`); `SCAIL2Transformer3DModel.from_pretrained` hands folders with the entry to it;
`quantize_transformer` quantises a loaded model in place.

Sections: 1. which linears, 2. fp8 arithmetic, 3. quantised linears, 4. storage of quantised weights,
5. models and folders.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from scail2.errors import Scail2Error
from scail2.models.state_dict_io import check_state_dict, kept_in_fp32
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.optional import require

logger = logging.getLogger(__name__)

CONFIG_KEY = "quantization"
WEIGHTS_NAME = "diffusion_pytorch_model"
# What `--quantize` accepts (at load time; `scail2 convert transformer --dtype fp8` writes the same folders).
QUANTIZE_CHOICES = ("fp8",)
# Bytes per stored weight of each quantised kind, for memory plans (GGML types: bytes per block / values per
# block; fp8 adds one fp32 scale per row, which is negligible). The GGUF types the quality tests cover first.
BYTES_PER_WEIGHT = {
    "float8_e4m3fn": 1.0,
    "float8_e5m2": 1.0,
    "Q8_0": 34 / 32,
    "Q6_K": 210 / 256,
    "Q5_K": 176 / 256,
    "Q4_K": 144 / 256,
    "Q3_K": 110 / 256,
    "Q2_K": 84 / 256,
    "Q5_1": 24 / 32,
    "Q5_0": 22 / 32,
    "Q4_1": 20 / 32,
    "Q4_0": 18 / 32,
}

# ------------------------------------------------------------------------------------------------------------
# 1. Which linears
# ------------------------------------------------------------------------------------------------------------

BLOCK_LINEAR = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02])")


def is_block_linear(module_name: str) -> bool:
    """True for the linears that quantisation replaces (`blocks.3.self_attn.q`, `blocks.3.ffn.2`, ...)."""
    return BLOCK_LINEAR.fullmatch(module_name) is not None


# ------------------------------------------------------------------------------------------------------------
# 2. fp8 arithmetic
# ------------------------------------------------------------------------------------------------------------

FP8_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
FP8 = torch.float8_e4m3fn
# The smallest scale: an all-zero row quantises to zeros instead of dividing by zero.
MIN_SCALE = 1e-12
# "auto": `_scaled_mm` where the device supports it; "scaled_mm" / "dequantize": one path everywhere (tests and
# benchmarks compare them; `torch._scaled_mm` also runs on CPUs).
MATMUL_MODES = ("auto", "scaled_mm", "dequantize")
_matmul_mode = "auto"


@contextlib.contextmanager
def fp8_matmul(mode: str) -> Iterator[None]:
    """Run `FP8Linear`s through one matmul path inside the block."""
    global _matmul_mode
    if mode not in MATMUL_MODES:
        raise ValueError(f"fp8 matmul mode {mode!r} is not one of {', '.join(MATMUL_MODES)}")
    previous, _matmul_mode = _matmul_mode, mode
    try:
        yield
    finally:
        _matmul_mode = previous


def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype = FP8) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> (fp8 [out, in], fp32 scale [out]) with weight ~= fp8 * scale, row by row (absmax scaling)."""
    weight = weight.float()
    scale = (weight.abs().amax(dim=1) / torch.finfo(dtype).max).clamp(min=MIN_SCALE)
    return (weight / scale[:, None]).to(dtype), scale


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp8 [out, in] and fp32 scale [out] -> weight [out, in] in `dtype`."""
    return weight.to(dtype) * scale.to(dtype)[:, None]


def activation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer computes in: autocast's where it is on for x's device, else x's own."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


@functools.cache
def _scaled_mm_works(device_index: int) -> bool:
    """fp8 tensor cores (compute capability >= 8.9) and a torch whose `_scaled_mm` takes rowwise scales on them:
    probed once per device on a 16 x 16 product, so an unsupported combination dequantises instead of failing."""
    if torch.cuda.get_device_capability(device_index) < (8, 9):
        return False
    device = torch.device("cuda", device_index)
    operand = torch.ones(16, 16, device=device).to(FP8)
    row_scales, column_scales = torch.ones(16, 1, device=device), torch.ones(1, 16, device=device)
    try:
        torch._scaled_mm(operand, operand.t(), scale_a=row_scales, scale_b=column_scales, out_dtype=torch.bfloat16)
    except RuntimeError as error:
        logger.warning("fp8 weights are dequantised per layer: _scaled_mm fails on this GPU (%s)", error)
        return False
    return True


def scaled_mm_applies(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether `fp8_scaled_linear` runs for this call: e4m3 weights, a bf16 result, sizes that are multiples of 16
    (the kernel's constraint) and, unless forced, a CUDA device with fp8 tensor cores."""
    if _matmul_mode == "dequantize" or weight.dtype != FP8 or dtype != torch.bfloat16:
        return False
    if weight.shape[0] % 16 or weight.shape[1] % 16:
        return False
    if _matmul_mode == "scaled_mm":
        return True
    return x.is_cuda and _scaled_mm_works(x.device.index if x.device.index is not None else 0)


def fp8_scaled_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [..., in] (bf16) @ (fp8 weight [out, in] * scale [out]).T + bias -> [..., out] bf16, in `_scaled_mm`.

    Each token's activations are scaled by their own absmax into the e4m3 range (rowwise scaling), so one outlier
    token does not flatten the others; the fp8 copy lives only as the matmul's operand.
    """
    fp8_max = torch.finfo(FP8).max
    rows = x.reshape(-1, x.shape[-1])  # [tokens, in]
    # The scales are rounded to the activation dtype first, so the matmul undoes exactly the division done here;
    # the clamp holds what a rounded-down scale lets past e4m3's largest value to it.
    row_scale = (rows.abs().amax(dim=1, keepdim=True).float() / fp8_max).clamp(min=MIN_SCALE).to(rows.dtype)
    rows_fp8 = (rows / row_scale).clamp(-fp8_max, fp8_max).to(FP8)
    out = torch._scaled_mm(
        rows_fp8, weight.t(), scale_a=row_scale.float(), scale_b=scale[None, :].float(), out_dtype=torch.bfloat16
    )  # [tokens, out]
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], -1)


# ------------------------------------------------------------------------------------------------------------
# 3. Quantised linears
# ------------------------------------------------------------------------------------------------------------


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    """A parameter of an inference-only layer (quantised weights take no gradient)."""
    return nn.Parameter(tensor, requires_grad=False)


class FP8Linear(nn.Module):
    """A linear layer whose weight is stored as float8 (e4m3, or e5m2 from some files) with per-row fp32 scales.

    The input may come in any float dtype; the output has the activation dtype (`activation_dtype`).
    `compute_dtype` is the dtype the model casts activations to before this layer: that of the bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        storage_dtype: torch.dtype = FP8,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._compute_dtype = compute_dtype
        self.weight = _frozen(torch.empty(out_features, in_features, dtype=storage_dtype, device=device))
        self.weight_scale = _frozen(torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = _frozen(torch.zeros(out_features, dtype=compute_dtype, device=device)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> FP8Linear:
        """Quantise an `nn.Linear` (its bias keeps its dtype)."""
        module = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            compute_dtype=linear.weight.dtype,
            device=linear.weight.device,
        )
        module.weight.data, module.weight_scale.data = quantize_fp8(linear.weight)
        if linear.bias is not None:
            module.bias.data = linear.bias.detach().clone()
        return module

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.bias.dtype if self.bias is not None else self._compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = activation_dtype(x)
        x = x.to(dtype)
        if scaled_mm_applies(x, self.weight, dtype):
            return fp8_scaled_linear(x, self.weight, self.weight_scale, self.bias)
        weight = dequantize_fp8(self.weight, self.weight_scale, dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(dtype))

    @torch.no_grad()
    def add_weight_delta(self, delta: torch.Tensor) -> None:
        """W += delta (a fused LoRA), requantised per row."""
        weight = dequantize_fp8(self.weight, self.weight_scale, torch.float32) + delta.to(self.weight.device)
        self.weight.data, self.weight_scale.data = quantize_fp8(weight, self.weight.dtype)

    def _apply(self, fn, recurse=True):
        # A model-wide cast (`model.to(torch.bfloat16)`, `.float()`) must not widen the fp8 weight or round the
        # fp32 scales; device moves apply to them as to everything else.
        def keep_storage_dtype(tensor: torch.Tensor) -> torch.Tensor:
            moved = fn(tensor)
            if (tensor is self.weight or tensor is self.weight_scale) and moved.dtype != tensor.dtype:
                return tensor.to(moved.device)
            return moved

        return super()._apply(keep_storage_dtype, recurse)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"storage={self.weight.dtype}"
        )


def _gguf_utils():
    """diffusers' GGUF support (it imports the `gguf` package)."""
    require("gguf", purpose="GGUF weights")
    from diffusers.quantizers.gguf import utils

    return utils


class GGUFLinear(nn.Module):
    """A linear layer whose weight holds GGUF blocks (diffusers' `GGUFParameter`, uint8 [out, bytes per row]).

    The weight is dequantised per call with diffusers' GGUF dequantisers, to the activation dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        quant_type: str,
        bias: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        utils = _gguf_utils()
        qtype = gguf_type(quant_type)
        block_size, type_size = utils.GGML_QUANT_SIZES[qtype]
        self.in_features, self.out_features = in_features, out_features
        self._compute_dtype = compute_dtype
        blocks = torch.empty(out_features, in_features // block_size * type_size, dtype=torch.uint8, device=device)
        self.weight = utils.GGUFParameter(blocks, quant_type=qtype)
        self.bias = _frozen(torch.zeros(out_features, dtype=compute_dtype, device=device)) if bias else None

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.bias.dtype if self.bias is not None else self._compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = activation_dtype(x)
        weight = _gguf_utils().dequantize_gguf_tensor(self.weight).to(dtype)
        return F.linear(x.to(dtype), weight, None if self.bias is None else self.bias.to(dtype))

    def add_weight_delta(self, delta: torch.Tensor) -> None:
        raise Scail2Error(
            f"a LoRA cannot be fused into GGUF {self.weight.quant_type.name} weights; use --lora with a bf16 or "
            "fp8 model folder (`scail2 convert transformer --dtype fp8`)"
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"quant_type={self.weight.quant_type.name}"
        )


def gguf_type(name: str):
    """A GGML type name ("Q4_K") -> diffusers-supported `gguf.GGMLQuantizationType`, or a one-line error."""
    utils = _gguf_utils()
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, name, None)
    if qtype not in utils.SUPPORTED_GGUF_QUANT_TYPES:
        supported = ", ".join(sorted(t.name for t in utils.SUPPORTED_GGUF_QUANT_TYPES))
        raise Scail2Error(f"GGUF type {name} is not supported; use one of {supported}")
    return qtype


# ------------------------------------------------------------------------------------------------------------
# 4. Storage of quantised weights
# ------------------------------------------------------------------------------------------------------------


@dataclass
class QuantizedWeight:
    """A linear weight as a file stores it: fp8 values with per-row scales, or GGUF blocks."""

    kind: str  # an fp8 dtype name ("float8_e4m3fn") or a GGML type name ("Q4_K")
    data: torch.Tensor  # fp8 [out, in], or uint8 GGUF blocks [out, bytes per row]
    scale: torch.Tensor | None = None  # fp8 only: fp32 [out]

    @property
    def is_fp8(self) -> bool:
        return self.kind in FP8_DTYPES

    @property
    def shape(self) -> tuple[int, int]:
        """The logical [out, in] shape."""
        if self.is_fp8:
            return tuple(self.data.shape)
        block_size, type_size = _gguf_utils().GGML_QUANT_SIZES[gguf_type(self.kind)]
        return self.data.shape[0], self.data.shape[1] // type_size * block_size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.is_fp8:
            return dequantize_fp8(self.data, self.scale, torch.float32).to(dtype)
        utils = _gguf_utils()
        return utils.dequantize_gguf_tensor(utils.GGUFParameter(self.data, quant_type=gguf_type(self.kind))).to(dtype)

    def stored(self, module: str) -> list[tuple[str, torch.Tensor]]:
        """What a folder holds for the linear `module`: its weight and, for fp8, `weight_scale`."""
        if self.is_fp8:
            return [(f"{module}.weight", self.data), (f"{module}.weight_scale", self.scale.float())]
        return [(f"{module}.weight", self.data)]


@dataclass(frozen=True)
class Storage:
    """How tensors are stored, in a folder or a loaded model."""

    dtype: torch.dtype | None = None  # plain floating tensors; None keeps the source's dtype
    keep_fp32: tuple[str, ...] = ()  # names in `_keep_in_fp32_modules`: their tensors stay fp32
    fp8: bool = False  # block linears that the source holds unquantised become fp8

    def cast(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor
        if self.dtype is None:
            return tensor.to(torch.bfloat16) if tensor.dtype in FP8_DTYPES.values() else tensor
        return tensor.to(torch.float32 if kept_in_fp32(name, self.keep_fp32) else self.dtype)


def stored_tensors(
    name: str, tensor: torch.Tensor | QuantizedWeight, storage: Storage, quantized: dict[str, str]
) -> list[tuple[str, torch.Tensor]]:
    """The stored form of one model tensor; quantised block linears are recorded in `quantized` (module -> kind).

    A quantised block linear stays as it is; a quantised tensor anywhere else is dequantised (those are small);
    with `storage.fp8` an unquantised block linear weight becomes fp8.
    """
    module, _, leaf = name.rpartition(".")
    block_weight = leaf == "weight" and is_block_linear(module)
    if isinstance(tensor, QuantizedWeight):
        if block_weight:
            quantized[module] = tensor.kind
            return tensor.stored(module)
        tensor = tensor.dequantize(torch.float32)
    if block_weight and storage.fp8:
        quantized[module] = "float8_e4m3fn"
        return QuantizedWeight("float8_e4m3fn", *quantize_fp8(tensor)).stored(module)
    return [(name, storage.cast(name, tensor).contiguous())]


def quantization_entry(quantized: dict[str, str]) -> dict:
    """The config.json entry of a model with quantised linears (module -> fp8 dtype or GGML type name)."""
    fp8 = [kind in FP8_DTYPES for kind in quantized.values()]
    method = "fp8" if all(fp8) else "gguf" if not any(fp8) else "mixed"
    return {"method": method, "weights": dict(quantized)}


# ------------------------------------------------------------------------------------------------------------
# 5. Models and folders
# ------------------------------------------------------------------------------------------------------------


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _quantized_shell(linear: nn.Linear, kind: str) -> nn.Module:
    """An empty (meta) quantised linear of `linear`'s size."""
    size = (linear.in_features, linear.out_features)
    if kind in FP8_DTYPES:
        return FP8Linear(*size, linear.bias is not None, storage_dtype=FP8_DTYPES[kind], device="meta")
    return GGUFLinear(*size, kind, linear.bias is not None, device="meta")


def build_model(config: dict, state: dict[str, torch.Tensor], quantized: dict[str, str]) -> SCAIL2Transformer3DModel:
    """The transformer of `config` holding `state` (assigned, not copied), its quantised linears swapped in."""
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_config({k: v for k, v in config.items() if k != CONFIG_KEY})
    for module_name, kind in quantized.items():
        replace_module(model, module_name, _quantized_shell(model.get_submodule(module_name), kind))
        if kind not in FP8_DTYPES:
            weight = f"{module_name}.weight"
            state[weight] = _gguf_utils().GGUFParameter(state[weight], quant_type=gguf_type(kind))
    model.load_state_dict(state, strict=True, assign=True)
    if quantized:
        model.register_to_config(**{CONFIG_KEY: quantization_entry(quantized)})
    return model.eval()


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise Scail2Error(
            f"{folder}: no config.json; pass a transformer folder written by `scail2 convert transformer`"
        )
    return json.loads(path.read_text())


def quantized_folder(path: str | Path, subfolder: str | None = None) -> Path | None:
    """The local model folder at `path` if its config.json has a quantisation entry, else None."""
    folder = Path(path) / (subfolder or "")
    config = folder / "config.json"
    return folder if config.is_file() and CONFIG_KEY in json.loads(config.read_text()) else None


class FolderCheckpoint:
    """Name -> tensor access to a model folder's safetensors shards; quantised linears come as `QuantizedWeight`."""

    def __init__(self, folder: Path, quantized: dict[str, str]):
        self.path = folder
        self._quantized = quantized
        index = folder / f"{WEIGHTS_NAME}.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
        files = files or [f"{WEIGHTS_NAME}.safetensors"]
        if not all((folder / name).is_file() for name in files):
            raise Scail2Error(f"{folder}: weights missing ({', '.join(files)}); re-run the conversion")
        self._handles = {}
        for name in files:
            handle = safe_open(str(folder / name), framework="pt")
            self._handles.update({key: handle for key in handle.keys()})

    def _quantized_kind(self, key: str) -> str | None:
        module, _, leaf = key.rpartition(".")
        return self._quantized.get(module) if leaf == "weight" else None

    def keys(self) -> list[str]:
        scales = {f"{m}.weight_scale" for m, kind in self._quantized.items() if kind in FP8_DTYPES}
        return [key for key in self._handles if key not in scales]

    def shape(self, key: str) -> tuple[int, ...]:
        if self._quantized_kind(key) is None:
            return tuple(self._handles[key].get_slice(key).get_shape())
        return self.tensor(key).shape

    def tensor(self, key: str) -> torch.Tensor | QuantizedWeight:
        kind = self._quantized_kind(key)
        data = self._handles[key].get_tensor(key)
        if kind is None:
            return data
        scale_key = key.removesuffix("weight") + "weight_scale"
        scale = self._handles[scale_key].get_tensor(scale_key) if kind in FP8_DTYPES else None
        return QuantizedWeight(kind, data, scale)


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_config({k: v for k, v in config.items() if k != CONFIG_KEY})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_tensors(checkpoint, keys, storage: Storage) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of `keys` in its stored form, and the quantised linears (module -> kind)."""
    state, quantized = {}, {}
    for key in keys:
        state.update(stored_tensors(key, checkpoint.tensor(key), storage, quantized))
    return state, quantized


def load_transformer(
    folder: str | Path, torch_dtype: torch.dtype | None = None, quantize: str | None = None
) -> SCAIL2Transformer3DModel:
    """Load a transformer folder: plain (diffusers' loader), or with quantised linears kept as they are stored.

    `torch_dtype` sets the dtype of the unquantised tensors (None: as stored; fp32-kept modules stay fp32).
    `quantize="fp8"` quantises the block linears of a plain folder tensor by tensor while loading, so the
    unquantised model is never in memory whole.
    """
    folder = Path(folder)
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise Scail2Error(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    config = read_config(folder)
    quantized = dict((config.get(CONFIG_KEY) or {}).get("weights", {}))
    if not quantized and quantize is None:
        return SCAIL2Transformer3DModel.from_pretrained(folder, torch_dtype=torch_dtype)
    checkpoint = FolderCheckpoint(folder, quantized)
    shapes = {key: torch.empty(checkpoint.shape(key), device="meta") for key in checkpoint.keys()}
    check_state_dict(shapes, expected_shapes(config), source=folder, what="SCAIL-2 transformer")
    keep_fp32 = tuple(SCAIL2Transformer3DModel._keep_in_fp32_modules or ())
    state, stored = read_tensors(checkpoint, checkpoint.keys(), Storage(torch_dtype, keep_fp32, quantize == "fp8"))
    return build_model(config, state, stored)


@torch.no_grad()
def quantize_transformer(model: SCAIL2Transformer3DModel, method: str = "fp8") -> SCAIL2Transformer3DModel:
    """Replace the block linears of a loaded model by `FP8Linear`s, in place (each layer's weight is freed as it
    goes, so memory peaks at one layer above the model)."""
    if method not in QUANTIZE_CHOICES:
        raise Scail2Error(f"--quantize {method!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    quantized = dict((model.config.get(CONFIG_KEY) or {}).get("weights", {}))
    for name, module in list(model.named_modules()):
        if is_block_linear(name) and isinstance(module, nn.Linear):
            replace_module(model, name, FP8Linear.from_linear(module))
            quantized[name] = "float8_e4m3fn"
    model.register_to_config(**{CONFIG_KEY: quantization_entry(quantized)})
    return model


def pipeline_components(model_dir: str | Path, quantize: str | None, torch_dtype: torch.dtype | None = None) -> dict:
    """Components that `SCAIL2Pipeline.from_pretrained(model_dir, **components)` takes instead of loading them:
    for `--quantize`, the transformer quantised while it loads; otherwise none (folders that are quantised on
    disk load through `SCAIL2Transformer3DModel.from_pretrained`)."""
    if quantize is None:
        return {}
    return {"transformer": load_transformer(Path(model_dir) / "transformer", torch_dtype, quantize)}
