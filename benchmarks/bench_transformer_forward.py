"""One forward of SCAIL2Transformer3DModel with random weights: time and peak memory.

On a GPU: `python -m benchmarks.bench_transformer_forward --preset 14b --height 512 --width 896 --frames 81`
(48,832 tokens; bf16 weights, bf16 autocast, SDPA). On a CPU, use a small preset and size. Prints a table.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import build_inputs, random_transformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--batch", type=int, default=1, help="2 = conditional and unconditional CFG passes batched")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = random_transformer(args.preset, device, dtype).eval()
    text_tokens = min(64, model.config.text_len)
    inputs, tokens = build_inputs(model, args.batch, args.frames, args.height, args.width, device, text_tokens)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), autocast:
        for _ in range(args.repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    params = sum(p.numel() for p in model.parameters())
    print("| preset | params | size | batch | tokens | dtype | first s | steady s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    steady = min(times[1:]) if len(times) > 1 else times[0]
    print(
        f"| {args.preset} | {params:,} | {args.width}x{args.height}x{args.frames} | {args.batch} | {tokens:,} | "
        f"{args.dtype} | {times[0]:.2f} | {steady:.2f} | {peak:.1f} |"
    )


if __name__ == "__main__":
    main()
