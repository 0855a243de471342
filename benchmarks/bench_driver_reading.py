"""Which SCAIL-2 layout reads its driver early: small variants trained alike, driver dependence over training.

    python -m benchmarks.bench_driver_reading --cache CACHE --work runs/driver_reading
        [--variants baseline,rope_offset_0,foreground_weight,...] [--extra 'NAME=key=value;key=value']
        [--steps 800] [--dependence-every 100] [--backbone small|medium] [--lr 1e-3] [--seed 0] [--table]

Every variant trains `scail2 train --config configs/demo.yaml` (the demo recipe: batch 4, its flow settings and
augmentation) on the same latent cache (`--cache`, e.g. the close-up world's 192 pairs at 128x128; it needs
`target_masks`) for the same steps with the same seed, learning rate (cosine to 10%, 50 warm-up steps, no EMA)
and a small backbone, `--backbone`:

    small   dim 64, ffn 160, 4 heads (head dim 16), 4 layers
    medium  dim 128, ffn 352, 2 heads (head dim 64, the demo model's), 6 layers

A variant is a list of config overrides on top of that (VARIANTS below; `--extra` adds one, overrides split by
`;`). The trainer logs the driver-dependence check (scail2.train.dependence: the rise of the character-cell flow
loss when the driving latents, or the driving masks, are zeroed, on the cache's first 8 samples) every
`--dependence-every` steps; the table shows the rises at several steps and the final character-cell loss. A
second table breaks the final (exported) model's rises down by noise level, up to sigma 0.98 where the noisy
video no longer shows where the character is and the driver is the only source of its motion, beside the rise
with the reference latents zeroed (a stream on the video grid, for comparison).

Resumable: results go to WORK/results.json after each variant (a rerun skips the variants there) and each
training resumes from its newest checkpoint. A second seed is `--seed 1` (its runs are named NAME-seed1). The
budget is stored with the results; a rerun with another budget must use another `--work`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from scail2.errors import Scail2Error

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {
    "small": dict(dim=64, ffn_dim=160, num_heads=4, num_layers=4),
    "medium": dict(dim=128, ffn_dim=352, num_heads=2, num_layers=6),
}
# name -> config overrides on top of the demo recipe
VARIANTS = {
    "baseline": [],
    # the driving tokens take the video tokens' positions (their pooled rotations), not a +120 width shift
    "rope_offset_0": ["model.overrides.rope_offset=0"],
    # character cells weigh 1 + 4 x coverage in the loss (the cache's target_masks)
    "foreground_weight": ["flow.foreground_weight=4.0"],
    # more training at high noise, where the driver is all there is to go on (auto is 1.6 for a 16x16 grid)
    "shift_5": ["flow.shift=5.0"],
    "rope_offset_0_fg": ["model.overrides.rope_offset=0", "flow.foreground_weight=4.0"],
}
DEPENDENCE_SAMPLES = 8
TABLE_STEPS = 5
# The final model's rises per noise level: the trainer's check averages 0.3-0.9, where the noisy video itself
# already shows where the character is; near 1 the driver is the only source of the motion.
PROFILE_SIGMAS = (0.3, 0.5, 0.7, 0.9, 0.98)


def parse_extra(text: str) -> tuple[str, list[str]]:
    """'NAME=key=value;key=value' -> (NAME, [key=value, key=value]); empty overrides are allowed (a baseline)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or "." in name:
        raise Scail2Error(f"--extra {text!r} must look like NAME=section.key=value;section.key=value")
    overrides = [part.strip() for part in rest.split(";") if part.strip()]
    for override in overrides:
        if "=" not in override or "." not in override.split("=", 1)[0]:
            raise Scail2Error(f"--extra {text!r}: {override!r} is not a section.key=value override")
    return name.strip(), overrides


def select_variants(names: str, extras: list[str]) -> dict[str, list[str]]:
    """The variants to run, in order: `names` (comma-separated keys of VARIANTS) then each `--extra`."""
    chosen = {}
    for name in filter(None, (part.strip() for part in names.split(","))):
        if name not in VARIANTS:
            raise Scail2Error(f"--variants: {name!r} is not a variant; known: {', '.join(VARIANTS)} (or use --extra)")
        chosen[name] = list(VARIANTS[name])
    for text in extras:
        name, overrides = parse_extra(text)
        chosen[name] = overrides
    return chosen


def model_override(backbone: str) -> str:
    sizes = ", ".join(f"{key}: {value}" for key, value in BACKBONES[backbone].items())
    return f"model.overrides={{model_type: t2v, text_dim: 16, text_len: 1, freq_dim: 64, {sizes}}}"


