"""The demo job: the bundled model animates held-out procedural characters, scored against the ground truth.

Steps: 1. load the bundled model; 2. pick held-out pairs (a humanoid, a non-humanoid, a replacement and a
multi-character scene); 3. generate each and score it beside the copy-reference baseline; 4. write the MP4s,
a side-by-side preview (reference | driving | output | ground truth) as PNG and GIF, and `metrics.json`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from scail2.data.pairs import PairSample, ProceduralPairGenerator
from scail2.eval import benchmark, report

# What the demo shows, in order: (label, predicate on a test-split pair).
DEMO_CASES = (
    ("humanoid", lambda s: s.task == "animate" and s.metadata["body_plans"]["reference"] == ["humanoid"]),
    (
        "non-humanoid",
        lambda s: (
            s.task == "animate"
            and "humanoid" not in s.metadata["body_plans"]["reference"] + s.metadata["body_plans"]["driving"]
        ),
    ),
    ("replacement", lambda s: s.task == "replace"),
    ("multi-character", lambda s: s.task == "multi"),
)
PREVIEW_FRAMES = (0, 8, 16)


def pick_demo_pairs(split: str = "test", search: int = 200) -> list[tuple[str, PairSample]]:
    """The first pair of each demo case in the held-out `split` (deterministic)."""
    generator = ProceduralPairGenerator(benchmark.SPLITS[split])
    chosen: dict[str, PairSample] = {}
    for index in range(search):
        sample = generator.generate(index)
        for label, wanted in DEMO_CASES:
            if label not in chosen and wanted(sample):
                chosen[label] = sample
                break
        if len(chosen) == len(DEMO_CASES):
            break
    return [(label, chosen[label]) for label, _ in DEMO_CASES if label in chosen]


def _label(image: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, 7 * len(text) + 6, 13], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def preview_row(sample: PairSample, output: np.ndarray, label: str, frames=PREVIEW_FRAMES) -> np.ndarray:
    """reference | driving at `frames` | output at `frames` | ground truth at `frames`, one row [H, W', 3]."""
    frames = [f for f in frames if f < output.shape[0]]
    panels = [_label(sample.reference, f"ref: {label}")]
    for name, video in (("driving", sample.driving), ("output", output), ("truth", sample.target)):
        panels += [_label(video[f], f"{name} {f}") for f in frames]
    gap = np.full((sample.reference.shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([x for panel in panels for x in (panel, gap)][:-1], axis=1)


def preview_gif_frames(pairs: list[tuple[str, PairSample]], outputs: list[np.ndarray]) -> list[np.ndarray]:
    """Per time step: one row per pair of reference | driving | output | ground truth."""
    frames = []
    for t in range(min(o.shape[0] for o in outputs)):
        rows = []
        for (_, sample), output in zip(pairs, outputs):
            panels = [
                _label(sample.reference, "reference"),
                _label(sample.driving[t], "driving"),
                _label(output[t], "output"),
                _label(sample.target[t], "truth"),
            ]
            rows.append(np.concatenate(panels, axis=1))
        frames.append(np.concatenate(rows, axis=0))
    return frames


def run_demo(
    out: str | Path = "demo_output",
    model: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    split: str | None = None,
) -> dict:
    import dataclasses

    import torch

    from scail2.animate import load_pipeline
    from scail2.bundled import BUNDLED_SAMPLING, BUNDLED_SPLIT, bundled_model_dir
    from scail2.preprocess.video_io import write_mp4

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # 1. The model.
    model_dir = Path(model) if model else bundled_model_dir()
    pipeline = load_pipeline(model_dir, torch.device(device))
    settings = dataclasses.replace(BUNDLED_SAMPLING, **({"steps": steps} if steps else {}))
    # 2. Held-out pairs.
    split = split or BUNDLED_SPLIT
    pairs = pick_demo_pairs(split)
    # 3. Generate and score.
    ours = benchmark.ModelMethod(pipeline, settings, driving="frames", seed=seed)
    outputs, results = [], []
    for label, sample in pairs:
        tic = time.perf_counter()
        output = ours(sample)
        seconds = time.perf_counter() - tic
        outputs.append(output)
        plate = benchmark.target_plate(sample.metadata)
        scores = benchmark.pair_metrics(output, sample, plate, benchmark.method_plate(ours, plate))
        baseline = benchmark.pair_metrics(benchmark.copy_reference(sample), sample, plate)
        name = f"{len(results):02d}_{label}"
        write_mp4(out / f"{name}.mp4", output, fps=sample.metadata["fps"])
        results.append(
            {
                "case": label,
                "file": f"{name}.mp4",
                "pair": sample.key,
                "task": sample.task,
                "body_plans": sample.metadata["body_plans"],
                "seconds": round(seconds, 2),
                "model": scores,
                "copy_reference": baseline,
            }
        )
    # 4. Previews and metrics.
    report.write_image(
        out / "preview.png",
        np.concatenate([preview_row(sample, output, label) for (label, sample), output in zip(pairs, outputs)], axis=0),
    )
    report.write_gif(out / "preview.gif", preview_gif_frames(pairs, outputs), fps=pairs[0][1].metadata["fps"])
    summary = {
        "model": str(model_dir),
        "settings": dataclasses.asdict(settings),
        "seed": seed,
        "split": split,
        "pairs": results,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    report.write_json(out / "metrics.json", summary)
    print_report(summary, out)
    return summary


def print_report(summary: dict, out: Path) -> None:
    names = {"model": "bundled model", "copy_reference": "copy reference"}
    print(f"{'case':<16} {'method':<15} " + " ".join(f"{report.METRIC_HEADERS[m]:>13}" for m in benchmark.METRICS))
    for row in summary["pairs"]:
        for key, name in names.items():
            cells = " ".join(f"{report.format_score(row[key][m], m):>13}" for m in benchmark.METRICS)
            print(f"{row['case']:<16} {name:<15} {cells}")
    print(
        f"wrote {len(summary['pairs'])} MP4s, preview.png, preview.gif and metrics.json to {out}/ "
        f"in {summary['wall_s']:.1f} s"
    )
