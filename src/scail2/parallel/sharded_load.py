"""Load the transformer already sharded: each rank reads only its rows of every weight from the safetensors files.

    transformer = load_sharded_transformer(folder / "transformer", device, torch.bfloat16, loras=["style.safetensors"])

Loading the whole model on every rank and sharding it afterwards needs the whole model in every rank's host RAM
(48 GiB per process for the 14B model in bf16, ~400 GB for 8 ranks). Here the transformer is built on the meta
device (no memory), in the dtypes the whole-model load gives it (the `--dtype`, with the modules of
`_keep_in_fp32_modules` in fp32), and sharded by FSDP2 with the same dtype groups as `shard_transformer`. Each
parameter then gets its local shard only: FSDP2 splits dim 0 into `world` chunks of ceil(rows / world) rows (the
last ones shorter or empty), and the rank reads those rows' bytes (contiguous in the file: safetensors stores
tensors row-major at offsets its JSON header gives) straight into a buffer of their size, which becomes the
shard. (safetensors' own `get_slice` returns a view of a mapping of the whole tensor, which would count the
whole tensor as this rank's.) LoRAs fuse the same way, row by row: rows r0:r1 of
`up @ down` are `up[r0:r1] @ down`, and a full-rank delta's rows are its rows, so each rank adds exactly the
rows of the delta the whole-model fuse adds to its weights.

Not supported, refused in one line: quantised weights (fp8 or GGUF linears, `--quantize`), which load through
their own linear layers and tensor types rather than plain parameters FSDP2 can split, and unfused LoRAs, whose
extra layers would sit outside the shards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from scail2.errors import Scail2Error
from scail2.models.quantize import CONFIG_KEY, WEIGHTS_NAME
from scail2.models.state_dict_io import check_state_dict, kept_in_fp32
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel


@dataclass
class ShardReads:
    """What one rank read while loading: bytes taken from the files (as stored) and the largest single read."""

    bytes_read: int = 0
    largest_read: int = 0

    def add(self, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        self.bytes_read += size
        self.largest_read = max(self.largest_read, size)


def shard_rows(rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows [start, end) of a dim-0 size `rows` that FSDP2 gives `rank` of `world` (torch.chunk's split)."""
    chunk = -(-rows // world) if rows else 0
    start = min(rows, rank * chunk)
    return start, min(rows, start + chunk)


# safetensors dtype names -> torch dtypes (the format's header spells each tensor's dtype so)
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class StoredTensor:
    path: Path
    offset: int  # of the first byte in the file
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """Where each tensor of a safetensors file lies: the file opens with the header's length (8 bytes, little
    endian) and the JSON header, which gives every tensor's dtype, shape and byte range after the header."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Scail2Error(f"{path}: not a safetensors file (unreadable header); download it again") from None
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise Scail2Error(f"{path}: tensor {key} is stored as {entry['dtype']}, which scail2 does not read")
        offset = 8 + length + entry["data_offsets"][0]
        tensors[key] = StoredTensor(path, offset, SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]))
    return tensors


class SafetensorsRows:
    """Row slices of the tensors of a diffusers model folder (one safetensors file, or shards under an index),
    read straight from the file into a buffer of the slice's size: only those bytes are read or allocated."""

    def __init__(self, folder: Path):
        index = folder / f"{WEIGHTS_NAME}.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [f"{WEIGHTS_NAME}.safetensors"]
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise Scail2Error(
                f"{folder}: --shard-weights reads safetensors weights, and {', '.join(missing)} is missing; "
                "re-run the conversion"
            )
        self._tensors: dict[str, StoredTensor] = {}
        for name in files:
            self._tensors.update(read_safetensors_header(folder / name))

    def shapes(self) -> dict[str, torch.Tensor]:
        """Every tensor as an empty meta tensor of its shape (for the strict key check)."""
        return {key: torch.empty(entry.shape, device="meta") for key, entry in self._tensors.items()}

    def rows(self, key: str, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) of tensor `key` (dim 0), in its stored dtype."""
        entry = self._tensors[key]
        out = torch.empty((end - start, *entry.shape[1:]), dtype=entry.dtype)
        row_bytes = out[0:1].numel() * out.element_size() if entry.shape[1:] else out.element_size()
        if out.numel():
            with entry.path.open("rb") as handle:
                handle.seek(entry.offset + start * row_bytes)
                if handle.readinto(out.view(-1).view(torch.uint8).numpy()) != out.numel() * out.element_size():
                    raise Scail2Error(
                        f"{entry.path}: ends inside tensor {key}; the file is truncated, download it again"
                    )
        return out


def check_shardable(folder: Path, config: dict, quantize: str | None, lora_mode: str) -> None:
    """One-line refusals of what row-by-row loading cannot do, before anything is read."""
    kind = config.get("_class_name", SCAIL2Transformer3DModel.__name__)
    if kind != SCAIL2Transformer3DModel.__name__:
        raise Scail2Error(f"{folder}: a {kind} runs in one process; start it without torchrun")
    if quantize is not None or config.get(CONFIG_KEY):
        what = f"--quantize {quantize}" if quantize else "this folder's fp8/GGUF linears"
        raise Scail2Error(
            f"{folder}: --shard-weights loads plain bf16/fp32 weights, not {what}; drop --shard-weights "
            "(quantised weights fit one GPU) or use a bf16 model folder"
        )
    if lora_mode != "fused":
        raise Scail2Error(
            f"--lora-mode {lora_mode} keeps the LoRA layers outside the sharded weights; use --lora-mode fused "
            "with --shard-weights"
        )


def meta_transformer(config: dict, dtype: torch.dtype) -> SCAIL2Transformer3DModel:
    """The transformer of `config` on the meta device, each parameter in the dtype the whole-model load gives it."""
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_config(config)
    keep = tuple(model._keep_in_fp32_modules or ())
    for name, param in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        wanted = torch.float32 if kept_in_fp32(name, keep) else dtype
        setattr(model.get_submodule(owner), leaf, nn.Parameter(torch.empty_like(param, dtype=wanted)))
    return model.eval()


def lora_deltas_by_parameter(model: nn.Module, loras: Sequence[str]) -> dict[str, list[tuple[object, float]]]:
    """parameter -> [(LoraDelta, user scale)] in the order `apply_loras` fuses them, planned (strictly) against the
    meta model."""
    from scail2.models.lora import load_lora_file, lora_deltas, parse_lora_arg

    by_parameter: dict[str, list[tuple[object, float]]] = {}
    for spec in map(parse_lora_arg, loras):
        state_dict, config = load_lora_file(spec.path)
        deltas, _ = lora_deltas(model, state_dict, source=Path(spec.path), adapter_config=config)
        for item in deltas:
            by_parameter.setdefault(item.parameter, []).append((item, spec.scale))
    return by_parameter


@torch.no_grad()
def local_rows(name: str, param, files: SafetensorsRows, deltas: dict, reads: ShardReads) -> torch.Tensor:
    """This rank's rows of parameter `name` (a meta DTensor sharded on dim 0), read from the files, cast to the
    parameter's dtype and with its LoRA deltas fused, on the CPU (as the whole-model load fuses them)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    start, end = shard_rows(param.shape[0], rank, world)
    if param.to_local().shape[0] != end - start:
        raise Scail2Error(f"{name}: FSDP2 holds {param.to_local().shape[0]} rows on rank {rank}, not {end - start}")
    stored = files.rows(name, start, end)
    reads.add(stored)
    rows = stored.to(
        param.dtype
    )  # (a new buffer: no copy when the dtype is kept) the same rounding as the whole-model load's cast
    for item, scale in deltas.get(name, ()):  # as `fuse_deltas`: in fp32, rounded after each delta
        rows = (rows.float() + (scale * item.scale) * item.rows(start, end)).to(param.dtype)
    return rows.contiguous().to(param.device_mesh.device_type)


def fill_local_shards(model: nn.Module, files: SafetensorsRows, deltas: dict, reads: ShardReads) -> None:
    """Give every parameter of a meta model sharded by FSDP2 its local shard, read from the files: the shards
    become the parameters (`load_state_dict(assign=True)`), so nothing but this rank's rows is ever allocated
    (FSDP2 pads the shorter last shards itself)."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, param in model.named_parameters():
        rows = local_rows(name, param, files, deltas, reads)
        state[name] = DTensor.from_local(
            rows, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
        )
    model.load_state_dict(state, strict=True, assign=True)


def load_sharded_transformer(
    folder: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    loras: Sequence[str] = (),
    lora_mode: str = "fused",
    quantize: str | None = None,
    reads: ShardReads | None = None,
) -> SCAIL2Transformer3DModel:
    """The transformer of a model folder's `transformer/`, sharded over all ranks of the process group by FSDP2,
    each rank reading only its rows (`reads` collects what it read). Every rank calls it."""
    from scail2.models.quantize import read_config
    from scail2.parallel.layout import shard_modules

    folder = Path(folder)
    config = read_config(folder)
    check_shardable(folder, config, quantize, lora_mode if loras else "fused")
    files = SafetensorsRows(folder)
    model = meta_transformer(config, dtype)
    expected = {name: param.shape for name, param in model.named_parameters()}
    check_state_dict(files.shapes(), expected, source=folder, what="SCAIL-2 transformer")
    deltas = lora_deltas_by_parameter(model, loras) if loras else {}
    shard_modules(model, torch.device(device))
    fill_local_shards(model, files, deltas, reads if reads is not None else ShardReads())
    return model
