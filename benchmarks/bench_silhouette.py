"""What the silhouette score and the motion-following correlations give the ground truth, its VAE round trip,
the truth played backwards and copy-reference: the calibration of `scail2.eval.metrics` on held-out pairs.

    python -m benchmarks.bench_silhouette [--pairs 16] [--split test] [--model FOLDER] [--tolerance 2]

The ground truth must score >= 0.99 and its VAE round trip (measured against the plate's round trip) >= 0.9;
the reversed truth must score well below. The old IoU (raw plate, no tolerance) is printed beside them.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from scail2.eval import benchmark, metrics


def _score(output, sample, plate, own_plate, tolerance):
    character = sample.target_ids > 0
    foreground = metrics.foreground_from_plate(output, own_plate, benchmark.SILHOUETTE_THRESHOLD)
    overlap = metrics.silhouette_overlap(foreground, character, tolerance)
    scores = benchmark.pair_metrics(output, sample, plate, own_plate)
    return {"f": overlap["f"], "p": overlap["precision"], "r": overlap["recall"], **scores}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", help="model folder whose VAE makes the round trip (default: the bundled one)")
    parser.add_argument("--tolerance", type=int, default=metrics.SILHOUETTE_TOLERANCE)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from scail2.animate import load_pipeline
    from scail2.bundled import bundled_model_dir

    codec = load_pipeline(args.model or bundled_model_dir(), torch.device("cpu")).codec
    rows = {name: [] for name in ("truth", "vae round trip", "truth reversed", "copy reference")}
    for sample in benchmark.split_pairs(args.split, args.pairs):
        plate = benchmark.target_plate(sample.metadata)
        vae_plate = benchmark.vae_round_trip(codec, plate)
        outputs = {
            "truth": (sample.target, plate),
            "vae round trip": (benchmark.vae_round_trip(codec, sample.target), vae_plate),
            "truth reversed": (sample.target[::-1].copy(), plate),
            "copy reference": (benchmark.copy_reference(sample), plate),
        }
        for name, (output, own_plate) in outputs.items():
            rows[name].append(_score(output, sample, plate, own_plate, args.tolerance))
    columns = ("f", "p", "r", "iou", "path_x", "path_y", "extent_h", "extent_w")
    print(f"{args.pairs} pairs of the {args.split} split, tolerance {args.tolerance} px\n")
    print("| output | silhouette F | precision | recall | old IoU | path x | path y | extent h | extent w |")
    print("|---|" + "---:|" * len(columns))
    for name, scores in rows.items():
        means = [np.nanmean([s[c] for s in scores]) for c in columns]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    worst = min(s["f"] for s in rows["truth"])
    print(f"\nlowest ground-truth score of a pair: {worst:.3f}")


if __name__ == "__main__":
    main()
