"""Safe loading of official checkpoints, strict key checks and atomic output folders.

Official files are PyTorch pickles. They are opened with `torch.load(weights_only=True, mmap=True)`:
no arbitrary code runs and tensors stay on disk until read, so a 65 GB checkpoint converts without
65 GB of RAM. Training checkpoints also hold NumPy RNG state, which `weights_only` refuses unless
NumPy's array reconstruction is allow-listed; it is, under both the NumPy 1 and NumPy 2 module
paths (the pickle records the path of the NumPy that wrote it).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scail2.errors import Scail2Error

# How many key names an error message lists before summarising the rest as a count.
KEYS_SHOWN_IN_ERRORS = 10


def _numpy_safe_globals() -> list[Any]:
    from numpy._core import multiarray

    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [
        multiarray._reconstruct,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def _starts_like_a_pickle(path: Path) -> bool:
    """Legacy (non-zip) torch.save files open with the pickle PROTO opcode."""
    with path.open("rb") as handle:
        return handle.read(1) == b"\x80"


def load_torch_checkpoint(path: str | Path, *, what: str) -> Any:
    """`torch.load` a `.pt`/`.pth` file safely (weights_only), memory-mapped where the format allows.

    `what` names the file's role in error messages (for example "Wan2.1 VAE checkpoint").
    """
    path = Path(path)
    if not path.is_file():
        raise Scail2Error(f"{path}: {what} not found; check the path (or the --official-dir folder)")
    if not zipfile.is_zipfile(path) and not _starts_like_a_pickle(path):
        raise Scail2Error(
            f"{path}: {what} cannot be read (neither a zip nor a pickle); the file is truncated or not a PyTorch "
            "checkpoint, download it again"
        )
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                # Files written by the legacy (non-zip) serializer cannot be memory-mapped.
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise Scail2Error(
            f"{path}: {what} holds objects a weights-only load refuses ({first_line}); use the official file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise Scail2Error(
            f"{path}: {what} cannot be read ({error.__class__.__name__}); the file is truncated or not a PyTorch "
            "checkpoint, download it again"
        ) from None


def load_tensor_file(path: str | Path, *, what: str) -> Any:
    """Load a `.safetensors` file (dict of tensors) or a PyTorch checkpoint (any nesting)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise Scail2Error(f"{path}: {what} not found; check the path")
        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise Scail2Error(f"{path}: {what} cannot be read as safetensors ({error}); download it again") from None
    return load_torch_checkpoint(path, what=what)


def require_tensor_dict(obj: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    """Check that a loaded checkpoint is a flat {name: tensor} dict."""
    if not isinstance(obj, Mapping) or not obj:
        raise Scail2Error(f"{path}: {what} is not a state dict of tensors; give the official file")
    not_tensors = [key for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise Scail2Error(f"{path}: {what} has non-tensor entries ({format_keys(not_tensors)}); give the official file")
    return dict(obj)


def kept_in_fp32(name: str, modules) -> bool:
    """Whether the tensor `name` stays fp32 under `_keep_in_fp32_modules`: diffusers' loader matches an entry
    against whole dotted parts of the name ("norm_q" keeps `blocks.0.self_attn.norm_q.weight`, "norm" nothing)."""
    parts = name.split(".")
    return any(module in parts for module in modules)


def format_keys(keys: list[str] | set[str], limit: int = KEYS_SHOWN_IN_ERRORS) -> str:
    """'a, b, c (and 12 more)' over sorted keys."""
    ordered = sorted(keys)
    shown = ", ".join(ordered[:limit])
    return shown + (f" (and {len(ordered) - limit} more)" if len(ordered) > limit else "")


def check_state_dict(
    converted: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    *,
    source: Path,
    what: str,
) -> None:
    """Strict check of converted tensors against a model's expected names and shapes: one-line Scail2Error.

    Lists the first 10 missing, unexpected and wrongly shaped keys and how many there are in all.
    """
    missing = set(expected) - set(converted)
    unexpected = set(converted) - set(expected)
    misshaped = [
        f"{key} {tuple(converted[key].shape)} vs {tuple(expected[key])}"
        for key in sorted(set(converted) & set(expected))
        if tuple(converted[key].shape) != tuple(expected[key])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {format_keys(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} with the wrong shape: {format_keys(misshaped)}")
    if problems:
        raise Scail2Error(f"{source}: does not match the {what} layout ({'; '.join(problems)}); give the official file")


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; it replaces `out_dir` only when the block succeeds."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise Scail2Error(f"{out_dir}: already exists; delete it or pass --overwrite")
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
