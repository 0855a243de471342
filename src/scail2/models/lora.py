"""Fuse LoRAs into a loaded SCAIL-2 transformer (parameters named as in Wan; docs/architecture.md, "LoRA formats").

Three file layouts are understood:

* official SAT (Bias-Aware DPO, relighting): tensors under `["module"]`, keys
  `model.diffusion_model.transformer.layers.{i}.<m>.lora_layer[.{j}].{down,up}.weight` (and `.diff_b`),
  the fused QKV / KV index j selecting q, k, v. Scale: the user scale only (the official conversion
  is a pure rename).
* Wan / ComfyUI / lightx2v: `[diffusion_model.]X.lora_down.weight`, `X.lora_up.weight`, optional `X.alpha`,
  full-rank `X.diff` / `X.diff_b` (weight / bias) and `blocks.{i}.diff_m` (the block's `modulation`, in the
  step-distill LoRAs). Scale: user scale x alpha / rank when `.alpha` is given.
* peft / diffusers: `[base_model.model.|transformer.]X.lora_A[.adapter].weight`, `X.lora_B...`.
  Scale: user scale x lora_alpha / r (or / sqrt(r) with rsLoRA, per-module `alpha_pattern`) from an
  `adapter_config.json` beside the weights, else the user scale.

X is a Wan module name (`blocks.3.self_attn.q`); diffusers' Wan names (`blocks.3.attn1.to_q`) are
translated. Fusion happens in float32: W += scale * (up @ down), and full-rank `.diff` / `.diff_b` /
`.diff_m` deltas are added to the weight / bias / modulation. Matching is strict: every tensor of the file
must land on a parameter with the right shape, otherwise a one-line Scail2Error lists the first 10 offenders
and their count, and the model is left untouched. The one documented exception: a `patch_embedding`
delta whose input width differs from the model's (the 36-channel vanilla Wan2.1-I2V patch embedding
in distill LoRAs; SCAIL-2 has 20) is skipped with a warning.

`apply_loras(..., fuse=False)` applies the same files without fusing them (`scail2.models.lora_unfused`: the
scale can change and the LoRA can be removed later).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scail2.errors import Scail2Error
from scail2.models.state_dict_io import format_keys, load_tensor_file

logger = logging.getLogger(__name__)

# SAT module (inside transformer.layers.{i}) -> the Wan module of each lora_layer index (fused QKV / KV split).
SAT_LORA_MODULES: dict[str, tuple[str, ...]] = {
    "attention.query_key_value": ("self_attn.q", "self_attn.k", "self_attn.v"),
    "attention.dense": ("self_attn.o",),
    "cross_attention.query": ("cross_attn.q",),
    "cross_attention.key_value": ("cross_attn.k", "cross_attn.v"),
    "cross_attention.dense": ("cross_attn.o",),
    "mlp.dense_h_to_4h": ("ffn.0",),
    "mlp.dense_4h_to_h": ("ffn.2",),
}
SAT_KEY = re.compile(
    r"^model\.diffusion_model\.transformer\.layers\.(?P<layer>\d+)\.(?P<module>.+?)\.lora_layer"
    r"(?:\.(?P<index>\d+))?\.(?P<part>down\.weight|up\.weight|diff_b|diff)$"
)
# `--lora-mode`: fused into the weights (the default: no cost per step), or unfused (hot-swappable, and the only
# way to keep a LoRA at full precision on top of quantised weights).
LORA_MODES = ("fused", "unfused")
# Key prefixes added by ComfyUI, peft and diffusers around the module name.
KEY_PREFIXES = ("diffusion_model.", "base_model.model.", "transformer.")
# Suffix of a LoRA tensor -> the part it holds.
PART_SUFFIXES = (
    (re.compile(r"\.lora_down\.weight$"), "down"),
    (re.compile(r"\.lora_up\.weight$"), "up"),
    (re.compile(r"\.lora_A(?:\.[A-Za-z_][\w-]*)?\.weight$"), "down"),
    (re.compile(r"\.lora_B(?:\.[A-Za-z_][\w-]*)?\.weight$"), "up"),
    (re.compile(r"\.alpha$"), "alpha"),
    (re.compile(r"\.diff_b$"), "diff_b"),
    (re.compile(r"\.diff_m$"), "diff_m"),
    (re.compile(r"\.diff$"), "diff"),
)
# diffusers' WanTransformer3DModel module names -> Wan names (ordered substitutions).
DIFFUSERS_TO_WAN: tuple[tuple[str, str], ...] = (
    (r"\.attn1\.to_out\.0$", ".self_attn.o"),
    (r"\.attn1\.to_([qkv])$", r".self_attn.\1"),
    (r"\.attn1\.norm_([qk])$", r".self_attn.norm_\1"),
    (r"\.attn2\.to_out\.0$", ".cross_attn.o"),
    (r"\.attn2\.to_([qkv])$", r".cross_attn.\1"),
    (r"\.attn2\.add_([kv])_proj$", r".cross_attn.\1_img"),
    (r"\.attn2\.norm_added_k$", ".cross_attn.norm_k_img"),
    (r"\.attn2\.norm_([qk])$", r".cross_attn.norm_\1"),
    (r"^(blocks\.\d+)\.norm2$", r"\1.norm3"),
    (r"\.ffn\.net\.0\.proj$", ".ffn.0"),
    (r"\.ffn\.net\.2$", ".ffn.2"),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out$", "head.head"),
    (r"^condition_embedder\.time_embedder\.linear_1$", "time_embedding.0"),
    (r"^condition_embedder\.time_embedder\.linear_2$", "time_embedding.2"),
    (r"^condition_embedder\.time_proj$", "time_projection.1"),
    (r"^condition_embedder\.text_embedder\.linear_1$", "text_embedding.0"),
    (r"^condition_embedder\.text_embedder\.linear_2$", "text_embedding.2"),
    (r"^condition_embedder\.image_embedder\.norm1$", "img_emb.proj.0"),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj$", "img_emb.proj.1"),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2$", "img_emb.proj.3"),
    (r"^condition_embedder\.image_embedder\.norm2$", "img_emb.proj.4"),
)
# Parameters whose deltas are skipped (with a warning) when only their input width differs.
SKIPPABLE_WIDTH_MISMATCH = ("patch_embedding.weight",)


# ---------------------------------------------------------------------------------------------------
# 1. The CLI argument and loading
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora FILE[:SCALE]` argument."""

    path: Path
    scale: float = 1.0


