"""What a model folder holds, read without loading a tensor: each component's config and every weight's name,
shape and stored size.

Weights come from the safetensors headers (8 bytes of length, then JSON) or a GGUF file's tensor table; a folder
of config.json files alone (or a preset name such as "14b") is built on the meta device instead, so the official
model can be planned for before anything is downloaded. The memory plan (`scail2.pipelines.memory_plan`) turns this
inventory into bytes on the GPU under the chosen options.
"""

from __future__ import annotations

import importlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scail2.errors import Scail2Error
from scail2.models.transformer_directanimator import DirectAnimatorTransformer3DModel, is_directanimator_config
from scail2.models.transformer_scail2 import SCAIL2_PRESETS, SCAIL2Transformer3DModel
from scail2.optional import require

# Components in the order a job uses them.
COMPONENTS = ("text_encoder", "image_encoder", "transformer", "vae")

# Bytes per element of the safetensors dtypes.
SAFETENSORS_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
TORCH_TO_SAFETENSORS = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}

# The dtype each component is stored in when its folder has only a config: what `scail2 convert all` writes
# (the transformer in bf16, the umT5 release file's bf16, the fp32 CLIP and VAE files kept as they are).
DEFAULT_STORED_DTYPE = {"transformer": "BF16", "text_encoder": "BF16", "image_encoder": "F32", "vae": "F32"}
TRANSFORMERS_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass(frozen=True)
class TensorInfo:
    """One stored weight: its name, shape, on-disk dtype (safetensors name or GGUF type) and bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    stored_bytes: int

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass
class Component:
    """One model component: its config and weights, where they came from ("safetensors", "gguf" or "config")."""

    name: str
    config: dict
    tensors: list[TensorInfo]
    source: str
    largest_file: int = 0  # bytes of its largest weight file (0 without files)

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tensors)

    @property
    def gguf_type(self) -> str | None:
        """The quantisation most of a GGUF file's weights use (its name for users: "Q4_K"); None otherwise."""
        if self.source != "gguf":
            return None
        counts: dict[str, int] = {}
        for tensor in self.tensors:
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel
        return max(counts, key=counts.get)


@dataclass
class ModelFolder:
    """The components of a model folder (or of a named architecture), with their configs and weight tables."""

    name: str
    components: dict[str, Component] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> ModelFolder:
        """A converted model folder; `path` may also name an architecture preset ("14b", "1.3b")."""
        folder = Path(path)
        if not folder.is_dir():
            if str(path) in REFERENCE_ARCHITECTURES:
                return cls.from_preset(str(path))
            choices = ", ".join(REFERENCE_ARCHITECTURES)
            raise Scail2Error(f"--model {path}: no such folder; give a converted model folder or one of {choices}")
        components = {}
        for name in COMPONENTS:
            config_path = folder / name / "config.json"
            if config_path.is_file():
                components[name] = read_component(name, folder / name)
        for required in ("transformer", "vae"):
            if required not in components:
                raise Scail2Error(f"--model {folder}: {required}/config.json is missing; is this a converted model?")
        return cls(str(folder), components)

    @classmethod
    def from_preset(cls, preset: str) -> ModelFolder:
        """The configs of a named architecture (`REFERENCE_ARCHITECTURES`), weights sized on the meta device."""
        configs = reference_configs(preset)
        components = {name: component_from_config(name, config) for name, config in configs.items()}
        return cls(preset, components)

    @property
    def transformer(self) -> Component:
        return self.components["transformer"]

    @property
    def vae(self) -> Component:
        return self.components["vae"]


# ------------------------------------------------------------------------------------------------------------
# Reading a component folder
# ------------------------------------------------------------------------------------------------------------


def read_component(name: str, folder: Path) -> Component:
    """A component's config and weight table, from its weight files' headers or, without files, its config."""
    config = json.loads((folder / "config.json").read_text())
    safetensors = sorted(folder.glob("*.safetensors"))
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        tensors = [info for path in ggufs for info in gguf_tensors(path)]
        return Component(name, config, tensors, "gguf", max(p.stat().st_size for p in ggufs))
    if safetensors:
        tensors = [info for path in safetensors for info in safetensors_tensors(path)]
        return Component(name, config, tensors, "safetensors", max(p.stat().st_size for p in safetensors))
    return component_from_config(name, config)


def safetensors_tensors(path: Path) -> list[TensorInfo]:
    """The tensor table of a .safetensors file, read from its JSON header only."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        tensors.append(TensorInfo(name, tuple(entry["shape"]), entry["dtype"], end - begin))
    return tensors


def gguf_tensors(path: Path) -> list[TensorInfo]:
    """The tensor table of a .gguf file (the `gguf` package maps the file; no tensor is read)."""
    reader = require("gguf", purpose="reading GGUF weights").GGUFReader(path)
    return [
        # GGUF lists dimensions innermost first; torch's order is the reverse.
        TensorInfo(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), t.tensor_type.name, int(t.n_bytes))
        for t in reader.tensors
    ]


# ------------------------------------------------------------------------------------------------------------
# Components known only by their config: built on the meta device
# ------------------------------------------------------------------------------------------------------------


def transformer_class(config: dict) -> type[SCAIL2Transformer3DModel]:
    """The transformer class a config describes: DirectAnimator's (cue embeddings and per-block cue MLPs, no
    driving-stream embedding) or SCAIL-2's."""
    return DirectAnimatorTransformer3DModel if is_directanimator_config(config) else SCAIL2Transformer3DModel


