"""Drift over long videos: pixel vs latent hand-off, with and without colour anchoring, on the bundled demo model.

Long procedural pairs (held-out seed, >= 8 segments of the demo model's 17 frames) are animated once per
configuration; per segment we measure the character's colour distance to the reference (levels, inside the
ground-truth character mask), the identity error (mean colour error against the ground truth inside the
character, levels) and the seam jump at its start (`scail2.eval.qa.seam_jumps`). Prints a markdown table and
writes JSON and a plot:

    PYTHONPATH=src nice -n 19 python benchmarks/drift_study.py --pairs 3 --frames 101 --out docs/drift
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from scail2 import bundled
from scail2.animate import load_pipeline
from scail2.conditioning import AnimationInputs
from scail2.data.format import write_json_atomic
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig, driving_condition
from scail2.eval import metrics, qa
from scail2.pipelines.drift import DriftSettings

CONFIGS = {
    "pixel": DriftSettings("pixel", 0.0),
    "latent": DriftSettings("latent", 0.0),
    "hybrid": DriftSettings("hybrid", 0.0),
    "pixel+anchor": DriftSettings("pixel", 0.06),
    "latent+anchor": DriftSettings("latent", 0.06),
    "hybrid+anchor": DriftSettings("hybrid", 0.06),
}
STUDY_SEED = 4000  # no training run or benchmark split uses it


def per_segment(output: np.ndarray, sample, segments) -> dict[str, list[float | None]]:
    """Colour distance to the reference, identity error and seam ratio of each segment."""
    character = sample.target_ids > 0
    reference_color = qa.mean_color(sample.reference, sample.reference_ids > 0)
    colors = qa.segment_colors(output, character, segments, reference_color)
    identity = []
    for segment in segments:
        new = slice(segment.start + segment.history_frames, segment.start + segment.real_frames)
        mask = np.broadcast_to(character[new][..., None], output[new].shape)
        identity.append(metrics.masked_colour_error(output[new], sample.target[new], mask))
    seams = {row["segment"]: row["ratio"] for row in qa.seam_jumps(output, segments)}
    return {
        "color_distance": [row["distance"] for row in colors],
        "identity_error": identity,
        "seam_ratio": [seams.get(segment.index) for segment in segments],
    }


def run_study(pairs: int, frames: int, tasks: tuple[str, ...]) -> dict:
    pipeline = load_pipeline(bundled.bundled_model_dir(), torch.device("cpu"))
    settings = bundled.BUNDLED_SAMPLING
    generator = ProceduralPairGenerator(SynthConfig(frames=frames, seed=STUDY_SEED, tasks=tasks))
    results: dict = {name: [] for name in CONFIGS}
    seconds: dict = {name: 0.0 for name in CONFIGS}
    for index in range(pairs):
        sample = generator.generate(index)
        inputs = AnimationInputs.from_pair(sample, *driving_condition(sample, "frames"))
        for name, drift in CONFIGS.items():
            start = time.perf_counter()
            result = pipeline(inputs, settings, seed=index, progress=False, drift=drift)
            seconds[name] += time.perf_counter() - start
            results[name].append(per_segment(result.frames.numpy(), sample, result.segments))
            print(f"pair {index} {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return {"pairs": pairs, "frames": frames, "tasks": list(tasks), "seconds": seconds, "per_pair": results}


def mean_curves(study: dict) -> dict[str, dict[str, list[float]]]:
    """{config: {metric: per-segment mean over pairs}}."""
    curves = {}
    for name in [n for n in CONFIGS if n in study["per_pair"]]:  # the order of CONFIGS, not of the JSON keys
        rows = study["per_pair"][name]
        curves[name] = {}
        for metric in ("color_distance", "identity_error", "seam_ratio"):
            table = np.array([[np.nan if v is None else v for v in row[metric]] for row in rows], dtype=float)
            curves[name][metric] = [float(v) for v in np.nanmean(table, axis=0)] if table.size else []
    return curves


def markdown(curves: dict) -> str:
    lines = [
        "| hand-off | colour dist. seg 1 | colour dist. last | colour drift (last - first) | identity err. seg 1 "
        "| identity err. last | identity err. mean | seam ratio mean | seam ratio max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in curves.items():
        color, identity, seam = c["color_distance"], c["identity_error"], c["seam_ratio"][1:]
        lines.append(
            f"| {name} | {color[0]:.1f} | {color[-1]:.1f} | {color[-1] - color[0]:+.1f} | {identity[0]:.1f} | "
            f"{identity[-1]:.1f} | {np.mean(identity):.1f} | {np.nanmean(seam):.2f} | {np.nanmax(seam):.2f} |"
        )
    return "\n".join(lines)


def plot(curves: dict) -> np.ndarray:
    """Three panels (colour distance, identity error, seam ratio per segment), one line per configuration."""
    from PIL import Image, ImageDraw

    colours = [(40, 110, 220), (230, 140, 40), (90, 180, 90), (120, 170, 230), (240, 190, 120), (150, 210, 150)]
    panels = ("color_distance", "identity_error", "seam_ratio")
    pw, ph, left, top = 300, 200, 40, 30
    image = Image.new("RGB", (left + len(panels) * (pw + left) + 10, top + ph + 40 + 18 * len(curves)), "white")
    draw = ImageDraw.Draw(image)
    for p, metric in enumerate(panels):
        x0 = left + p * (pw + left)
        series = [c[metric] for c in curves.values()]
        high = max(np.nanmax(s) for s in series if len(s)) * 1.1 or 1.0
        draw.text((x0, 6), f"{metric} per segment", fill="black")
        draw.rectangle([x0, top, x0 + pw, top + ph], outline=(180, 180, 180))
        draw.text((x0 + 3, top + 3), f"{high:.1f}", fill=(80, 80, 80))
        draw.text((x0 + 3, top + ph - 12), "0", fill=(80, 80, 80))
        for k, values in enumerate(series):
            points = [
                (x0 + pw * i / max(1, len(values) - 1), top + ph - ph * v / high)
                for i, v in enumerate(values)
                if np.isfinite(v)
            ]
            if len(points) > 1:
                draw.line(points, fill=colours[k % len(colours)], width=2)
        draw.text((x0 + pw - 60, top + ph + 4), "segment ->", fill="black")
    for k, name in enumerate(curves):
        y = top + ph + 24 + 18 * k
        draw.rectangle([left, y, left + 12, y + 12], fill=colours[k % len(colours)])
        draw.text((left + 18, y), name, fill="black")
    return np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=101, help="101 = 8 segments of 17 frames, overlap 5")
    parser.add_argument("--tasks", default="animate")
    parser.add_argument("--out", default="docs/drift")
    parser.add_argument("--replot", action="store_true", help="redraw table and plot from OUT/results.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.replot:
        study = json.loads((out / "results.json").read_text())
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        load = os.getloadavg()
        study = run_study(args.pairs, args.frames, tuple(args.tasks.split(",")))
        study["load_average"] = [round(v, 2) for v in (*load, *os.getloadavg())]
    curves = mean_curves(study)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "results.json", json.loads(json.dumps({**study, "curves": curves}, allow_nan=True).replace("NaN", "null"))
    )
    from PIL import Image

    Image.fromarray(plot(curves)).save(out / "plot.png")
    table = markdown(curves)
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"seconds per config: {study['seconds']}; load average before/after: {study['load_average']}")


if __name__ == "__main__":
    main()
