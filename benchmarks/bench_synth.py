"""Throughput of `scail2 synth`: pairs per second at 128x128 with 17 frames, by stage and by worker count.

    .venv/bin/python benchmarks/bench_synth.py [--pairs 200] [--size 128] [--frames 17] [--workers 1,2]

Prints a table: rendering alone and PNG encoding alone (one process), then whole `write_dataset` runs
(render + encode + tar shards) with 1 and 2 worker processes. Besides wall-clock pairs/s it prints the CPU
seconds spent per pair (all processes), so a run on a busy machine can still be judged: on k idle cores the
expected rate is about k / (CPU s per pair). The aim is >= 20 pairs/s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import encode_sample, write_dataset


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pools)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(stage: str, workers: int, pairs: int, work) -> tuple:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = work()
    return (stage, workers, pairs, time.perf_counter() - wall, _cpu_seconds() - cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts for the full runs")
    args = parser.parse_args()
    generator = ProceduralPairGenerator(SynthConfig(args.size, args.size, args.frames))
    generator.generate(0)  # warm imports and caches
    count = min(args.pairs, 60)
    rows = []
    row, samples = _measure("render only", 1, count, lambda: [generator.generate(i) for i in range(count)])
    rows.append(row)
    row, records = _measure("PNG encode only", 1, count, lambda: [encode_sample(s) for s in samples])
    rows.append(row)
    payload = sum(len(v) for r in records for k, v in r.items() if k != "__key__") / count
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as out:
            row, _ = _measure(
                "write_dataset (render+encode+tar)",
                workers,
                args.pairs,
                lambda out=out, workers=workers: write_dataset(
                    generator, out, args.pairs, shard_size=64, workers=workers, progress=False
                ),
            )
            rows.append(row)
    load = os.getloadavg()
    print(
        f"\nscail2 synth at {args.size}x{args.size}x{args.frames}: {payload / 1024:.0f} KiB per pair on disk; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    print(f"| {'stage':<34} | workers | pairs | wall s | pairs/s | CPU ms/pair |")
    print(f"|{'-' * 36}|---------|-------|--------|---------|-------------|")
    for stage, workers, pairs, wall, cpu in rows:
        print(
            f"| {stage:<34} | {workers:>7} | {pairs:>5} | {wall:>6.2f} | {pairs / wall:>7.1f} | "
            f"{1000 * cpu / pairs:>11.1f} |"
        )
    stage, workers, pairs, wall, cpu = rows[-1]
    print(
        f"\n10,000 pairs with {workers} workers: about {10_000 * wall / pairs / 60:.1f} minutes at this rate; "
        f"{cpu / pairs * 10_000 / 60 / workers:.1f} minutes on {workers} idle cores"
    )


if __name__ == "__main__":
    main()
