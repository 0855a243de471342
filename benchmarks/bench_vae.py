"""Encode and decode cost of small `AutoencoderKLWan` configurations on this machine (CPU).

    .venv/bin/python benchmarks/bench_vae.py [--frames 17] [--size 128] [--repeats 3] [--threads 1] [--wall]
                                             [--only NAME,...] [--wan21] [--vae FOLDER ...]

Every configuration keeps Wan's latent layout (z_dim 16, 4x temporal and 8x spatial compression, causal first
frame); `p2` rows fold 2x2 pixels into channels first (`patch_size=2`, as Wan2.2 does) and so need one level
fewer. For each it prints the parameter count, the fp16 file size, and the best-of-`repeats` time to encode and
decode one clip at full size, one at half size (the driving stream) and one reference frame, plus
"pair enc": what `scail2 cache` spends on the VAE per pair.

By default times are CPU seconds of the calling thread with one intra-op thread (`time.thread_time`): they do
not grow when other jobs share the machine, which wall-clock times on a busy 2-core box do by 2-5x. `--wall`
measures wall-clock seconds with `--threads` threads instead (meaningful on an idle machine). `--wan21` adds
the full Wan2.1 VAE (base_dim 96) as a yardstick; it takes minutes per row. `--vae` adds trained VAE folders
(e.g. src/scail2/assets/demo_model/vae), loaded as fp32.
"""

from __future__ import annotations

import argparse
import time

import torch

from scail2.train.vae import load_exported_vae

# (name, base_dim, dim_mult, num_res_blocks, patch_size)
CANDIDATES = [
    ("b8-1248-r1", 8, [1, 2, 4, 8], 1, None),
    ("b16-1224-r1", 16, [1, 2, 2, 4], 1, None),
    ("b16-1244-r2", 16, [1, 2, 4, 4], 2, None),
    ("p2-b16-124-r1", 16, [1, 2, 4], 1, 2),
    ("p2-b32-112-r1", 32, [1, 1, 2], 1, 2),
    ("p2-b32-122-r1", 32, [1, 2, 2], 1, 2),
    ("p2-b48-111-r1", 48, [1, 1, 1], 1, 2),
    ("p2-b64-111-r1", 64, [1, 1, 1], 1, 2),
]
WAN21 = ("wan2.1 (b96-1244-r2)", 96, [1, 2, 4, 4], 2, None)


def build_vae(base_dim: int, dim_mult: list[int], num_res_blocks: int, patch_size: int | None):
    from scail2.train.vae import VaeArchConfig
    from scail2.train.vae import build_vae as build

    return build(
        VaeArchConfig(base_dim=base_dim, dim_mult=dim_mult, num_res_blocks=num_res_blocks, patch_size=patch_size)
    ).eval()


def best_time(fn, repeats: int, clock) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


@torch.no_grad()
def measure(vae, frames: int, size: int, repeats: int, clock) -> dict[str, float]:
    results = {}
    for label, shape in (
        ("full", (1, 3, frames, size, size)),
        ("half", (1, 3, frames, size // 2, size // 2)),
        ("ref", (1, 3, 1, size, size)),
    ):
        video = torch.rand(shape) * 2 - 1
        latent = vae.encode(video).latent_dist.mode()
        results[f"enc_{label}"] = best_time(lambda video=video: vae.encode(video).latent_dist.mode(), repeats, clock)
        results[f"dec_{label}"] = best_time(lambda latent=latent: vae.decode(latent).sample, repeats, clock)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (CPU-time mode forces 1)")
    parser.add_argument("--wall", action="store_true", help="wall-clock seconds instead of thread CPU seconds")
    parser.add_argument("--wan21", action="store_true", help="add the full Wan2.1 VAE as a yardstick (slow)")
    parser.add_argument("--only", help="comma-separated candidate names to run")
    parser.add_argument("--vae", nargs="*", default=[], help="trained VAE folders to time as well")
    args = parser.parse_args()
    threads = args.threads if args.wall else 1
    torch.set_num_threads(threads)
    clock = time.perf_counter if args.wall else time.thread_time
    candidates = CANDIDATES + ([WAN21] if args.wan21 else [])
    if args.only:
        candidates = [c for c in candidates if c[0] in args.only.split(",")]
    half = args.size // 2
    print(
        f"{args.frames} frames; full {args.size}x{args.size}, half {half}x{half}, ref 1 frame; "
        f"{threads} thread(s); best of {args.repeats}; {'wall' if args.wall else 'CPU'} seconds"
    )
    header = (
        f"| {'config':<22} | {'params':>9} | {'fp16 MB':>7} | {'enc full':>8} | {'dec full':>8} | "
        f"{'enc half':>8} | {'dec half':>8} | {'enc ref':>7} | {'pair enc':>8} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    rows = [(name, lambda arch=arch: build_vae(*arch)) for name, *arch in candidates]
    rows += [
        (folder.rstrip("/").split("/")[-2] + "/vae", lambda folder=folder: load_exported_vae(folder))
        for folder in args.vae
    ]
    for name, make in rows:
        vae = make()
        params = sum(p.numel() for p in vae.parameters())
        r = measure(vae, args.frames, args.size, args.repeats, clock)
        pair = r["enc_full"] + r["enc_half"] + r["enc_ref"]  # what `scail2 cache` spends per pair on the VAE
        print(
            f"| {name:<22} | {params:>9,} | {params * 2 / 1e6:>7.2f} | {r['enc_full']:>8.3f} | "
            f"{r['dec_full']:>8.3f} | {r['enc_half']:>8.3f} | {r['dec_half']:>8.3f} | {r['enc_ref']:>7.3f} | "
            f"{pair:>8.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
