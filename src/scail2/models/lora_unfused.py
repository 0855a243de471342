"""Unfused LoRAs: applied beside the base weights, so a LoRA's scale can change, or the LoRA can be removed, while
the model stays loaded (hot-swap); after removal the model is bit-exactly what it was.

    handles = apply_loras(transformer, [LoraSpec(Path("distill.safetensors"))], fuse=False)
    handles[0].set_scale(0.6)  # takes effect on the next forward
    handles[0].remove()  # weights, buffers, hooks and outputs are the originals again

Files, key layouts, scales and the strict matching are those of `scail2.models.lora` (the same parse and plan);
only the last step differs. Each delta is applied where it is cheapest to undo:

* On a linear layer (`nn.Linear`, or any layer with `in_features` / `out_features`, such as the fp8 and GGUF
  linears of quantised models): one forward hook adds `s * up(down(x))` for a low-rank pair, `s * x @ diff.T`
  for a full-rank weight delta and `s * diff_b` for a bias delta to the layer's output. The base weight is never
  written, so quantised weights stay quantised and the LoRA keeps its own precision. The LoRA tensors are
  non-persistent buffers of the layer, in the layer's compute dtype: `.to()` and diffusers' offloading move
  them with the layer, and `state_dict()` does not change.
* On any other parameter (norm weights and biases, `modulation`, the patch-embedding convolutions), which are
  all small: the parameter is rewritten in place as `original + sum of s_i * delta_i` (computed in float32)
  from a kept copy of the original, which the last `remove()` copies back.

diffusers' PEFT integration (`load_lora_adapter`, `set_adapters`, `delete_adapters`) covers only the first case
and is not used: PEFT wraps `nn.Linear` / `nn.Conv*` layers but not the quantised linears, has no slot for the
full-rank norm and modulation deltas that step-distill LoRAs carry, and renames every wrapped weight
(`base_layer.weight`) while an adapter is attached.

Attach LoRAs before enabling CPU offloading (`load_pipeline` does): in-place parameters are patched wherever
they live when the LoRA is attached.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scail2.errors import Scail2Error
from scail2.models.lora import LoraDelta, LoraReport, lora_deltas, rank_counts
from scail2.models.transformer_scail2 import compute_dtype

# Attributes set on the modules a LoRA touches (plain Python state, outside parameters and the state dict).
TERMS = "_scail2_lora_terms"  # linear layer: {handle id: _LinearTerm}
HOOK = "_scail2_lora_hook"  # linear layer: the forward hook that adds the terms
PATCHES = "_scail2_lora_patches"  # any module: {parameter name: _Patch}
_handle_ids = itertools.count()


# ---------------------------------------------------------------------------------------------------
# 1. Linear layers: a forward hook adds each LoRA's output
# ---------------------------------------------------------------------------------------------------


def is_linear(module: nn.Module) -> bool:
    """Layers whose output is x @ weight.T + bias, quantised linears included (they keep these two fields)."""
    return isinstance(module, nn.Linear) or (hasattr(module, "in_features") and hasattr(module, "out_features"))


@dataclass
class _LinearTerm:
    """What one LoRA adds to one linear layer's output; its tensors are the layer's buffers `{prefix}_{kind}`."""

    handle: LoraHandle
    prefix: str
    low_rank_scale: float | None = None  # the file's alpha / rank; None without a low-rank pair
    kinds: list[str] = field(default_factory=list)  # buffer suffixes: down, up, diff, diff_b

    def buffer(self, layer: nn.Module, kind: str) -> torch.Tensor:
        return getattr(layer, f"{self.prefix}_{kind}")

    def output(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The LoRA's addition to `layer(x)` [..., out]."""
        scale, total = self.handle.scale, 0
        if self.low_rank_scale is not None:
            down, up = self.buffer(layer, "down"), self.buffer(layer, "up")
            hidden = F.linear(x.to(down.dtype), down) * (scale * self.low_rank_scale)  # [..., rank]
            total = F.linear(hidden, up)
        if "diff" in self.kinds:
            diff = self.buffer(layer, "diff")
            total = total + F.linear(x.to(diff.dtype), diff) * scale
        if "diff_b" in self.kinds:
            total = total + self.buffer(layer, "diff_b") * scale
        return total


