"""DirectAnimator vs SCAIL-2 at equal (reduced) compute and data, its cheap ablations and its robustness.

    python -m benchmarks.bench_directanimator --work runs/da_bench [--pairs 32] [--size 64] [--frames 9]
        [--stage1-steps 60] [--stage2-steps 60] [--eval-pairs 8] [--sections main,skeleton,ablations,robustness]

The budget (printed and stored with the results): one procedural animation-only training set (`--pairs` pairs
at `--size`^2, `--frames` frames, seed 21) cached once with both cue triplets through the bundled demo model's
VAE; every model is the same small backbone (dim 64, 4 blocks) trained with the same batch size, learning rate
and seed. SCAIL-2 trains `stage1 + stage2` steps on the driving frames; DirectAnimator trains stage 1
(same-identity cues) for `--stage1-steps`, then stage 2 (cross-identity cues + lambda 0.5 S2X) for
`--stage2-steps` from it: the same number of optimiser steps on the same samples. (Per step DirectAnimator's
sequence is shorter, since its cues are added to the video tokens rather than appended, so equal steps give it
fewer FLOPs, not more.)

Scoring is `scail2 eval`'s: the pairs are the test split's seed (2000) drawn at the training size and animation
only, scored with `scail2.eval.benchmark` (silhouette F against each method's own plate, motion following, PSNR,
...) plus the driver-dependence check. Sections, each written to `results.json` in the work folder as it ends
(a rerun skips what is there, and trainings resume from their checkpoints):

    main        copy-reference, SCAIL-2 and DirectAnimator (Same2X stages 1 + 2)
    ablations   DirectAnimator without the face cue, without the location cue (cue masks zeroed), without the
                low-pass filter (a second cache, `--cue-filter none`), without Same2X (stage 2 with lambda 0),
                skeleton instead of pose cue (a cache made with `--cues --driving skeleton`: the pose cue made by
                the same recipe from stick figures re-rendered from the rig, face and location cues unchanged;
                scored with skeleton pose cues too)
    skeleton    the skeleton-driven baseline (SCAIL-2 on stick figures re-rendered from the rig, its own cache
                of the same pairs), same steps as SCAIL-2
    robustness  the main DirectAnimator on degraded driving frames: blurred (Gaussian, sigma 2 px), low
                resolution (a quarter of the side, bilinear back up), darkened (x 0.35); the driving masks stay
                the clean ones (as a segmenter run on the clean video would give); each degraded run is
                scored against the clean pair (`DegradedDriverMethod`). Then a scale mismatch
                between reference and driver: small_driver / large_driver rescale the driving character by
                0.6 / 1/0.6 (`rescale_character`), so the reference is 1/0.6x larger / 0.6x smaller than the
                driver. Only the driver is rescaled: the target is the reference's character at the reference's
                own scale, so it stays the right answer (rescaling the reference instead would make the target
                wrong). The character layer (pixels, identity and detail maps, so the masks follow) is scaled
                about the bottom centre of its box over the whole clip (its feet stay on the ground where they
                were; its motion is scaled with it, as by a camera zoom there), nearest neighbour, and pasted on
                the empty driving scene re-rendered from the pair's metadata (`driving_plate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from scail2.bundled import BUNDLED_SAMPLING, bundled_model_dir
from scail2.cli import main as cli
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.eval.directanimator import DirectAnimatorMethod

ROOT = Path(__file__).resolve().parents[1]
MODEL = (
    "model.overrides={model_type: t2v, text_dim: 16, text_len: 1, dim: 64, ffn_dim: 160, num_heads: 4, "
    "num_layers: 4, cue_modulation_dim: 32}"
)
SCAIL2_MODEL = MODEL.replace(", cue_modulation_dim: 32", "")
TEST_SEED = 2000  # the benchmark's test split
VIDEO_DEGRADATIONS = ("blurred", "low_resolution", "darkened")  # the driving frames alone (`degrade`)
RESCALES = {"small_driver": 0.6, "large_driver": 1 / 0.6}  # the driving character's scale (`rescale_character`)
DEGRADATIONS = (*VIDEO_DEGRADATIONS, *RESCALES)
# name -> (cache, extra stage options, stage-1 run shared with the main model)
ABLATIONS = {
    "no_face_cue": ("cache", ["directanimator.face_cue=false"], False),
    "no_location_cue": ("cache", ["directanimator.location_cue=false"], False),
    "no_low_pass": ("cache_no_filter", [], False),
    "no_same2x": ("cache", ["directanimator.stage2.s2x_weight=0.0"], True),
    "skeleton_pose_cue": ("cache_skeleton_cues", [], False),
}
CACHE_OPTIONS = {
    "cache": ["--cues"],
    "cache_no_filter": ["--cues", "--cue-filter", "none"],
    "cache_skeleton": ["--driving", "skeleton"],
    "cache_skeleton_cues": ["--cues", "--driving", "skeleton"],
}


def run(command: list) -> None:
    code = cli([str(part) for part in command])
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(map(str, command))}")


class Bench:
    def __init__(self, args):
        self.args, self.work = args, args.work
        self.components = bundled_model_dir()
        self.results_path = self.work / args.results
        self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        self.results["budget"] = self.budget()

    def budget(self) -> dict:
        a = self.args
        return {
            "train_pairs": a.pairs,
            "size": a.size,
            "frames": a.frames,
            "model": "dim 64, 4 blocks, 4 heads, ffn 160 (SCAIL-2 and DirectAnimator alike)",
            "batch_size": 4,
            "lr": a.lr,
            "scail2_steps": a.stage1_steps + a.stage2_steps,
            "directanimator_steps": {"stage1": a.stage1_steps, "stage2": a.stage2_steps},
            "eval_pairs": a.eval_pairs,
            "sampling_steps": a.sampling_steps,
        }

    def save(self) -> None:
        from scail2.eval.report import write_json

        write_json(self.results_path, self.results)

    # Data and training ----------------------------------------------------------------------------------------
    def data(self) -> None:
        a = self.args
        if not (self.work / "data" / "manifest.json").exists():
            generator = ProceduralPairGenerator(SynthConfig(a.size, a.size, a.frames, ("animate",), seed=21))
            write_dataset(generator, self.work / "data", a.pairs, shard_size=16, progress=False)

    def cache(self, name: str) -> Path:
        folder = self.work / name
        if not (folder / "meta.json").exists():
            options = CACHE_OPTIONS[name]
            run(["cache", *options, "--data", self.work / "data", "--model", self.components, "--out", folder])
        return folder

    def train(self, out: Path, config: str, cache: Path, options: list) -> Path:
        model = out / "export" / "model"
        if (model / "model_index.json").exists():
            return model
        total = self.args.stage1_steps + self.args.stage2_steps
        common = [f"model.components={self.components}", f"optim.lr={self.args.lr}", "optim.ema_decay=null"]
        common += ["train.log_every=1", f"train.checkpoint_every={max(10, total // 4)}"]
        resume = ["--resume"] if (out / "checkpoints").exists() else []
        start = time.perf_counter()
        run(["train", "--config", ROOT / "configs" / config, "--data", cache, "--out", out, *resume, *common, *options])
        self.results.setdefault("train_seconds", {})[str(out.relative_to(self.work))] = time.perf_counter() - start
        self.save()
        return model

    def scail2(self, name: str = "scail2", cache: str = "cache") -> Path:
        steps = self.args.stage1_steps + self.args.stage2_steps
        options = [SCAIL2_MODEL, f"train.max_steps={steps}", "flow.augmentations=[]"]
        return self.train(self.work / name, "tiny.yaml", self.cache(cache), options)

    def directanimator(self, name: str = "directanimator", cache: str = "cache", extra=(), share_stage1=False):
        a = self.args
        base = [MODEL, *extra]
        stage1_dir = self.work / ("directanimator" if share_stage1 else name) / "stage1"
        stage1 = self.train(
            stage1_dir,
            "directanimator_tiny.yaml",
            self.cache(cache),
            [*base, f"directanimator.stage1.max_steps={a.stage1_steps}"],
        )
        stage2 = [
            "directanimator.stage=2",
            f"directanimator.stage2.from_model={stage1}",
            f"directanimator.stage2.max_steps={a.stage2_steps}",
        ]
        return self.train(self.work / name / "stage2", "directanimator_tiny.yaml", self.cache(cache), [*base, *stage2])

    # Scoring --------------------------------------------------------------------------------------------------
    def pairs(self):
        a = self.args
        generator = ProceduralPairGenerator(SynthConfig(a.size, a.size, a.frames, ("animate",), seed=TEST_SEED))
        return [generator.generate(index) for index in range(a.eval_pairs)]

    def settings(self):
        return dataclasses.replace(BUNDLED_SAMPLING, steps=self.args.sampling_steps, segment_length=self.args.frames)

    def score(self, methods: dict, pairs: list, dependence: bool = True) -> dict:
        from scail2.eval import benchmark

        rows = benchmark.evaluate(methods, pairs, progress=False)
        summary = benchmark.summarise(rows)
        result = {name: dict(summary[name]) for name in summary}  # all, task:animate and each plan:<body plan>
        if dependence:
            for name, values in benchmark.driver_dependence(methods, pairs, progress=False).items():
                result[name]["dependence"] = values
        return result

    def main_section(self) -> None:
        from scail2.animate import load_pipeline
        from scail2.eval import benchmark
        from scail2.eval.directanimator import directanimator_method

        scail2, da = self.scail2(), self.directanimator()
        settings = self.settings()
        methods = {
            "copy_reference": benchmark.copy_reference,
            "scail2": benchmark.ModelMethod(load_pipeline(scail2, torch.device("cpu")), settings),
            "directanimator": directanimator_method(da, settings),
        }
        self.results["main"] = self.score(methods, self.pairs())
        self.save()

    def skeleton_section(self) -> None:
        from scail2.animate import load_pipeline
        from scail2.eval import benchmark

        pipeline = load_pipeline(self.scail2("skeleton", "cache_skeleton"), torch.device("cpu"))
        method = benchmark.ModelMethod(pipeline, self.settings(), driving="skeleton")
        self.results["skeleton"] = self.score({"skeleton": method}, self.pairs())["skeleton"]
        self.save()

    def ablation_section(self) -> None:
        from scail2.eval.directanimator import directanimator_method

        pairs, settings = self.pairs(), self.settings()
        done = self.results.setdefault("ablations", {})
        for name, (cache, extra, share) in ABLATIONS.items():
            if name in done or name not in self.args.ablations.split(","):
                continue
            model = self.directanimator(name, cache, extra, share)
            driving = "skeleton" if "skeleton" in cache else "frames"
            done[name] = self.score({name: directanimator_method(model, settings, driving=driving)}, pairs)[name]
            self.save()

    def robustness_section(self) -> None:
        from scail2.eval.directanimator import directanimator_method

        pairs, settings = self.pairs(), self.settings()
        clean = directanimator_method(self.directanimator(), settings)
        done = self.results.setdefault("robustness", {})
        for name in DEGRADATIONS:
            if name not in done:
                method = DegradedDriverMethod(clean.pipeline, clean.settings, clean.driving, clean.seed, name)
                done[name] = self.score({name: method}, pairs)[name]
                self.save()


@dataclasses.dataclass
class DegradedDriverMethod(DirectAnimatorMethod):
    """DirectAnimator given the pair with its driving video degraded (`degrade_pair`), in generation and in the
    dependence check, but scored against the clean pair: the motion tracks are the original driver's (a
    rescaled driver's vertical motion can fall under the metrics' movement floor)."""

    degradation: str = "blurred"

    def __call__(self, sample) -> np.ndarray:
        return super().__call__(degrade_pair(sample, self.degradation))

    def driver_dependence(self, samples: list, progress: bool = True) -> dict[str, float]:
        return super().driver_dependence([degrade_pair(s, self.degradation) for s in samples], progress)


COLUMNS = ("psnr", "ssim", "silhouette", "path_x", "path_y", "extent_h", "extent_w", "colour_error", "flicker")


def markdown(results: dict) -> str:
    """The results as Markdown tables: one per section present, the driver-dependence rises beside the scores,
    then the main comparison per body plan."""
    from scail2.eval.report import METRIC_HEADERS

    header = "| model | pairs | " + " | ".join(METRIC_HEADERS[m] for m in COLUMNS)
    header += " | rise, zero driving latents | rise, zero driving masks |\n|---|" + "---:|" * (len(COLUMNS) + 3)
    main, ablations = results.get("main", {}), results.get("ablations", {})
    ablations = {**{name: ablations[name] for name in ABLATIONS if name in ablations}, **ablations}  # script order
    sections = {
        "main": {**main, **({"skeleton": results["skeleton"]} if "skeleton" in results else {})},
        "ablations": {"directanimator": main.get("directanimator"), **ablations},
        "robustness": {"clean": main.get("directanimator"), **results.get("robustness", {})},
    }
    out = []
    for title, rows in sections.items():
        rows = {name: row for name, row in rows.items() if row}
        if len(rows) < 2 and title != "main":
            continue
        out += [f"**{title}**", "", header]
        for name, row in rows.items():
            cells = [_cell(row["all"].get(m), m) for m in COLUMNS]
            rises = [row.get("dependence", {}).get(f"rise_driving_{v}") for v in ("latents", "masks")]
            rises = ["-" if r is None else f"{r:+.1%}" for r in rises]
            out.append(f"| {name} | {row['all']['pairs']} | " + " | ".join(cells + rises) + " |")
        out.append("")
    return "\n".join(out + plan_table(sections["main"]))


def plan_table(rows: dict) -> list[str]:
    """Markdown lines: every model's scores per body plan of the animated (reference) character, plan by plan;
    empty when the results hold the "all" group only (results written before the groups were kept)."""
    from scail2.eval.report import METRIC_HEADERS

    plans = list(dict.fromkeys(g for row in rows.values() if row for g in row if g.startswith("plan:")))
    if not plans:
        return []
    out = ["**main, per body plan** (of the animated character)", ""]
    out += ["| body plan | model | pairs | " + " | ".join(METRIC_HEADERS[m] for m in COLUMNS) + " |"]
    out += ["|---|---|" + "---:|" * (len(COLUMNS) + 1)]
    for plan in plans:
        for name, row in rows.items():
            if row and plan in row:
                cells = [_cell(row[plan].get(m), m) for m in COLUMNS]
                out.append(
                    f"| {plan.removeprefix('plan:')} | {name} | {row[plan]['pairs']} | " + " | ".join(cells) + " |"
                )
    return out + [""]


def _cell(value, metric: str) -> str:
    from scail2.eval.report import format_score

    return "n/a" if value is None else format_score(float(value), metric)


def degrade_pair(sample, name: str):
    """A pair with its driving video degraded by `name` (one of DEGRADATIONS); the rest unchanged."""
    from scail2.data.pairs import driving_plate

    if name not in RESCALES:
        return dataclasses.replace(sample, driving=degrade(sample.driving, name))
    frames, ids, detail = rescale_character(
        sample.driving, sample.driving_ids, sample.driving_detail, driving_plate(sample.metadata), RESCALES[name]
    )
    return dataclasses.replace(sample, driving=frames, driving_ids=ids, driving_detail=detail)


def character_anchor(ids: np.ndarray) -> tuple[float, float]:
    """(x, y) in pixels: the bottom centre of the box around every character pixel (ids > 0) of a clip."""
    ys, xs = np.nonzero((ids > 0).any(axis=0))
    if not len(xs):
        return ids.shape[2] / 2, ids.shape[1] / 2
    return (xs.min() + xs.max() + 1) / 2, float(ys.max() + 1)


def rescale_character(frames, ids, detail, plate, factor: float, anchor=None):
    """The characters of a clip (frames [F, H, W, 3], identity and detail maps [F, H, W]) scaled by `factor`
    about `anchor` (x, y pixels; default `character_anchor`), nearest neighbour, over `plate` [F, H, W, 3];
    returns (frames, ids, detail). Parts scaled past the frame are cut."""
    height, width = ids.shape[1:]
    anchor_x, anchor_y = character_anchor(ids) if anchor is None else anchor
    # each output pixel centre reads the source pixel whose centre maps onto it
    source_x = np.floor(anchor_x + (np.arange(width) + 0.5 - anchor_x) / factor).astype(int)
    source_y = np.floor(anchor_y + (np.arange(height) + 0.5 - anchor_y) / factor).astype(int)
    inside = ((source_y >= 0) & (source_y < height))[:, None] & ((source_x >= 0) & (source_x < width))[None, :]
    rows, cols = np.ix_(source_y.clip(0, height - 1), source_x.clip(0, width - 1))
    moved_ids = np.where(inside, ids[:, rows, cols], 0).astype(ids.dtype)
    character = moved_ids > 0
    moved = np.where(character[..., None], frames[:, rows, cols], plate).astype(frames.dtype)
    return moved, moved_ids, np.where(character, detail[:, rows, cols], 0).astype(detail.dtype)


def degrade(video: np.ndarray, name: str) -> np.ndarray:
    """A uint8 driving video [F, H, W, 3] blurred, at low resolution or darkened."""
    from PIL import Image, ImageFilter

    if name not in VIDEO_DEGRADATIONS:
        raise ValueError(f"unknown video degradation {name!r}; choose from {', '.join(VIDEO_DEGRADATIONS)}")
    if name == "darkened":
        return (video.astype(np.float32) * 0.35).round().astype(np.uint8)
    frames = []
    for frame in video:
        image = Image.fromarray(frame)
        if name == "blurred":
            image = image.filter(ImageFilter.GaussianBlur(2))
        else:
            small = (max(1, image.width // 4), max(1, image.height // 4))
            image = image.resize(small, Image.BILINEAR).resize(image.size, Image.BILINEAR)
        frames.append(np.asarray(image))
    return np.stack(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data, caches, runs and results (resumes)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--stage1-steps", type=int, default=60)
    parser.add_argument("--stage2-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-pairs", type=int, default=8)
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--sections", default="main,skeleton,ablations,robustness")
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help="which ablations the section runs")
    parser.add_argument(
        "--results",
        default="results.json",
        help="results file in the work folder (another name lets two processes "
        "run different sections side by side; merge the files' sections afterwards)",
    )
    parser.add_argument("--table", action="store_true", help="only print the Markdown tables of the results file")
    args = parser.parse_args()
    unknown = sorted(set(args.ablations.split(",")) - set(ABLATIONS))
    if unknown:
        parser.error(f"--ablations: unknown {', '.join(unknown)}; choose from {','.join(ABLATIONS)}")
    if args.table:
        print(markdown(json.loads((args.work / args.results).read_text())))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    bench = Bench(args)
    bench.data()
    sections = {
        "main": bench.main_section,
        "skeleton": bench.skeleton_section,
        "ablations": bench.ablation_section,
        "robustness": bench.robustness_section,
    }
    for name in args.sections.split(","):
        if name in ("main", "skeleton") and name in bench.results:
            continue
        sections[name]()
        print(f"{name}: done", flush=True)
    print(markdown(bench.results))


if __name__ == "__main__":
    main()