def parse_lora_arg(text: str) -> LoraSpec:
    """`FILE[:SCALE]` -> LoraSpec. A suffix after the last ':' that is not a number belongs to the path."""
    path, sep, suffix = text.rpartition(":")
    if sep and path:
        try:
            scale = float(suffix)
        except ValueError:
            return LoraSpec(Path(text))
        if not math.isfinite(scale):
            raise Scail2Error(f"--lora {text}: the scale {suffix} is not a finite number; use e.g. {path}:0.8")
        return LoraSpec(Path(path), scale)
    return LoraSpec(Path(text))


def load_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A LoRA's tensors and its peft adapter config (from a peft folder or a sibling adapter_config.json)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "adapter_model.safetensors", path / "adapter_model.bin"]
        weights = next((candidate for candidate in candidates if candidate.is_file()), None)
        if weights is None:
            raise Scail2Error(f"{path}: a LoRA folder needs adapter_model.safetensors; give the LoRA file itself")
        path = weights
    loaded = load_tensor_file(path, what="LoRA file")
    if isinstance(loaded, Mapping) and isinstance(loaded.get("module"), Mapping):
        loaded = loaded["module"]  # SAT / DeepSpeed checkpoint
    if not isinstance(loaded, Mapping) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise Scail2Error(
            f"{path}: is not a LoRA (expected a dict of tensors, or one under 'module'); give a LoRA file"
        )
    config_path = path.with_name("adapter_config.json")
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    return dict(loaded), config


# ---------------------------------------------------------------------------------------------------
# 2. Parsing keys into per-module updates
# ---------------------------------------------------------------------------------------------------


@dataclass
class ModuleUpdate:
    """The LoRA tensors that target one module (or one bare parameter such as `blocks.0.modulation`)."""

    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    sat: bool = False


def _sat_module(match: re.Match[str]) -> str | None:
    targets = SAT_LORA_MODULES.get(match["module"])
    index = int(match["index"]) if match["index"] is not None else 0
    if targets is None or index >= len(targets):
        return None
    return f"blocks.{match['layer']}.{targets[index]}"


def _split_key(key: str) -> tuple[str, str, bool] | None:
    """A key -> (module name, part, is_sat), or None when the key has no known LoRA form."""
    if sat := SAT_KEY.match(key):
        module = _sat_module(sat)
        return (module, sat["part"].split(".")[0], True) if module else None
    for pattern, part in PART_SUFFIXES:
        if pattern.search(key):
            module = pattern.sub("", key)
            for prefix in KEY_PREFIXES:
                module = module.removeprefix(prefix)
            return module, part, False
    return None


