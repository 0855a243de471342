"""DirectAnimator's pose-cue filter: a cheap proxy sweep of colour, filter and cutoff on procedural MotionPairs.

    python -m benchmarks.bench_cue_filter [--pairs 24] [--size 128] [--frames 17]

The pose cue should carry motion and drop identity. Each animation pair holds the same motion performed by two
identities (driving and target, same placement), so per setting the table prints, averaged over pairs and frames:

    identity gap  mean |cue(driving_t) - cue(target_t)| / 255        same motion, other identity: lower is better
    motion gap    mean |cue(target_t) - cue(target_t+k)| / 255       same identity, k frames apart: higher is better
    ratio         motion gap / identity gap                           how much more the cue tells motions apart

This is a proxy measured without training (the paper chose its filter by generation quality, which needs
trained models and the benchmark's metrics); it ranks settings by what the cue itself can show.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.preprocess.cue_settings import CueSettings
from scail2.preprocess.cues import pose_cue

SETTINGS = [
    ("rgb", "none", 1.0),
    ("gray", "none", 1.0),
    *[("gray", "gaussian", c) for c in (0.03, 0.05, 0.1, 0.2, 0.4)],
    *[("rgb", "gaussian", c) for c in (0.05, 0.1, 0.2)],
    ("gray", "ideal", 0.1),
    ("gray", "butterworth", 0.1),
]


def gaps(samples, settings: CueSettings, offset: int) -> tuple[float, float]:
    identity, motion = [], []
    for sample in samples:
        driving = pose_cue(sample.driving, sample.driving_ids > 0, settings).astype(np.float32)
        target = pose_cue(sample.target, sample.target_ids > 0, settings).astype(np.float32)
        identity.append(np.abs(driving - target).mean() / 255)
        motion.append(np.abs(target[offset:] - target[:-offset]).mean() / 255)
    return float(np.mean(identity)), float(np.mean(motion))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--offset", type=int, default=8, help="frames between the two poses of the motion gap")
    args = parser.parse_args()
    generator = ProceduralPairGenerator(SynthConfig(args.size, args.size, args.frames, ("animate",), seed=11))
    samples = [generator.generate(i) for i in range(args.pairs)]
    print(f"{args.pairs} animation pairs, {args.size}x{args.size}, {args.frames} frames, motion offset {args.offset}")
    print("| colour | filter | cutoff | identity gap | motion gap | ratio | s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for color, kind, cutoff in SETTINGS:
        start = time.perf_counter()
        identity, motion = gaps(samples, CueSettings(color=color, filter=kind, cutoff=cutoff), args.offset)
        seconds = time.perf_counter() - start
        print(
            f"| {color} | {kind} | {cutoff} | {identity:.4f} | {motion:.4f} | {motion / identity:.3f} | {seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
