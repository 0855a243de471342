"""Same2X's convergence on the procedural world: stage 2 with and without the S2X loss, at equal data and steps.

    python -m benchmarks.bench_same2x --work runs/same2x [--pairs 48] [--stage1-steps 400] [--stage2-steps 400]
        [--plot docs/directanimator/same2x_convergence.png]

Synthesises animation pairs, caches them with both cue triplets (the bundled demo model's VAE), trains stage 1,
then stage 2 twice from the same stage-1 model with the same seed (so the same batches, noise and timesteps):
with S2X (lambda 0.5, D by the paper's 10/42 rule) and without it (lambda 0). The paper's claim (6.7x) is about
the stage-2 loss; here the denoising (flow-matching) loss is compared, since S2X adds a term of its own to the
total. Prints the smoothed curves' ends and the first step at which the run with S2X reaches the loss the run
without it ends at, writes `convergence.json` in the work folder and, with --plot, both curves as a PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from scail2.bundled import bundled_model_dir
from scail2.cli import main as cli
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "directanimator_tiny.yaml"
# A small backbone that still has several blocks to align (D = round(4 * 10 / 42) = 1).
MODEL = (
    "model.overrides={model_type: t2v, text_dim: 16, text_len: 1, dim: 64, ffn_dim: 160, num_heads: 4, "
    "num_layers: 4, cue_modulation_dim: 32}"
)


def run(command: list) -> None:
    code = cli([str(part) for part in command])
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(map(str, command))}")


def curve(run_dir: Path, key: str = "flow_loss") -> np.ndarray:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([row[key] for row in sorted(rows, key=lambda r: r["step"])])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def steps_to_reach(values: np.ndarray, level: float) -> int | None:
    reached = np.flatnonzero(values <= level)
    return int(reached[0]) + 1 if reached.size else None


def plot(curves: dict[str, np.ndarray], path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    width, height, left, top, bottom = 640, 360, 60, 30, 40
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    low = min(float(c.min()) for c in curves.values())
    high = max(float(c.max()) for c in curves.values())
    steps = max(len(c) for c in curves.values())
    to_x = lambda i: left + (width - left - 20) * i / max(1, steps - 1)  # noqa: E731
    to_y = lambda v: top + (height - top - bottom) * (high - min(v, high)) / max(1e-9, high - low)  # noqa: E731
    for tick in np.linspace(low, high, 5):
        draw.line([(left, to_y(tick)), (width - 20, to_y(tick))], fill=(225, 225, 225))
        draw.text((4, to_y(tick) - 6), f"{tick:.3f}", fill=(80, 80, 80))
    colours = [(200, 60, 40), (40, 90, 200)]
    for values, colour in zip(curves.values(), colours):
        draw.line([(to_x(i), to_y(v)) for i, v in enumerate(values)], fill=colour, width=2)
    for k, (name, colour) in enumerate(zip(curves, colours)):
        draw.rectangle([left + 10, top + 8 + 18 * k, left + 22, top + 20 + 18 * k], fill=colour)
        draw.text((left + 28, top + 8 + 18 * k), name, fill=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text((width // 2 - 30, height - 20), "stage-2 step", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data, cache and runs (resumes)")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--stage1-steps", type=int, default=400)
    parser.add_argument("--stage2-steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--smooth", type=int, default=25, help="moving-average window of the compared curves")
    parser.add_argument("--plot", type=Path, help="write the stage-2 curves here (PNG)")
    args = parser.parse_args()
    work, model = args.work, bundled_model_dir()
    if not (work / "data" / "manifest.json").exists():
        generator = ProceduralPairGenerator(SynthConfig(args.size, args.size, args.frames, ("animate",), seed=21))
        write_dataset(generator, work / "data", args.pairs, shard_size=16, progress=False)
    run(["cache", "--cues", "--data", work / "data", "--model", model, "--out", work / "cache", "--quiet"])
    options = ["train", "--config", CONFIG, "--data", work / "cache"]
    common = [MODEL, f"model.components={model}", f"optim.lr={args.lr}", "optim.ema_decay=null"]
    common += ["train.log_every=1", f"train.checkpoint_every={args.stage1_steps + args.stage2_steps}"]
    if not (work / "stage1" / "export" / "model").exists():
        run([*options, "--out", work / "stage1", *common, f"directanimator.stage1.max_steps={args.stage1_steps}"])
    stage2 = [
        "directanimator.stage=2",
        f"directanimator.stage2.from_model={work / 'stage1' / 'export' / 'model'}",
        f"directanimator.stage2.max_steps={args.stage2_steps}",
    ]
    for name, weight in (("with_s2x", 0.5), ("without_s2x", 0.0)):
        if not (work / name / "export" / "model").exists():
            run([*options, "--out", work / name, *common, *stage2, f"directanimator.stage2.s2x_weight={weight}"])
    with_s2x, without = smooth(curve(work / "with_s2x"), args.smooth), smooth(curve(work / "without_s2x"), args.smooth)
    target = float(without[-1])
    reached = steps_to_reach(with_s2x, target)
    result = {
        "pairs": args.pairs,
        "stage1_steps": args.stage1_steps,
        "stage2_steps": args.stage2_steps,
        "smooth": args.smooth,
        "final_flow_loss": {"with_s2x": float(with_s2x[-1]), "without_s2x": target},
        "with_s2x_reaches_final_without_at_step": reached,
        "speed_up": None if reached is None else args.stage2_steps / reached,
        "final_s2x": float(smooth(curve(work / "with_s2x", "s2x"), args.smooth)[-1]),
    }
    (work / "convergence.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if args.plot:
        title = f"stage-2 flow-matching loss, moving average over {args.smooth} steps"
        plot({"with S2X (lambda 0.5)": with_s2x, "without S2X": without}, args.plot, title)


if __name__ == "__main__":
    main()
