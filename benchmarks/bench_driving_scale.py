"""What a full-resolution driving stream costs: one training step (forward, backward, AdamW) of the demo model's
architecture with `driving_scale` 2 (SCAIL-2's half resolution) against 1 (the video's), at the demo's size.

    python -m benchmarks.bench_driving_scale                     # demo preset, 128x128, 17 frames, batch 4, 1 thread
    python -m benchmarks.bench_driving_scale --small             # also the small backbone of the comparison runs

Prints tokens per sample and per step, the median seconds per step and the machine's load (`os.getloadavg`):
on a shared machine the ratio between the rows is the number to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import build_inputs, random_transformer

# The small backbone of the driver-dependence comparison runs (configs/demo.yaml with these overrides).
SMALL = dict(dim=64, ffn_dim=160, num_heads=4, num_layers=4)


def step_seconds(model, inputs: dict, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps after one warm-up step."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randn_like(inputs["hidden_states"])
    times = []
    for index in range(steps + 1):
        start = time.perf_counter()
        loss = (model(**inputs).sample - target).square().mean()
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if index:
            times.append(time.perf_counter() - start)
    return times


def measure(name: str, overrides: dict, args) -> list[dict]:
    rows = []
    for scale in (2, 1):
        torch.manual_seed(0)
        model = random_transformer("demo", torch.device("cpu"), driving_scale=scale, **overrides).train()
        inputs, tokens = build_inputs(model, args.batch, args.frames, args.size, args.size, torch.device("cpu"), 1)
        times = step_seconds(model, inputs, args.steps)
        rows.append(dict(model=name, scale=scale, tokens=tokens, step=tokens * args.batch, s=statistics.median(times)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="pixel height and width")
    parser.add_argument("--frames", type=int, default=17, help="pixel frames (4n+1)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="also the small backbone " + str(SMALL))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = measure("demo", {}, args) + (measure("small", SMALL, args) if args.small else [])
    print(f"\n{args.size}x{args.size}, {args.frames} frames, batch {args.batch}, {args.threads} thread(s)")
    print("| model | driving_scale | tokens/sample | tokens/step | s/step | vs scale 2 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["scale"] == 2)
        print(
            f"| {row['model']} | {row['scale']} | {row['tokens']} | {row['step']} | {row['s']:.2f} | "
            f"{row['s'] / base['s']:.2f}x |"
        )
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
