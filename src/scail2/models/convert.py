"""Convert official and third-party SCAIL-2 transformer checkpoints into a diffusers-format folder.

Input layouts, detected from the key names (docs/architecture.md, "Checkpoint layouts"):
- "sat": the release training checkpoint (`model/1/fsdp2_rank_0000_checkpoint.pt`), tensors under `module` with
  the `model.diffusion_model.` prefix and fused qkv / kv projections;
- "wan": Wan-style state dicts as upstream's converter and ComfyUI write them (optionally prefixed);
- "mlx": the MLX bf16 layout (`.layers.N.` inside sequentials, channels-last convolution weights).

Conversion is a rename table plus two named tensor operations (split a fused projection, move the channel axis
of a convolution). Tensors stream one at a time from a memory-mapped source into size-capped safetensors
shards, so a 65.6 GB fp32 checkpoint converts in far less RAM than its size. Loading is strict.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scail2.errors import Scail2Error
from scail2.models.quantize import (
    CONFIG_KEY,
    QUANTIZE_CHOICES,
    QuantizedWeight,
    Storage,
    build_model,
    quantization_entry,
    stored_tensors,
)
from scail2.models.quantized_files import GGUFCheckpoint, ScaledFP8Checkpoint, holds_fp8
from scail2.models.state_dict_io import atomic_output_dir, check_state_dict, load_torch_checkpoint
from scail2.models.transformer_scail2 import SCAIL2_PRESETS, SCAIL2Transformer3DModel

WEIGHTS_NAME = "diffusion_pytorch_model"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# `--dtype fp8`: block linears in fp8 with per-row scales (`scail2.models.quantize`), everything else bf16.
CONVERT_DTYPES = (*DTYPES, "fp8")

# ------------------------------------------------------------------------------------------------------------
# Rename tables
# ------------------------------------------------------------------------------------------------------------

SAT_PREFIX = "model.diffusion_model."

# (SAT pattern after the prefix, Wan target(s)). A list of targets splits the tensor into that many equal
# chunks along dim 0 (fused projections).
SAT_TO_WAN: list[tuple[str, str | list[str]]] = [
    (r"mixins\.adaln_layer\.adaLN_modulations\.(\d+)", r"blocks.\1.modulation"),
    (r"mixins\.adaln_layer\.query_layernorm_list\.(\d+)\.weight", r"blocks.\1.self_attn.norm_q.weight"),
    (r"mixins\.adaln_layer\.key_layernorm_list\.(\d+)\.weight", r"blocks.\1.self_attn.norm_k.weight"),
    (r"mixins\.adaln_layer\.cross_query_layernorm_list\.(\d+)\.weight", r"blocks.\1.cross_attn.norm_q.weight"),
    (r"mixins\.adaln_layer\.cross_key_layernorm_list\.(\d+)\.weight", r"blocks.\1.cross_attn.norm_k.weight"),
    (r"mixins\.adaln_layer\.clip_feature_key_layernorm_list\.(\d+)\.weight", r"blocks.\1.cross_attn.norm_k_img.weight"),
    (
        r"mixins\.adaln_layer\.clip_feature_key_value_list\.(\d+)\.(weight|bias)",
        [r"blocks.\1.cross_attn.k_img.\2", r"blocks.\1.cross_attn.v_img.\2"],
    ),
    (r"mixins\.final_layer\.adaLN_modulation", "head.modulation"),
    (r"mixins\.final_layer\.linear\.(weight|bias)", r"head.head.\1"),
    (r"mixins\.patch_embed\.proj\.(weight|bias)", r"patch_embedding.\1"),
    (r"mixins\.patch_embed\.proj_pose\.(weight|bias)", r"patch_embedding_pose.\1"),
    (r"mixins\.patch_embed\.proj_mask\.(weight|bias)", r"patch_embedding_mask.\1"),
    (
        r"transformer\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)",
        [r"blocks.\1.self_attn.q.\2", r"blocks.\1.self_attn.k.\2", r"blocks.\1.self_attn.v.\2"],
    ),
    (r"transformer\.layers\.(\d+)\.attention\.dense\.(weight|bias)", r"blocks.\1.self_attn.o.\2"),
    (r"transformer\.layers\.(\d+)\.cross_attention\.query\.(weight|bias)", r"blocks.\1.cross_attn.q.\2"),
    (
        r"transformer\.layers\.(\d+)\.cross_attention\.key_value\.(weight|bias)",
        [r"blocks.\1.cross_attn.k.\2", r"blocks.\1.cross_attn.v.\2"],
    ),
    (r"transformer\.layers\.(\d+)\.cross_attention\.dense\.(weight|bias)", r"blocks.\1.cross_attn.o.\2"),
    (r"transformer\.layers\.(\d+)\.post_cross_attention_layernorm\.(weight|bias)", r"blocks.\1.norm3.\2"),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_h_to_4h\.(weight|bias)", r"blocks.\1.ffn.0.\2"),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_4h_to_h\.(weight|bias)", r"blocks.\1.ffn.2.\2"),
    (r"time_embed\.([02])\.(weight|bias)", r"time_embedding.\1.\2"),
    (r"adaln_projection\.1\.(weight|bias)", r"time_projection.1.\1"),
    (r"text_embedding\.([02])\.(weight|bias)", r"text_embedding.\1.\2"),
    (r"clip_proj\.proj\.([0134])\.(weight|bias)", r"img_emb.proj.\1.\2"),
]
_SAT_RULES = [(re.compile(pattern + r"$"), target) for pattern, target in SAT_TO_WAN]

# Prefixes that Wan-style files may carry (ComfyUI, upstream wrappers), longest first.
WAN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")

# ------------------------------------------------------------------------------------------------------------
# Reading checkpoints lazily
# ------------------------------------------------------------------------------------------------------------


def _find_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: itself, or under `module` / `state_dict` / `model`."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("module", "state_dict", "model"):
            if key in obj:
                return _find_state_dict(obj[key], path)
    raise Scail2Error(
        f"{path}: no tensor state dict found (looked at the top level and under module/state_dict/"
        "model); pass a SCAIL-2 transformer checkpoint"
    )


class LazyCheckpoint:
    """Name -> tensor access to a .safetensors / .pt / .pth file without reading every tensor up front."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise Scail2Error(f"{self.path}: transformer checkpoint not found; pass the checkpoint file with --input")
        if self.path.suffix == ".safetensors":
            self._handle = safe_open(str(self.path), framework="pt")
            self._shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
            self._tensors = None
        else:
            self._tensors = self._load_torch()
            self._shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def _load_torch(self) -> dict[str, torch.Tensor]:
        return _find_state_dict(load_torch_checkpoint(self.path, what="transformer checkpoint"), self.path)

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def tensor(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key) if self._tensors is None else self._tensors[key]


