"""What each rank runs in the sharded-loading tests: the transformer loaded whole and loaded row by row
(`scail2.parallel.sharded_load`), compared by rank 0; every rank reports the bytes it read and held."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from scail2.models.lora import apply_loras, parse_lora_arg
from scail2.models.transformer_scail2 import MASK_CHANNELS, SCAIL2Transformer3DModel
from scail2.parallel import ParallelLayout
from scail2.parallel.sharded_load import ShardReads, load_sharded_transformer
from scail2.pipelines.live_bytes import LiveTensorBytes
from tests.models.helpers import tiny_model
from tests.parallel.workers import transformer_inputs

# dim-0 sizes 36, 58, 64, 216 and the one-row modulation: unequal shares over 2 and 4 ranks
SIZES = dict(dim=36, ffn_dim=58)


def write_model(folder: Path, stored: torch.dtype, max_shard_size: str | None = None) -> Path:
    """A tiny transformer folder stored in `stored`, in one file or (`max_shard_size`) shards under an index."""
    model = tiny_model(seed=3, **SIZES).to(stored)
    model.save_pretrained(folder, max_shard_size=max_shard_size or "10GB")
    return folder


def write_lora(path: Path) -> Path:
    """A Wan-format LoRA touching low-rank linear and convolution weights, a full-rank weight (diff), a bias
    (diff_b) and a modulation (diff_m)."""
    g = torch.Generator().manual_seed(11)
    dim, ffn, rank = SIZES["dim"], SIZES["ffn_dim"], 3
    tensors = {
        "blocks.0.self_attn.q.lora_down.weight": torch.randn(rank, dim, generator=g),
        "blocks.0.self_attn.q.lora_up.weight": torch.randn(dim, rank, generator=g),
        "blocks.0.self_attn.q.alpha": torch.tensor(2.0),
        "blocks.1.ffn.0.lora_down.weight": torch.randn(rank, dim, generator=g),
        "blocks.1.ffn.0.lora_up.weight": torch.randn(ffn, rank, generator=g),
        "blocks.1.ffn.0.diff_b": torch.randn(ffn, generator=g),
        "blocks.0.diff_m": torch.randn(1, 6, dim, generator=g),
        "blocks.1.self_attn.o.diff": torch.randn(dim, dim, generator=g),
        "patch_embedding_mask.lora_down.weight": torch.randn(rank, MASK_CHANNELS, 1, 2, 2, generator=g),
        "patch_embedding_mask.lora_up.weight": torch.randn(dim, rank, 1, 1, 1, generator=g),
    }
    save_file(tensors, str(path))
    return path


def stored_bytes(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                piece = handle.get_slice(key)
                total += int(torch.Size(piece.get_shape()).numel()) * (4 if piece.get_dtype() == "F32" else 2)
    return total


def sharded_load_worker(rank: int, world: int, out: str, folder: str, dtype: str, loras: list[str]) -> None:
    layout = ParallelLayout.from_environment("cpu")
    weights = getattr(torch, dtype)
    reads = ShardReads()
    with torch.no_grad(), LiveTensorBytes("cpu") as tracker:
        model = load_sharded_transformer(folder, torch.device("cpu"), weights, loras=loras, reads=reads)
    held = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    whole = SCAIL2Transformer3DModel.from_pretrained(folder, torch_dtype=weights).eval()
    if loras:
        apply_loras(whole, [parse_lora_arg(spec) for spec in loras])
    expected = dict(whole.named_parameters())
    with torch.no_grad():  # (the root's weights stay gathered after a forward: compare before it)
        weight_difference = max(
            (p.full_tensor().float() - expected[name].float()).abs().max().item()
            for name, p in model.named_parameters()
        )
    dtypes_match = all(p.dtype == expected[name].dtype for name, p in model.named_parameters())
    inputs = transformer_inputs(whole, 3, 8, 12, extra_refs=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=weights == torch.bfloat16):
        together, alone = model(**inputs).sample, whole(**inputs).sample
    mine = {
        "read": reads.bytes_read,
        "largest_read": reads.largest_read,
        "held": held,
        "peak_created": tracker.peak,
        "whole": sum(p.numel() * p.element_size() for p in whole.parameters()),
        "largest_whole": max(p.numel() * p.element_size() for p in whole.parameters()),
    }
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if layout.is_main:
        result = {
            "output_difference": (together - alone).abs().max().item(),
            "weight_difference": weight_difference,
            "dtypes_match": dtypes_match,
            "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "stored": stored_bytes(Path(folder)),
            "ranks": everyone,
        }
        Path(out).write_text(json.dumps(result))
    layout.finish()