def dependence_rows(metrics_path: Path) -> dict[int, dict]:
    """step -> the driver-dependence row of `metrics.jsonl` (the last one logged for a step: a resumed run may
    repeat one)."""
    rows = {}
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if "rise_driving_latents" in row:
            rows[int(row["step"])] = row
    return dict(sorted(rows.items()))


def table_steps(steps: list[int], count: int = TABLE_STEPS) -> list[int]:
    """At most `count` of the logged steps, evenly spread, the last one always in."""
    if len(steps) <= count:
        return list(steps)
    picks = {steps[round(i * (len(steps) - 1) / (count - 1))] for i in range(count)}
    return sorted(picks)


def markdown(results: dict) -> str:
    """The variants as one Markdown table: rises (zero driving latents / zero driving masks) at several steps,
    then the final character-cell loss and the training speed."""
    variants = results.get("variants", {})
    if not variants:
        return "(no variant finished yet)"
    all_steps = sorted({int(step) for row in variants.values() for step in row["dependence"]})
    steps = table_steps(all_steps)
    header = "| variant | overrides | " + " | ".join(f"step {s}" for s in steps)
    header += " | character loss | s/step |\n|---|---|" + "---:|" * (len(steps) + 2)
    lines = [header]
    for name, row in variants.items():
        cells = [_rises(row["dependence"].get(str(step))) for step in steps]
        last = row["dependence"][max(row["dependence"], key=int)] if row["dependence"] else None
        loss = "-" if last is None else f"{last['character_loss']:.4f}"
        overrides = "; ".join(f"`{o}`" for o in row["overrides"]) or "(none)"
        speed = f"{row['seconds_per_step']:.2f}" if row.get("seconds_per_step") else "-"
        lines.append(f"| {name} | {overrides} | " + " | ".join([*cells, loss, speed]) + " |")
    lines += ["", "Each step cell: rise with the driving latents zeroed / with the driving masks zeroed."]
    return "\n".join(lines)


def _rises(row: dict | None) -> str:
    if row is None:
        return "-"
    keys = ("rise_driving_latents", "rise_driving_masks", "rise_reference")
    return " / ".join(f"{row[key]:+.1%}" for key in keys if key in row)


def sigma_profile(model_dir: Path, cache: Path, sigmas=PROFILE_SIGMAS) -> dict[str, dict]:
    """str(sigma) -> the driver-dependence scores of the exported transformer at that noise level alone, on the
    cache's first DEPENDENCE_SAMPLES samples with the same noise for every variant (the trainer's check, one level
    at a time)."""
    import torch

    from scail2.data.latent_cache import LatentCache
    from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
    from scail2.train.dependence import ZEROED_INPUTS, driver_dependence

    # the trainer's two variants plus the reference latents zeroed: how much the model reads the stream that sits
    # on the video grid, for comparison
    zeroed = {**ZEROED_INPUTS, "reference": "ref_latents"}

    model = SCAIL2Transformer3DModel.from_pretrained(model_dir / "transformer", torch_dtype=torch.float32).eval()
    data = LatentCache(cache)
    samples = [data[i] for i in range(min(DEPENDENCE_SAMPLES, len(data)))]
    profile = {}
    for sigma in sigmas:
        profile[str(sigma)] = driver_dependence(model, samples, sigmas=(sigma,), zeroed_inputs=zeroed)
    return profile


def profile_markdown(results: dict) -> str:
    """The final models' rises per noise level (zero driving latents / zero driving masks / zero reference)."""
    rows = {name: row["by_sigma"] for name, row in results.get("variants", {}).items() if row.get("by_sigma")}
    if not rows:
        return ""
    sigmas = list(next(iter(rows.values())))
    lines = ["| variant | " + " | ".join(f"sigma {s}" for s in sigmas) + " |", "|---|" + "---:|" * len(sigmas)]
    for name, profile in rows.items():
        lines.append(f"| {name} | " + " | ".join(_rises(profile.get(s)) for s in sigmas) + " |")
    lines += ["", "Each cell: rise with the driving latents / the driving masks / the reference latents zeroed."]
    return "\n".join(lines)