def _add_lora_outputs(layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    x = args[0]
    for term in getattr(layer, TERMS).values():
        output = output + term.output(layer, x).to(output.dtype)
    return output


def _linear_term(handle: LoraHandle, layer: nn.Module) -> _LinearTerm:
    """This LoRA's term on `layer`, created (with the layer's hook, once) on first use."""
    if not hasattr(layer, TERMS):
        setattr(layer, TERMS, {})
        setattr(layer, HOOK, layer.register_forward_hook(_add_lora_outputs))
    terms = getattr(layer, TERMS)
    if handle.id not in terms:
        terms[handle.id] = _LinearTerm(handle, prefix=f"scail2_lora{handle.id}")
    return terms[handle.id]


def _attach_linear(handle: LoraHandle, layer: nn.Module, item: LoraDelta) -> None:
    term = _linear_term(handle, layer)
    dtype, device = compute_dtype(layer), layer.weight.device
    parts = item.update.parts
    if item.kind == "low_rank":
        rank = parts["down"].shape[0]
        tensors = {"down": parts["down"].reshape(rank, -1), "up": parts["up"].reshape(-1, rank)}
        term.low_rank_scale = item.scale
    else:
        tensors = {item.kind: parts[item.kind]}  # diff [out, in] or diff_b [out]
    for kind, tensor in tensors.items():
        layer.register_buffer(f"{term.prefix}_{kind}", tensor.to(device=device, dtype=dtype), persistent=False)
        term.kinds.append(kind)


def _detach_linear(handle: LoraHandle, layer: nn.Module) -> None:
    terms = getattr(layer, TERMS)
    term = terms.pop(handle.id)
    for kind in term.kinds:
        delattr(layer, f"{term.prefix}_{kind}")
    if not terms:
        getattr(layer, HOOK).remove()
        delattr(layer, HOOK)
        delattr(layer, TERMS)


# ---------------------------------------------------------------------------------------------------
# 2. Other parameters: rewritten from a kept original
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Patch:
    """A parameter's original value and the deltas of the LoRAs patched into it."""

    original: torch.Tensor
    # (handle id, kind) -> (handle, float32 delta, the file's scale); one LoRA may carry two kinds (diff, low rank)
    deltas: dict[tuple[int, str], tuple[LoraHandle, torch.Tensor, float]] = field(default_factory=dict)


@torch.no_grad()
def _rewrite(parameter: torch.Tensor, patch: _Patch) -> None:
    """parameter = original + sum of scale * file scale * delta (float32), or exactly the original without deltas."""
    if not patch.deltas:
        parameter.copy_(patch.original)
        return
    total = patch.original.to(parameter.device, torch.float32)
    for handle, delta, file_scale in patch.deltas.values():
        total = total + (handle.scale * file_scale) * delta.to(parameter.device)
    parameter.copy_(total.to(parameter.dtype))


def _attach_patch(handle: LoraHandle, owner: nn.Module, name: str, item: LoraDelta) -> None:
    if not hasattr(owner, PATCHES):
        setattr(owner, PATCHES, {})
    patches = getattr(owner, PATCHES)
    parameter = getattr(owner, name)
    patch = patches.setdefault(name, _Patch(original=parameter.detach().clone()))
    patch.deltas[handle.id, item.kind] = (handle, item.tensor(), item.scale)
    _rewrite(parameter, patch)


def _detach_patch(handle: LoraHandle, owner: nn.Module, name: str) -> None:
    patches = getattr(owner, PATCHES)
    patch = patches[name]
    patch.deltas = {key: value for key, value in patch.deltas.items() if key[0] != handle.id}
    _rewrite(getattr(owner, name), patch)
    if not patch.deltas:
        del patches[name]
    if not patches:
        delattr(owner, PATCHES)


# ---------------------------------------------------------------------------------------------------
# 3. Handles and attaching
# ---------------------------------------------------------------------------------------------------


def _check_scale(scale: float, source: Path) -> float:
    if not math.isfinite(scale):
        raise Scail2Error(f"{source}: the LoRA scale {scale} is not a finite number; use e.g. 0.8")
    return float(scale)


@dataclass
class LoraHandle(LoraReport):
    """An unfused LoRA: what it changed (a LoraReport) plus `set_scale` and `remove`."""

    model: nn.Module | None = field(default=None, repr=False)
    id: int = field(default_factory=lambda: next(_handle_ids), repr=False)
    removed: bool = False
    linears: list[str] = field(default_factory=list, repr=False)  # layer names with a term of this LoRA
    patched: list[tuple[str, str]] = field(default_factory=list, repr=False)  # (module, parameter) names

    def set_scale(self, scale: float) -> None:
        """The user scale (the file's own alpha / rank still applies); effective on the next forward."""
        if self.removed:
            raise Scail2Error(f"{self.path}: this LoRA was removed; attach it again to use it")
        self.scale = _check_scale(scale, self.path)
        for owner, name in self.patched:
            module = self.model.get_submodule(owner)
            _rewrite(getattr(module, name), getattr(module, PATCHES)[name])

    def remove(self) -> None:
        """Take the LoRA out; once every LoRA is removed the model's weights and outputs are the originals."""
        if self.removed:
            return
        for layer in self.linears:
            _detach_linear(self, self.model.get_submodule(layer))
        for owner, name in self.patched:
            _detach_patch(self, self.model.get_submodule(owner), name)
        self.removed = True


def attach_lora(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    scale: float = 1.0,
    *,
    source: str | Path = "LoRA",
    adapter_config: Mapping[str, Any] | None = None,
) -> LoraHandle:
    """Apply one LoRA (already loaded) to `model` without fusing it; strict and all-or-nothing, as `apply_lora`."""
    source = Path(source)
    deltas, skipped = lora_deltas(model, state_dict, source=source, adapter_config=adapter_config)
    handle = LoraHandle(
        path=source, scale=_check_scale(scale, source), skipped=skipped, model=model, **rank_counts(deltas)
    )
    for item in deltas:
        owner_name, _, name = item.parameter.rpartition(".")
        owner = model.get_submodule(owner_name)
        if is_linear(owner) and name in ("weight", "bias"):
            _attach_linear(handle, owner, item)
            if owner_name not in handle.linears:
                handle.linears.append(owner_name)
        else:
            _attach_patch(handle, owner, name, item)
            if (owner_name, name) not in handle.patched:
                handle.patched.append((owner_name, name))
    return handle
