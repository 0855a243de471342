"""Does the driver's colour leak into the output? The bundled model on a demo pair, with the driving latents
as they are and zeroed: the mean colour inside the target's character mask beside the reference character's,
the driver's and the empty scene's colour there.

    python -m benchmarks.bench_leakage [--case non-humanoid] [--steps 10]

The output takes the driver's colour only if it moves towards it with the latents present and away without.
"""

from __future__ import annotations

import argparse
import dataclasses
from unittest import mock

import numpy as np
import torch


def _mean(video: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return video[mask].reshape(-1, 3).astype(np.float64).mean(axis=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="non-humanoid")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from scail2.animate import load_pipeline
    from scail2.bundled import BUNDLED_SAMPLING, bundled_model_dir
    from scail2.demo import pick_demo_pairs
    from scail2.eval import benchmark
    from scail2.pipelines import pipeline_scail2

    sample = dict(pick_demo_pairs())[args.case]
    pipeline = load_pipeline(bundled_model_dir(), torch.device("cpu"))
    settings = dataclasses.replace(BUNDLED_SAMPLING, **({"steps": args.steps} if args.steps else {}))
    method = benchmark.ModelMethod(pipeline, settings)
    output = method(sample)
    original = pipeline_scail2.encode_driving
    with mock.patch.object(pipeline_scail2, "encode_driving", lambda *a, **k: torch.zeros_like(original(*a, **k))):
        zeroed = method(sample)
    character = sample.target_ids > 0
    plate = benchmark.sample_plate(sample)
    colours = {
        "output": _mean(output, character),
        "output, driving latents zeroed": _mean(zeroed, character),
        "reference character (target)": _mean(sample.target, character),
        "driving character": _mean(sample.driving, sample.driving_ids > 0),
        "empty scene behind the character": _mean(plate, character),
    }
    print(f"pair {sample.key} ({args.case}), mean RGB inside the target's character mask\n")
    print("| video | R | G | B | distance to output |")
    print("|---|---:|---:|---:|---:|")
    for name, rgb in colours.items():
        distance = np.linalg.norm(rgb - colours["output"])
        print(f"| {name} | {rgb[0]:.0f} | {rgb[1]:.0f} | {rgb[2]:.0f} | {distance:.1f} |")


if __name__ == "__main__":
    main()