class Sweep:
    def __init__(self, args):
        self.args, self.work = args, args.work
        self.results_path = self.work / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        budget = self.budget()
        if self.results.get("budget", budget) != budget:
            raise Scail2Error(
                f"{self.results_path} holds results of another budget ({self.results['budget']}); "
                "use another --work for this one"
            )
        self.results["budget"] = budget
        self.results.setdefault("variants", {})

    def budget(self) -> dict:
        a = self.args
        return {
            "cache": str(a.cache),
            "config": "configs/demo.yaml",
            "backbone": {a.backbone: BACKBONES[a.backbone]},
            "steps": a.steps,
            "batch_size": 4,
            "lr": a.lr,
            "warmup_steps": 50,
            "dependence_every": a.dependence_every,
            "dependence_samples": DEPENDENCE_SAMPLES,
        }

    def save(self) -> None:
        from scail2.eval.report import write_json

        write_json(self.results_path, self.results)

    def run_name(self, name: str) -> str:
        return name if self.args.seed == 0 else f"{name}-seed{self.args.seed}"

    def train(self, name: str, overrides: list[str]) -> dict:
        from scail2.bundled import bundled_model_dir
        from scail2.cli import main as cli

        a = self.args
        out = self.work / self.run_name(name)
        options = [
            model_override(a.backbone),
            f"model.components={bundled_model_dir()}",
            f"optim.lr={a.lr}",
            "optim.warmup_steps=50",
            "optim.ema_decay=null",
            f"train.max_steps={a.steps}",
            f"train.seed={a.seed}",
            f"train.log_every={a.dependence_every}",
            f"train.checkpoint_every={a.dependence_every}",
            f"train.dependence_every={a.dependence_every}",
            f"train.dependence_samples={DEPENDENCE_SAMPLES}",
            *overrides,
        ]
        resume = ["--resume"] if (out / "checkpoints").exists() else []
        command = ["train", "--config", ROOT / "configs" / "demo.yaml", "--data", a.cache, "--out", out, *resume]
        start, done_before = time.perf_counter(), self.steps_done(out)
        code = cli([str(part) for part in [*command, *options]])
        if code:
            raise SystemExit(f"{name}: scail2 train failed ({code})")
        seconds = time.perf_counter() - start
        steps = max(1, a.steps - done_before)
        return {
            "overrides": overrides,
            "dependence": {str(step): row for step, row in dependence_rows(out / "metrics.jsonl").items()},
            "by_sigma": sigma_profile(out / "export" / "model", a.cache),
            # includes the dependence checks and checkpoints: the cost of this sweep, not of the layout alone
            "seconds_per_step": seconds / steps if done_before < a.steps else None,
        }

    @staticmethod
    def steps_done(out: Path) -> int:
        metrics = out / "metrics.jsonl"
        if not metrics.exists():
            return 0
        return max((json.loads(line)["step"] for line in metrics.read_text().splitlines()), default=0)

    def run(self, variants: dict[str, list[str]]) -> None:
        done = self.results["variants"]
        for name, overrides in variants.items():
            key = self.run_name(name)
            if key in done:
                continue
            print(f"{key}: {' '.join(overrides) or '(no overrides)'}", flush=True)
            done[key] = self.train(name, overrides)
            self.save()
            print(markdown(self.results) + "\n\n" + profile_markdown(self.results), flush=True)

    def profile_missing(self) -> None:
        """Add the per-noise-level rises to variants that finished before the profile existed."""
        for key, row in self.results["variants"].items():
            if "by_sigma" not in row:
                row["by_sigma"] = sigma_profile(self.work / key / "export" / "model", self.args.cache)
                self.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="latent cache with target_masks (scail2 cache, format version 2)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs and results.json (resumes)")
    parser.add_argument("--variants", default="baseline,rope_offset_0,foreground_weight,shift_5")
    parser.add_argument("--extra", action="append", default=[], help="NAME=key=value;key=value (repeatable)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--dependence-every", type=int, default=100)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="medium")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="only print the table of WORK/results.json")
    args = parser.parse_args()
    if args.table:
        if not (args.work / "results.json").is_file():
            parser.error(f"--table: {args.work / 'results.json'} does not exist yet; run the sweep first")
        results = json.loads((args.work / "results.json").read_text())
        print(markdown(results) + "\n\n" + profile_markdown(results))
        return
    if args.cache is None or not (args.cache / "meta.json").exists():
        raise SystemExit(f"--cache {args.cache}: not a latent cache (no meta.json); build one with `scail2 cache`")
    import torch

    try:
        variants = select_variants(args.variants, args.extra)
    except Scail2Error as error:
        parser.error(str(error))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sweep = Sweep(args)
    sweep.profile_missing()
    sweep.run(variants)
    print(markdown(sweep.results) + "\n\n" + profile_markdown(sweep.results))


if __name__ == "__main__":
    main()
