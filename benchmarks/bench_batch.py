"""Batch cache: time of the second reference on the same driving video vs the first, on the bundled demo model.

Two references (the animate sample's image and its mirror image) x one driving video (the 1080p animate sample,
its first FRAMES frames, automatic masks) through `scail2.batch.run_batch`; job 1 fills the driving cache
(decode + resize, automatic masks, driving latents and mask tensors), job 2 reads it. Prints a table:

    PYTHONPATH=src nice python benchmarks/bench_batch.py --frames 41
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from scail2.animate import with_bundled_model
from scail2.batch import BatchRunner, DrivingCache, read_jobs_file, run_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=41, help="driving frames (41 = 3 segments of the demo model)")
    parser.add_argument(
        "--sample", required=True, help="folder holding a driving video `video.mp4` and a reference `image.jpeg`"
    )
    args = parser.parse_args()
    sample = Path(args.sample)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        image = Image.open(sample / "image.jpeg")
        image.save(root / "a.png")
        ImageOps.mirror(image).save(root / "b.png")
        (root / "jobs.yaml").write_text(
            f"out: out\ndefaults:\n  max_frames: {args.frames}\n  qa: false\n"
            f"jobs:\n  - ref: [a.png, b.png]\n    driving: {sample / 'video.mp4'}\n"
        )
        load_before = os.getloadavg()
        runner = BatchRunner(root / "out", DrivingCache(root / "out" / "cache"))
        tic = time.perf_counter()  # the model loads before the clock of job 1 starts
        runner.pipeline_for(with_bundled_model(read_jobs_file(root / "jobs.yaml")[1][0].request))
        load_s = time.perf_counter() - tic
        rows = run_batch(root / "jobs.yaml", root / "out", runner)
        load_after = os.getloadavg()
        manifests = [json.loads((root / "out" / f"{row['job']}.json").read_text()) for row in rows]
    print("| job | status | seconds | denoise s | cache hits | cache misses |")
    print("|---|---|---|---|---|---|")
    previous_hits: dict = {}
    for row, manifest in zip(rows, manifests):
        counts = manifest["batch"]["cache"]
        hits = {k: v - previous_hits.get(k, 0) for k, v in counts["hits"].items() if v - previous_hits.get(k, 0)}
        previous_hits = counts["hits"]
        denoise = sum(v for k, v in manifest["timings_s"].items() if k.endswith("_denoise_s"))
        print(
            f"| {row['job']} | {row['status']} | {row['seconds']:.1f} | {denoise:.1f} | {hits} | {counts['misses']} |"
        )
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    print(f"model load {load_s:.1f} s (before job 1); job 2 / job 1: {ratio:.2f}")
    print(f"load average before {[round(v, 2) for v in load_before]}, after {[round(v, 2) for v in load_after]}")


if __name__ == "__main__":
    main()
