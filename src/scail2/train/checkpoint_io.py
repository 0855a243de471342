"""Checkpoint files that load without unpickling: tensors in safetensors, everything else in JSON.

A run folder may come from anyone (a shared disk, a download), so nothing in it may run code when it is read.
Pickle-based formats do (torch.save, and torch.distributed.checkpoint's `.metadata`); safetensors and JSON do
not. A checkpoint folder `RUN/checkpoints/step-NNNNNNNN/` holds:

    model.safetensors      the trained weights, full tensors (gathered from every FSDP2 process)
    ema.safetensors        their EMA (absent without EMA)
    optimizer.safetensors  the optimiser's per-parameter state, keys "<param>/<state key>"
    optimizer.json         its param groups (learning rate, betas, ...; `params` as stored) and non-tensor state
    trainer_state.json     step, config and what else the trainer records (`scail2.train.schedule`)

Folders of the older torch.distributed.checkpoint layout are refused in one line, never read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scail2.data.format import atomic_path, read_json, write_json_atomic
from scail2.errors import Scail2Error

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_GROUPS = "optimizer.json"
PICKLED_LAYOUT = ".metadata"  # torch.distributed.checkpoint's index, read with pickle


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({name: value.detach().cpu().contiguous() for name, value in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as CPU tensors, or a one-line Scail2Error for a missing, truncated or foreign file."""
    if not path.is_file():
        raise Scail2Error(
            f"{path} is missing: the checkpoint is incomplete; delete its folder to resume from the one before"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Scail2Error(
            f"{path} is not a readable safetensors file ({first}); delete its checkpoint folder to resume from "
            "the one before"
        ) from None


def check_loadable(folder: Path) -> None:
    """Refuse a checkpoint that only the pickle-based layout can read (written by an older scail2, or planted)."""
    if not (folder / MODEL_FILE).exists() and (folder / PICKLED_LAYOUT).exists():
        raise Scail2Error(
            f"{folder} is a torch.distributed.checkpoint folder, which loads by unpickling and may run code; it is "
            f"not read: resume from a checkpoint with {MODEL_FILE} or start a new run folder"
        )


# Optimiser state -----------------------------------------------------------------------------------------------


def save_optimizer(state: dict, folder: Path) -> None:
    """An optimiser state dict (`{"state": {param: {key: value}}, "param_groups": [...]}`, params as names or ids)
    as OPTIMIZER_TENSORS + OPTIMIZER_GROUPS."""
    tensors, scalars = {}, {}
    for param, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}/{key}"] = value
            else:
                scalars[f"{param}/{key}"] = value
    save_tensors(tensors, folder / OPTIMIZER_TENSORS)
    write_json_atomic(folder / OPTIMIZER_GROUPS, {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(folder: Path) -> dict:
    """The state dict `save_optimizer` wrote; state keys take the type (name or id) the param groups list."""
    tensors = load_tensors(folder / OPTIMIZER_TENSORS)
    hint = "the checkpoint is incomplete or damaged; delete its folder to resume from the one before"
    doc = read_json(folder / OPTIMIZER_GROUPS, missing_hint=hint, corrupt_hint=hint)
    if not isinstance(doc, dict) or not isinstance(doc.get("param_groups"), list):
        raise Scail2Error(f"{folder / OPTIMIZER_GROUPS} has no param_groups list; {hint}")
    by_param: dict[str, dict] = {}
    for key, value in {**doc.get("scalars", {}), **tensors}.items():
        param, _, entry = key.rpartition("/")
        by_param.setdefault(param, {})[entry] = value
    params = [param for group in doc["param_groups"] for param in group.get("params", [])]
    state = {param: by_param[str(param)] for param in params if str(param) in by_param}
    return {"state": state, "param_groups": doc["param_groups"]}


def check_shapes(
    stored: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: Path, complete: bool = True
) -> None:
    """One line naming the first tensor whose shape differs, or that one side lacks (another architecture);
    `complete=False` checks only the stored tensors (a LoRA checkpoint holds the adapters alone)."""
    for name in sorted(set(stored) | (set(expected) if complete else set())):
        have = tuple(stored[name].shape) if name in stored else None
        want = tuple(expected[name]) if name in expected else None
        if have != want:
            raise Scail2Error(
                f"{source}: {name} is {have or 'absent'} in the checkpoint but {want or 'absent'} in this model: the "
                "run was trained with another architecture; resume with its own config or choose another --out"
            )


def json_roundtrip(value):
    """`value` as it reads back from JSON (tuples become lists), for comparing with what a run recorded."""
    return json.loads(json.dumps(value, default=str))
