"""Host memory of loading the transformer whole on every rank against loading it sharded (`--shard-weights`,
scail2.parallel.sharded_load), over N CPU ranks (gloo).

A random bf16 model of a preset (fp32-kept modules in fp32) is saved in shards under an index, then every rank
loads it, once whole (`from_pretrained`, as each rank did before sharded loading) and once sharded, each in a
fresh forked process. Per rank the table gives the bytes it read from the files, the bytes its parameters hold,
the peak bytes of the tensors the load created (`LiveTensorBytes`) and the growth of its resident memory once
every weight has been used (the whole load keeps weights stored in the load dtype memory-mapped from the files
until then).

    python -m benchmarks.bench_sharded_load [--ranks 2,4] [--dim 1024 --layers 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import tempfile
from pathlib import Path

import torch

from benchmarks.common import random_transformer

MIB = 2**20


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rank_main(rank: int, world: int, port: int, folder: str, sharded: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
    from scail2.parallel import ParallelLayout
    from scail2.parallel.sharded_load import ShardReads, load_sharded_transformer
    from scail2.pipelines.live_bytes import LiveTensorBytes

    layout = ParallelLayout.from_environment("cpu")
    reads, before = ShardReads(), resident_bytes()
    with torch.no_grad(), LiveTensorBytes("cpu") as tracker:
        if sharded:
            model = load_sharded_transformer(folder, torch.device("cpu"), torch.bfloat16, reads=reads)
        else:
            model = SCAIL2Transformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    for tensor in local:  # weights memory-mapped from the files become resident when first used: use them
        tensor.float().sum()
    grown = resident_bytes() - before
    row = {
        "rank": rank,
        "read": reads.bytes_read if sharded else None,
        "held": sum(t.numel() * t.element_size() for t in local),
        "peak": tracker.peak,
        "resident": grown,
    }
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if layout.is_main:
        Path(out).write_text(json.dumps(rows))
    layout.finish()


def run_ranks(world: int, folder: Path, sharded: bool) -> list[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = folder.parent / f"rows-{world}-{sharded}.json"
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=rank_main, args=(rank, world, port, str(folder), sharded, str(out)))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        raise SystemExit(f"a rank failed ({[p.exitcode for p in processes]})")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,4", help="comma-separated process counts")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--ffn-dim", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "transformer"
        model = random_transformer(
            "tiny",
            torch.device("cpu"),
            torch.bfloat16,
            dim=args.dim,
            ffn_dim=args.ffn_dim,
            num_heads=8,
            num_layers=args.layers,
            text_dim=args.dim,
            image_dim=args.dim,
        )
        whole = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(folder, max_shard_size="64MB")
        del model
        print(f"model: {whole / MIB:.1f} MiB of bf16/fp32 weights in {len(list(folder.glob('*.safetensors')))} files")
        print("| ranks | load | rank | read MiB | held MiB | peak created MiB | resident growth MiB |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for world in map(int, args.ranks.split(",")):
            for sharded in (False, True):
                for row in run_ranks(world, folder, sharded):
                    read = "-" if row["read"] is None else f"{row['read'] / MIB:.1f}"
                    print(
                        f"| {world} | {'sharded' if sharded else 'whole'} | {row['rank']} | {read} | "
                        f"{row['held'] / MIB:.1f} | {row['peak'] / MIB:.1f} | {row['resident'] / MIB:.1f} |"
                    )


if __name__ == "__main__":
    main()