def parse_lora_state_dict(state_dict: Mapping[str, torch.Tensor], *, source: Path) -> dict[str, ModuleUpdate]:
    """Group the file's tensors by target module; unknown key forms are a Scail2Error."""
    updates: dict[str, ModuleUpdate] = {}
    unknown = []
    for key, tensor in state_dict.items():
        split = _split_key(key)
        if split is None:
            unknown.append(key)
            continue
        module, part, is_sat = split
        update = updates.setdefault(module, ModuleUpdate(sat=is_sat))
        if part in update.parts:
            raise Scail2Error(
                f"{source}: two tensors give {part} of {module} ({update.keys[-1]}, {key}); fix the LoRA file"
            )
        update.parts[part] = tensor
        update.keys.append(key)
    if unknown:
        raise Scail2Error(
            f"{source}: {len(unknown)} keys are not in a known LoRA layout ({format_keys(unknown)}); "
            "give a Wan/ComfyUI (lora_down/lora_up), peft (lora_A/lora_B) or official SCAIL-2 SAT LoRA"
        )
    return updates


# ---------------------------------------------------------------------------------------------------
# 3. Planning deltas against the model, then fusing
# ---------------------------------------------------------------------------------------------------


@dataclass
class LoraReport:
    """What one LoRA file changed."""

    path: Path
    scale: float
    low_rank: int = 0  # parameters updated by an up @ down product
    full_rank: int = 0  # parameters updated by a .diff / .diff_b
    skipped: list[str] = field(default_factory=list)


def _resolve(module: str, suffix: str, parameters: Mapping[str, nn.Parameter]) -> str | None:
    names = [module]
    translated = module
    for pattern, replacement in DIFFUSERS_TO_WAN:
        translated = re.sub(pattern, replacement, translated)
    if translated != module:
        names.append(translated)
    for name in names:
        for candidate in (f"{name}.{suffix}", name) if suffix == "weight" else (f"{name}.{suffix}",):
            if candidate in parameters:
                return candidate
    return None


def _peft_scale(module: str, rank: int, config: Mapping[str, Any] | None) -> float:
    if not config:
        return 1.0

    def lookup(patterns: Mapping[str, Any], default: Any) -> Any:
        for pattern, value in patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                return value
        return default

    alpha = float(lookup(config.get("alpha_pattern") or {}, config.get("lora_alpha", rank)))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _low_rank_scale(update: ModuleUpdate, module: str, rank: int, config: Mapping[str, Any] | None) -> float:
    if update.sat:
        return 1.0  # the official conversion is a pure rename; the user scale is the only factor
    if "alpha" in update.parts:
        return float(update.parts["alpha"].float().item()) / rank
    if any(".lora_A" in key for key in update.keys):
        return _peft_scale(module, rank, config)
    return 1.0


def _low_rank_shape(update: ModuleUpdate) -> torch.Size:
    return torch.Size((update.parts["up"].shape[0], *update.parts["down"].shape[1:]))


