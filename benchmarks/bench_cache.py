"""Step caching (`--cache`) on the bundled demo model: fidelity against the uncached video and the work skipped.

    python -m benchmarks.bench_cache [--caches none fbc:0.05 fbc:0.1] [--steps 10] [--pairs 4]

Each demo pair (scail2.demo: a humanoid, a non-humanoid, a replacement, a multi-character scene) is generated with
the bundled sampler settings and the same seed, uncached and under each cache. Prints a table: PSNR of the cached
video against the uncached one (uint8 frames, all pairs pooled), PSNR of both against the ground truth, the block
evaluations skipped and the generation time (VAE included). On a CPU the demo model's VAE and sampler overhead
outweigh its small blocks, so the time saved is far smaller than the fraction of blocks skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from scail2.animate import load_pipeline
from scail2.bundled import BUNDLED_SAMPLING, bundled_model_dir
from scail2.demo import pick_demo_pairs
from scail2.eval import benchmark, metrics
from scail2.models import step_cache

DEFAULT_CACHES = ["fbc:0.05", "fbc:0.1", "fbc:0.2", "fbc:0.3", "fbc:0.5"]


def generate(pipeline, settings, sample, spec: str, seed: int) -> tuple[np.ndarray, step_cache.BlockEvaluations, float]:
    """One pair's video under the cache `spec`: (uint8 frames, block counts, seconds)."""
    method = benchmark.ModelMethod(pipeline, settings, driving="frames", seed=seed)
    with (
        step_cache.step_cache_enabled(pipeline.transformer, spec),
        step_cache.count_block_evaluations(pipeline.transformer) as counts,
    ):
        start = time.perf_counter()
        video = method(sample)
    return video, counts, time.perf_counter() - start


def pooled_psnr(outputs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    return metrics.psnr(np.concatenate(outputs), np.concatenate(targets))


def measure(pipeline, settings, pairs, specs: list[str], seed: int) -> list[dict]:
    """A row per cache (the uncached run first): fidelity, skipped blocks and seconds over all pairs."""
    targets = [sample.target for _, sample in pairs]
    rows, uncached = [], None
    for spec in ["none", *[s for s in specs if s != "none"]]:
        runs = [generate(pipeline, settings, sample, spec, seed) for _, sample in pairs]
        videos = [video for video, _, _ in runs]
        uncached = videos if uncached is None else uncached
        evaluated = sum(counts.evaluated for _, counts, _ in runs)
        total = sum(counts.forwards * counts.num_layers for _, counts, _ in runs)
        rows.append(
            {
                "cache": spec,
                "psnr_vs_uncached_db": pooled_psnr(videos, uncached),
                "psnr_vs_truth_db": pooled_psnr(videos, targets),
                "blocks_evaluated": evaluated,
                "blocks_skipped": total - evaluated,
                "skipped_fraction": (total - evaluated) / total,
                "seconds": sum(seconds for _, _, seconds in runs),
            }
        )
    return rows


def print_table(rows: list[dict], settings, pairs: int) -> None:
    print(f"bundled demo model, {pairs} demo pairs, {settings.sampler} {settings.steps} steps, same seed")
    print("| cache | PSNR vs uncached dB | PSNR vs truth dB | blocks skipped | skipped | generate s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['cache']} | {row['psnr_vs_uncached_db']:.1f} | {row['psnr_vs_truth_db']:.2f} | "
            f"{row['blocks_skipped']:,} / {row['blocks_skipped'] + row['blocks_evaluated']:,} | "
            f"{100 * row['skipped_fraction']:.0f}% | {row['seconds']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caches", nargs="+", default=DEFAULT_CACHES, help="`--cache` values to compare")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default {BUNDLED_SAMPLING.steps})")
    parser.add_argument("--pairs", type=int, default=4, help="how many demo pairs (at most 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    for spec in args.caches:
        step_cache.parse_step_cache(spec)  # refuse a bad spec before the first video
    torch.set_grad_enabled(False)
    pipeline = load_pipeline(bundled_model_dir(), torch.device("cpu"))
    settings = dataclasses.replace(BUNDLED_SAMPLING, **({"steps": args.steps} if args.steps else {}))
    pairs = pick_demo_pairs()[: args.pairs]
    rows = measure(pipeline, settings, pairs, args.caches, args.seed)
    print_table(rows, settings, len(pairs))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": dataclasses.asdict(settings), "pairs": len(pairs), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