def meta_module(name: str, config: dict) -> torch.nn.Module:
    """The component's module built from its config on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        if name == "transformer":
            return transformer_class(config).from_config(config)
        if name == "vae":
            diffusers = importlib.import_module("diffusers")
            return getattr(diffusers, config.get("_class_name", "AutoencoderKLWan")).from_config(config)
        transformers = importlib.import_module("transformers")
        model_class = getattr(transformers, config["architectures"][0])
        return model_class(model_class.config_class.from_dict(config))


def stored_dtype(name: str, config: dict) -> str:
    """The dtype a config-only component is assumed stored in (a transformers config may say it)."""
    declared = config.get("torch_dtype") or config.get("dtype")
    return TRANSFORMERS_DTYPE_NAMES.get(str(declared), DEFAULT_STORED_DTYPE[name])


def component_from_config(name: str, config: dict) -> Component:
    """A component without weight files: its parameters from a meta build, sized in its stored dtype."""
    dtype = stored_dtype(name, config)
    module = meta_module(name, config)
    tensors = [
        TensorInfo(key, tuple(p.shape), dtype, p.numel() * SAFETENSORS_BYTES[dtype])
        for key, p in module.named_parameters()
    ]
    return Component(name, {**config, **full_config(module)}, tensors, "config")


def full_config(module: torch.nn.Module) -> dict:
    """Every config field of a built module, defaults included (a preset names only what differs)."""
    config = module.config
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


# ------------------------------------------------------------------------------------------------------------
# The released architecture as configs (for `scail2 plan --model 14b` and tests)
# ------------------------------------------------------------------------------------------------------------

# The Wan2.1 VAE (diffusers' AutoencoderKLWan defaults), umT5-XXL and the open-clip ViT-H/14 visual tower:
# the sizes `scail2 convert all` reads from the release files.
WAN21_VAE_CONFIG = {"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16}
UMT5_XXL_CONFIG = {
    "architectures": ["UMT5EncoderModel"],
    "model_type": "umt5",
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
    "torch_dtype": "bfloat16",
}
CLIP_VIT_H_CONFIG = {
    "architectures": ["CLIPVisionModel"],
    "model_type": "clip_vision_model",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "torch_dtype": "float32",
}
MODEL_INDEX_ENTRIES = {
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "image_encoder": ["transformers", "CLIPVisionModel"],
    "transformer": ["scail2.models.transformer_scail2", "SCAIL2Transformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}
# Architectures `--model` may name instead of a folder: the SCAIL-2 presets with the released encoders and VAE.
REFERENCE_ARCHITECTURES = ("14b", "1.3b")


def reference_configs(preset: str) -> dict[str, dict]:
    """config.json contents of every component of a named architecture (i2v, with both encoders)."""
    if preset not in REFERENCE_ARCHITECTURES:
        raise Scail2Error(f"unknown architecture {preset!r}; choose one of {', '.join(REFERENCE_ARCHITECTURES)}")
    transformer = {"_class_name": "SCAIL2Transformer3DModel", **SCAIL2_PRESETS[preset]}
    return {
        "text_encoder": dict(UMT5_XXL_CONFIG),
        "image_encoder": dict(CLIP_VIT_H_CONFIG),
        "transformer": transformer,
        "vae": dict(WAN21_VAE_CONFIG),
    }


def write_config_folder(out_dir: str | Path, preset: str = "14b") -> Path:
    """A model folder of config.json files only (no weights): what `scail2 plan` needs to size a model."""
    out = Path(out_dir)
    configs = reference_configs(preset)
    for name, config in configs.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    index = {"_class_name": "SCAIL2Pipeline", **MODEL_INDEX_ENTRIES}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------------------
# Naming the transformer's weights
# ------------------------------------------------------------------------------------------------------------

BLOCK_PREFIX = re.compile(r"^blocks\.(\d+)\.")


def block_index(name: str) -> int | None:
    """The transformer block a weight belongs to, or None outside the blocks."""
    match = BLOCK_PREFIX.match(name)
    return int(match.group(1)) if match else None


def is_block_linear(tensor: TensorInfo) -> bool:
    """A linear weight inside a block (q, k, v, o, k_img, v_img, the FFN): what fp8 and GGUF quantise."""
    return block_index(tensor.name) is not None and tensor.name.endswith(".weight") and len(tensor.shape) == 2
