"""One GPU call that trains a demo model which must read its driver: close-up world data synthesised on the
machine, cached, a patch-1 transformer (4x the tokens of the bundled layout) trained in bf16 at batch 64,
exported, scored on 16 close-up test pairs and 16 out-of-world clips, with previews.

    python -m benchmarks.gpu_train_demo --out gpu_demo/                 # on a bare GPU machine (<= 8 minutes)
    python -m benchmarks.gpu_train_demo --out /tmp/dry --dry-run        # the same sections, tiny, on a CPU
    python -m benchmarks.gpu_train_demo --out gpu_demo/ --layout appended   # SCAIL-2's layout at patch 1 instead

Sections run in order, each guarded: `synth` (scail2 synth --world closeup on every core: a cache is too large
to bring along), `cache` (the bundled VAE on the GPU, driving inputs as the layout reads them), `train` (the
layout's config with patch size 1, bf16, batch 64, the driver-dependence check logged every `--dependence-every`
steps; exported at the end), `eval` (scail2 eval on the close-up test split and the outside clips, the bundled
model's scores beside), `preview` (the demo's preview sheet on close-up test pairs). `--layout` picks the driving
layout: `added-cue` (configs/demo_closeup.yaml: the pose cue added on the video grid) or `appended`
(configs/demo.yaml: SCAIL-2's half-resolution frames appended). OUT/gpu_train_demo.json is rewritten after every
section with its seconds, status and results, so a call cut short still reports what it finished. Ship what it
trains only if it beats the bundled model on the benchmark's metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "scail2" / "assets" / "demo_model"
# (full run, dry run)
SIZES = {
    "pairs": (4096, 4),
    "size": ("128", "32"),
    "frames": (17, 5),
    "steps": (1500, 2),
    "batch": (64, 2),
    "eval_pairs": (16, 1),
    "sample_steps": (10, 2),
}


# --layout -> (training config, `scail2 cache` flags for its driving inputs)
LAYOUTS = {
    "added-cue": ("demo_closeup.yaml", ["--driving-scale", "1", "--driving-signal", "pose_cue"]),
    "appended": ("demo.yaml", ["--driving-scale", "2", "--driving-signal", "frames"]),
}
EVAL_SPLIT = "closeup-test"


def _size(name: str, dry: bool):
    return SIZES[name][1 if dry else 0]


def _write(report: dict, out: Path) -> None:
    path = out / "gpu_train_demo.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def synth(args, out: Path) -> dict:
    from scail2.cli import main

    workers = 1 if args.dry_run else max(1, (os.cpu_count() or 2) - 1)
    flags = ["--num", str(_size("pairs", args.dry_run)), "--size", _size("size", args.dry_run)]
    flags += ["--frames", str(_size("frames", args.dry_run)), "--seed", "1000", "--world", "closeup"]
    code = main(["synth", "--out", str(out / "synth"), *flags, "--workers", str(workers), "--shard-size", "64"])
    return {"exit": code, "workers": workers}


def cache(args, out: Path) -> dict:
    from scail2.cli import main

    device = "cpu" if args.dry_run else "cuda"
    flags = ["--data", str(out / "synth"), "--model", str(BUNDLED), "--out", str(out / "cache"), "--quiet"]
    return {"exit": main(["cache", *flags, *LAYOUTS[args.layout][1], "--device", device])}


def train(args, out: Path) -> dict:
    from scail2.cli import main

    steps, dry = _size("steps", args.dry_run), args.dry_run
    overrides = [
        "model.overrides.patch_size=[1,1,1]",
        f"model.components={BUNDLED}",
        f"train.batch_size={_size('batch', dry)}",
        f"train.max_steps={steps}",
        f"train.mixed_precision={'fp32' if dry else 'bf16'}",
        f"train.checkpoint_every={max(steps // 3, 1)}",
        f"train.log_every={1 if dry else 25}",
        f"train.dependence_every={steps if dry else args.dependence_every}",
        "train.dependence_samples=8",
        f"optim.warmup_steps={1 if dry else 100}",
        "optim.ema_decay=0.99",
    ]
    run = out / "run"
    command = ["train", "--config", str(REPO / "configs" / LAYOUTS[args.layout][0]), "--data", str(out / "cache")]
    command += ["--out", str(run), *(["--resume"] if (run / "checkpoints").is_dir() else []), *overrides]
    code = main(command)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "exit": code,
        "losses": {r["step"]: r["loss"] for r in rows if "loss" in r},
        "dependence": {r["step"]: r for r in rows if "rise_driving_latents" in r},
    }


def evaluate(args, out: Path) -> dict:
    from scail2.cli import main

    model = out / "run" / "export" / "model"
    flags = ["--pairs", str(_size("eval_pairs", args.dry_run)), "--steps", str(_size("sample_steps", args.dry_run))]
    flags += ["--skeleton-model", "none", "--quiet"]
    results = {}
    for split in (EVAL_SPLIT, "outside"):
        for name, folder in (("trained", model), ("bundled", BUNDLED)):
            path = out / f"eval-{split}-{name}.json"
            code = main(["eval", "--split", split, "--model", str(folder), "--json", str(path), *flags])
            scores = json.loads(path.read_text())
            results[f"{split}/{name}"] = {
                "exit": code,
                "summary": scores["summary"],
                "dependence": scores["dependence"],
            }
    return results


def preview(args, out: Path) -> dict:
    from scail2.demo import run_demo

    model = out / "run" / "export" / "model"
    device = "cpu" if args.dry_run else "cuda"
    steps = _size("sample_steps", args.dry_run)
    summary = run_demo(out / "preview", model=model, steps=steps, device=device, split=EVAL_SPLIT)
    return {"wall_s": summary["wall_s"], "files": sorted(p.name for p in (out / "preview").iterdir())}


SECTIONS = {"synth": synth, "cache": cache, "train": train, "eval": evaluate, "preview": preview}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder: data, cache, run, scores, previews")
    parser.add_argument("--dry-run", action="store_true", help="every section at tiny sizes (CPU, seconds)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in order")
    parser.add_argument("--dependence-every", type=int, default=250, help="driver-dependence check interval")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="added-cue", help="driving layout to train")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "layout": args.layout, "sections": {}}
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            result = {"status": "ok", **SECTIONS[name](args, out)}
        except Exception as error:  # a failed section is recorded; the next one still runs
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["sections"][name] = result
        _write(report, out)
        print(f"{name}: {result['status']} in {result['seconds']} s", flush=True)
    return report


if __name__ == "__main__":
    main()