def open_checkpoint(path: str | os.PathLike) -> LazyCheckpoint | GGUFCheckpoint | ScaledFP8Checkpoint:
    """The reader for a checkpoint file: GGUF, ComfyUI fp8 safetensors, or any other safetensors / torch file."""
    path = Path(path)
    if not path.is_file():
        raise Scail2Error(f"{path}: transformer checkpoint not found; pass the checkpoint file with --input")
    if path.suffix == ".gguf":
        return GGUFCheckpoint(path)
    if path.suffix == ".safetensors" and holds_fp8(path):
        return ScaledFP8Checkpoint(path)
    return LazyCheckpoint(path)


# ------------------------------------------------------------------------------------------------------------
# Format detection and key mapping
# ------------------------------------------------------------------------------------------------------------


def detect_format(keys: list[str], shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """'sat', 'mlx' or 'wan' from the key names."""
    if any(k.startswith(SAT_PREFIX + "mixins.") or k.startswith(SAT_PREFIX + "transformer.layers.") for k in keys):
        return "sat"
    stripped = [_strip_wan_prefix(k) for k in keys]
    if any(re.search(r"(^|\.)layers\.\d+\.", k) for k in stripped):
        return "mlx"
    return "wan"


def _strip_wan_prefix(key: str) -> str:
    for prefix in WAN_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


# A plan entry: source key -> [(target key, operation)], operation(tensor) -> tensor.
Plan = dict[str, list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _chunk(index: int, parts: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def take(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.chunk(parts, dim=0)[index]

    return take


def _channels_first(tensor: torch.Tensor) -> torch.Tensor:
    """MLX convolution weight (O, kT, kH, kW, I) -> PyTorch (O, I, kT, kH, kW)."""
    return tensor.permute(0, 4, 1, 2, 3) if tensor.ndim == 5 else tensor


def plan_sat(keys: list[str]) -> tuple[Plan, list[str]]:
    plan, unknown = {}, []
    for key in keys:
        name = key[len(SAT_PREFIX) :] if key.startswith(SAT_PREFIX) else key
        for pattern, target in _SAT_RULES:
            match = pattern.match(name)
            if match:
                targets = target if isinstance(target, list) else [target]
                ops = [_identity] if len(targets) == 1 else [_chunk(i, len(targets)) for i in range(len(targets))]
                plan[key] = [(match.expand(t), op) for t, op in zip(targets, ops)]
                break
        else:
            unknown.append(key)
    return plan, unknown


def plan_wan(keys: list[str]) -> tuple[Plan, list[str]]:
    return {key: [(_strip_wan_prefix(key), _identity)] for key in keys}, []


def plan_mlx(keys: list[str]) -> tuple[Plan, list[str]]:
    plan = {}
    for key in keys:
        name = re.sub(r"(^|\.)layers\.(\d+)\.", r"\1\2.", _strip_wan_prefix(key))
        plan[key] = [(name, _channels_first if name.startswith("patch_embedding") else _identity)]
    return plan, []


PLANNERS = {"sat": plan_sat, "wan": plan_wan, "mlx": plan_mlx}


def check_plan(plan: Plan, unknown: list[str], checkpoint, expected: dict[str, tuple[int, ...]]) -> None:
    """Strict loading, before any tensor is read: every model key exactly once with the right shape."""
    produced = {name: torch.empty(checkpoint.shape(name), device="meta") for name in unknown}
    for source, targets in plan.items():
        for target, op in targets:
            produced[target] = op(torch.empty(checkpoint.shape(source), device="meta"))
    check_state_dict(
        produced,
        expected,
        source=checkpoint.path,
        what="SCAIL-2 transformer (check --config: a preset or the upstream config JSON)",
    )


# ------------------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------------------

UPSTREAM_CONFIG_FIELDS = {
    "model_type",
    "patch_size",
    "text_len",
    "in_dim",
    "mask_dim",
    "dim",
    "ffn_dim",
    "freq_dim",
    "text_dim",
    "out_dim",
    "num_heads",
    "num_layers",
    "qk_norm",
    "cross_attn_norm",
    "eps",
}
# This implementation's own architecture fields, accepted beside upstream's (upstream hard-codes them).
EXTENSION_CONFIG_FIELDS = {
    "image_dim",
    "rope_theta",
    "rope_offset",
    "driving_scale",
    "driving_injection",
    "driving_signal",
}
# Upstream fields that carry no information for this implementation.
IGNORED_UPSTREAM_FIELDS = {"_class_name", "_diffusers_version", "pose_rope_shift"}


def resolve_config(config: str) -> dict:
    """A preset name or the path of an upstream-style config JSON -> constructor keywords."""
    if config in SCAIL2_PRESETS:
        return dict(SCAIL2_PRESETS[config])
    path = Path(config)
    if not path.is_file():
        raise Scail2Error(f"{config}: neither a preset ({', '.join(SCAIL2_PRESETS)}) nor a config JSON file")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Scail2Error(f"{path}: not valid JSON ({error}); pass upstream's config-14b.json or a preset") from None
    window = raw.pop("window_size", [-1, -1])
    if list(window) != [-1, -1]:
        raise Scail2Error(f"{path}: window_size {window} is not supported (SCAIL-2 uses global attention, [-1, -1])")
    known = UPSTREAM_CONFIG_FIELDS | EXTENSION_CONFIG_FIELDS
    unknown = sorted(set(raw) - known - IGNORED_UPSTREAM_FIELDS)
    if unknown:
        raise Scail2Error(
            f"{path}: unknown config field(s) {', '.join(unknown)}; expected upstream's "
            f"constructor keywords ({', '.join(sorted(UPSTREAM_CONFIG_FIELDS))})"
        )
    return {k: (tuple(v) if k == "patch_size" else v) for k, v in raw.items() if k in known}


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


def _shard_groups(items: Iterator[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    shard, size = {}, 0
    for name, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = tensor
        size += nbytes
    if shard:
        yield shard


def _write_shards(tensors: Iterator[tuple[str, torch.Tensor]], folder: Path, max_shard_bytes: int) -> None:
    """Write size-capped shards as they fill, then rename them to the diffusers `-0000i-of-0000N` names."""
    written, weight_map, total = [], {}, 0
    for index, shard in enumerate(_shard_groups(tensors, max_shard_bytes)):
        name = f"part-{index:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        written.append((name, list(shard)))
        total += sum(t.numel() * t.element_size() for t in shard.values())
        shard.clear()
    if len(written) == 1:
        (folder / written[0][0]).rename(folder / f"{WEIGHTS_NAME}.safetensors")
        return
    for index, (name, keys) in enumerate(written):
        final = f"{WEIGHTS_NAME}-{index + 1:05d}-of-{len(written):05d}.safetensors"
        (folder / name).rename(folder / final)
        weight_map.update({k: final for k in keys})
    index_json = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / f"{WEIGHTS_NAME}.safetensors.index.json").write_text(json.dumps(index_json, indent=2))


def _plain(tensor: torch.Tensor | QuantizedWeight) -> torch.Tensor:
    return tensor.dequantize(torch.float32) if isinstance(tensor, QuantizedWeight) else tensor


def planned_tensors(
    checkpoint, plan: Plan, storage: Storage, quantized: dict[str, str], progress: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each model tensor in its stored form, read one source tensor at a time; quantised block linears stay
    quantised and are recorded in `quantized` (module -> kind)."""
    from tqdm import tqdm

    for source, targets in tqdm(plan.items(), desc="convert", disable=not progress, unit="tensor"):
        tensor = checkpoint.tensor(source)
        for target, op in targets:
            # split / re-laid-out tensors are dequantised first (no quantised file uses those layouts)
            value = tensor if op is _identity else op(_plain(tensor))
            yield from stored_tensors(target, value, storage, quantized)


def _planned_checkpoint(input_path, expected: dict[str, tuple[int, ...]]):
    checkpoint = open_checkpoint(input_path)
    plan, unknown = PLANNERS[detect_format(checkpoint.keys())](checkpoint.keys())
    check_plan(plan, unknown, checkpoint, expected)
    return checkpoint, plan


def _meta_model(kwargs: dict) -> SCAIL2Transformer3DModel:
    with torch.device("meta"):
        return SCAIL2Transformer3DModel(**kwargs)


def convert_transformer(
    input_path: str | os.PathLike,
    config: str,
    out_dir: str | os.PathLike,
    dtype: str = "bf16",
    max_shard_size_gb: float = 5.0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert one transformer checkpoint into a folder that `SCAIL2Transformer3DModel.from_pretrained` loads.

    `dtype` stores the unquantised tensors (fp32-kept modules stay fp32); "fp8" stores the block linears in fp8
    with per-row scales and the rest in bf16. Block linears that the input holds quantised (GGUF, ComfyUI fp8)
    are kept as they are, whatever `dtype` says; config.json then lists them under `quantization`.
    """
    if dtype not in CONVERT_DTYPES:
        raise Scail2Error(f"--dtype {dtype!r} is not one of {', '.join(CONVERT_DTYPES)}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise Scail2Error(f"{out}: already exists; delete it or pass --overwrite")
    model = _meta_model(resolve_config(config))
    checkpoint, plan = _planned_checkpoint(input_path, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    storage = Storage(DTYPES.get(dtype, torch.bfloat16), tuple(model._keep_in_fp32_modules or ()), dtype == "fp8")
    quantized: dict[str, str] = {}
    # clone(): each output tensor owns its memory (no views into the mapped file or a fused tensor)
    tensors = (
        (name, tensor.contiguous().clone())
        for name, tensor in planned_tensors(checkpoint, plan, storage, quantized, progress)
    )
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        _write_shards(tensors, tmp, int(max_shard_size_gb * 1024**3))
        if quantized:
            model.register_to_config(**{CONFIG_KEY: quantization_entry(quantized)})
        model.save_config(tmp)
    return out


def load_transformer_file(
    input_path: str | os.PathLike,
    config: str,
    torch_dtype: torch.dtype | None = torch.bfloat16,
    quantize: str | None = None,
) -> SCAIL2Transformer3DModel:
    """A transformer straight from one checkpoint file (GGUF, ComfyUI fp8, or any layout `convert` reads),
    without writing a folder: quantised block linears stay quantised in memory (`quantize="fp8"` quantises
    the others), unquantised tensors take `torch_dtype` (fp32-kept modules stay fp32)."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise Scail2Error(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    model = _meta_model(resolve_config(config))
    checkpoint, plan = _planned_checkpoint(input_path, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    storage = Storage(torch_dtype, tuple(model._keep_in_fp32_modules or ()), quantize == "fp8")
    quantized: dict[str, str] = {}
    state = dict(planned_tensors(checkpoint, plan, storage, quantized))
    return build_model(dict(model.config), state, quantized)