@dataclass
class LoraDelta:
    """One parameter update, computed only when it is fused (a 14B model's deltas would not fit in RAM at once)."""

    parameter: str
    update: ModuleUpdate
    kind: str  # "low_rank" (up @ down), "diff" (weight delta), "diff_b" (bias delta), "diff_m" (modulation)
    scale: float

    def tensor(self) -> torch.Tensor:
        if self.kind != "low_rank":
            return self.update.parts[self.kind].float()
        up, down = self.update.parts["up"], self.update.parts["down"]
        rank = down.shape[0]
        product = up.reshape(up.shape[0], rank).float() @ down.reshape(rank, -1).float()  # [out, in * kernel]
        return product.reshape(_low_rank_shape(self.update))

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) of `tensor()` (dim 0), computed from those rows only (a weight shard's delta)."""
        if self.kind != "low_rank":
            return self.update.parts[self.kind][start:end].float()
        up, down = self.update.parts["up"], self.update.parts["down"]
        rank = down.shape[0]
        product = up.reshape(up.shape[0], rank)[start:end].float() @ down.reshape(rank, -1).float()
        return product.reshape(end - start, *_low_rank_shape(self.update)[1:])


def _requests(
    module: str, update: ModuleUpdate, config: Mapping[str, Any] | None
) -> list[tuple[str, str, torch.Size, float]]:
    """(parameter suffix, kind, delta shape, scale) for each delta the update carries."""
    parts = update.parts
    requests = []
    if "up" in parts:
        rank = parts["down"].shape[0]
        requests.append(("weight", "low_rank", _low_rank_shape(update), _low_rank_scale(update, module, rank, config)))
    if "diff" in parts:
        requests.append(("weight", "diff", parts["diff"].shape, 1.0))
    if "diff_b" in parts:
        requests.append(("bias", "diff_b", parts["diff_b"].shape, 1.0))
    if "diff_m" in parts:  # `blocks.{i}.diff_m`: the block's modulation [1, 6, dim]
        requests.append(("modulation", "diff_m", parts["diff_m"].shape, 1.0))
    return requests


def plan_lora(
    model: nn.Module, updates: Mapping[str, ModuleUpdate], *, source: Path, config: Mapping[str, Any] | None = None
) -> tuple[list[LoraDelta], list[str]]:
    """Match every update to a parameter and check shapes; returns (deltas, skipped notes) or raises."""
    parameters = dict(model.named_parameters())
    deltas, skipped, problems = [], [], []
    for module, update in updates.items():
        if ("up" in update.parts) != ("down" in update.parts):
            problems.append(f"{module} has only lora_{'up' if 'up' in update.parts else 'down'}")
            continue
        for suffix, kind, shape, scale in _requests(module, update, config):
            name = _resolve(module, suffix, parameters)
            if name is None:
                problems.append(f"{module} ({suffix}): no such parameter")
            elif shape != getattr(parameters[name], "quant_shape", parameters[name].shape):  # GGUF: blocks
                if name in SKIPPABLE_WIDTH_MISMATCH and shape[0] == parameters[name].shape[0]:
                    skipped.append(f"{name} {tuple(shape)} vs {tuple(parameters[name].shape)}")
                else:
                    problems.append(f"{name} delta {tuple(shape)} vs {tuple(parameters[name].shape)}")
            else:
                deltas.append(LoraDelta(name, update, kind, scale))
    if problems:
        raise Scail2Error(
            f"{source}: {len(problems)} LoRA entries do not fit the transformer ({format_keys(problems)}); "
            "use a LoRA made for Wan2.1-14B / SCAIL-2"
        )
    return deltas, skipped


@torch.no_grad()
def fuse_deltas(model: nn.Module, deltas: Sequence[LoraDelta], scale: float) -> None:
    """W += scale * delta_scale * delta, computed in float32 and cast back to each parameter's dtype."""
    parameters = dict(model.named_parameters())
    for item in deltas:
        parameter = parameters[item.parameter]
        delta = item.tensor().to(device=parameter.device)
        owner = model.get_submodule(item.parameter.rpartition(".")[0])
        if item.kind != "diff_b" and hasattr(owner, "add_weight_delta"):  # quantised linears (fp8, GGUF)
            owner.add_weight_delta((scale * item.scale) * delta)
            continue
        updated = parameter.detach().float() + (scale * item.scale) * delta
        parameter.copy_(updated.to(parameter.dtype))


def lora_deltas(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: Path, adapter_config: Mapping[str, Any] | None
) -> tuple[list[LoraDelta], list[str]]:
    """One loaded LoRA parsed and planned against `model` (strict), with a warning for each update it skips;
    fused or attached unfused alike."""
    updates = parse_lora_state_dict(state_dict, source=source)
    deltas, skipped = plan_lora(model, updates, source=source, config=adapter_config)
    for note in skipped:
        logger.warning("%s: skipped %s (made for a different input width)", source, note)
    return deltas, skipped


def rank_counts(deltas: Sequence[LoraDelta]) -> dict[str, int]:
    """The `low_rank` and `full_rank` counts of a LoraReport."""
    low_rank = sum(item.kind == "low_rank" for item in deltas)
    return {"low_rank": low_rank, "full_rank": len(deltas) - low_rank}


def apply_lora(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    scale: float = 1.0,
    *,
    source: str | Path = "LoRA",
    adapter_config: Mapping[str, Any] | None = None,
) -> LoraReport:
    """Fuse one LoRA (already loaded) into `model` in place; strict, and all-or-nothing."""
    source = Path(source)
    deltas, skipped = lora_deltas(model, state_dict, source=source, adapter_config=adapter_config)
    fuse_deltas(model, deltas, scale)
    return LoraReport(path=source, scale=scale, skipped=skipped, **rank_counts(deltas))


def apply_loras(model: nn.Module, specs: Sequence[LoraSpec], *, fuse: bool = True) -> list[LoraReport]:
    """Load and apply each `--lora FILE[:SCALE]` in order: fused into the weights (`fuse=True`), or unfused,
    returning `LoraHandle`s (LoraReports with `set_scale` and `remove`, see `scail2.models.lora_unfused`)."""
    if not fuse:
        from scail2.models.lora_unfused import attach_lora

        apply = attach_lora
    else:
        apply = apply_lora
    reports = []
    for spec in specs:
        state_dict, config = load_lora_file(spec.path)
        reports.append(apply(model, state_dict, spec.scale, source=spec.path, adapter_config=config))
    return reports
