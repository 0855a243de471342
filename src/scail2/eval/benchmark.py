"""The demo benchmark: methods animate held-out procedural pairs and are scored against the ground truth.

A split is a fixed stream of procedural pairs (its own seed, so no identity, scene or motion instance of it was
seen in training). A method maps a `PairSample` to a uint8 video [F, H, W, 3]:

- `copy_reference`: the reference image in every frame (no motion at all);
- `ModelMethod(..., driving="skeleton")`: a model conditioned on stick figures re-rendered from the rig;
- `ModelMethod(..., driving="frames")`: SCAIL-2, conditioned on the driving frames themselves;
- `vae_round_trip`: the ground truth through the VAE, the ceiling any latent model can reach.

Scores per pair (`pair_metrics`): PSNR, SSIM, silhouette IoU (the output's pixels that depart from the empty
scene plate vs the target's character mask), colour error inside the target mask, temporal flicker. They are
averaged per task (animate, replace, multi) and per body plan of the animated characters (`summarise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from scail2.data.pairs import PairSample, ProceduralPairGenerator, SynthConfig, driving_skeleton, target_plate
from scail2.data.world import PLAN_NAMES
from scail2.eval import metrics
from scail2.pipelines.pipeline_scail2 import AnimationInputs, SamplingSettings

# Held-out splits: seeds no training run uses (the demo model trained on seed 1000).
SPLITS = {"test": SynthConfig(height=128, width=128, frames=17, seed=2000),
          "val": SynthConfig(height=128, width=128, frames=17, seed=3000)}
SPLIT_SIZE = 64
METRICS = ("psnr", "ssim", "iou", "colour_error", "flicker")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "iou": True, "colour_error": False, "flicker": False}
# A pixel belongs to the output's character when it departs from the empty scene by more than this (0-255):
# above the VAE's background error (a few levels) and below character/scene contrast.
SILHOUETTE_THRESHOLD = 24.0

Method = Callable[[PairSample], np.ndarray]


def split_pairs(split: str = "test", count: int = SPLIT_SIZE) -> list[PairSample]:
    """The first `count` pairs of a held-out split, generated on the fly (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    generator = ProceduralPairGenerator(SPLITS[split])
    return [generator.generate(index) for index in range(count)]


def copy_reference(sample: PairSample) -> np.ndarray:
    return np.repeat(sample.reference[None], sample.target.shape[0], axis=0)


def pair_inputs(sample: PairSample, driving: str = "frames") -> AnimationInputs:
    """A pair as pipeline inputs; `driving="skeleton"` swaps the driving video for its stick-figure render."""
    from scail2.data.pairs import MASK_BACKGROUNDS, palette_mask
    from scail2.preprocess.resize import image_to_model

    size = sample.reference.shape[:2]
    if driving == "skeleton":
        rendered = driving_skeleton(sample.metadata)
        video, masks = rendered.frames, palette_mask(rendered.ids, MASK_BACKGROUNDS[sample.mode]["driving"])
    else:
        video, masks = sample.driving, sample.driving_mask()
    return AnimationInputs(
        reference=image_to_model(sample.reference, size), reference_mask=image_to_model(sample.reference_mask(), size),
        driving=torch.from_numpy(np.ascontiguousarray(video)), driving_masks=torch.from_numpy(np.ascontiguousarray(masks)),
        mode="replace" if sample.mode == "replacement" else "animate")


@dataclass
class ModelMethod:
    """A SCAIL-2 pipeline run on a pair with fixed sampling settings and seed."""

    pipeline: object
    settings: SamplingSettings
    driving: str = "frames"
    seed: int = 0

    def __call__(self, sample: PairSample) -> np.ndarray:
        result = self.pipeline(pair_inputs(sample, self.driving), self.settings, seed=self.seed, progress=False)
        return result.frames.cpu().numpy()


@dataclass
class VaeRoundTrip:
    """The ground truth encoded and decoded by the model's VAE: the best score a latent model can get."""

    pipeline: object

    @torch.no_grad()
    def __call__(self, sample: PairSample) -> np.ndarray:
        from scail2.pipelines.conditioning import encode_video

        codec = self.pipeline.codec
        latent = encode_video(codec, torch.from_numpy(np.ascontiguousarray(sample.target)))
        video = codec.decode(latent)[0]
        return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def pair_metrics(output: np.ndarray, sample: PairSample, plate: np.ndarray | None = None) -> dict[str, float]:
    """The five scores of one output against its pair's target."""
    if output.shape != sample.target.shape:
        raise ValueError(f"output {list(output.shape)} does not match the target {list(sample.target.shape)}")
    plate = target_plate(sample.metadata) if plate is None else plate
    character = sample.target_ids > 0
    silhouette = metrics.foreground_from_plate(output, plate, SILHOUETTE_THRESHOLD)
    return {"psnr": metrics.psnr(output, sample.target), "ssim": metrics.ssim(output, sample.target),
            "iou": metrics.silhouette_iou(silhouette, character),
            "colour_error": metrics.masked_colour_error(output, sample.target, np.broadcast_to(
                character[..., None], output.shape)),
            "flicker": metrics.temporal_flicker(output, sample.target)}


def pair_groups(sample: PairSample) -> list[str]:
    """The summary groups a pair counts in: all, its task, and the body plan of each animated character."""
    plans = sorted(set(sample.metadata["body_plans"]["reference"]))
    return ["all", f"task:{sample.task}", *(f"plan:{plan}" for plan in plans)]


def evaluate(methods: dict[str, Method], samples: list[PairSample], progress: bool = True,
             on_output: Callable[[str, PairSample, np.ndarray], None] | None = None) -> list[dict]:
    """Every method on every pair: one row per (method, pair) with its scores, groups and seconds."""
    import time

    from tqdm import tqdm

    rows = []
    with tqdm(total=len(methods) * len(samples), disable=not progress, unit="video", desc="eval") as bar:
        for sample in samples:
            plate = target_plate(sample.metadata)
            for name, method in methods.items():
                start = time.perf_counter()
                output = method(sample)
                seconds = time.perf_counter() - start
                if on_output is not None:
                    on_output(name, sample, output)
                rows.append({"method": name, "key": sample.key, "task": sample.task, "groups": pair_groups(sample),
                             "seconds": seconds, **pair_metrics(output, sample, plate)})
                bar.update(1)
    return rows


def summarise(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {group: {metric: mean, "pairs": n}}}, groups ordered all, tasks, body plans."""
    order = ["all", "task:animate", "task:replace", "task:multi", *(f"plan:{p}" for p in PLAN_NAMES)]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        groups = {}
        for group in order:
            members = [row for row in mine if group in row["groups"]]
            if members:
                groups[group] = {"pairs": len(members), **{m: _mean([row[m] for row in members]) for m in METRICS}}
        summary[method] = groups
    return summary


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ------------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------------

METRIC_HEADERS = {"psnr": "PSNR dB ↑", "ssim": "SSIM ↑", "iou": "IoU ↑", "colour_error": "colour err ↓",
                  "flicker": "flicker ↓"}


def markdown_tables(summary: dict, labels: dict[str, str] | None = None) -> str:
    """Two markdown tables: every metric on all pairs and per task, and silhouette IoU / PSNR per body plan."""
    labels = labels or {}
    methods = list(summary)
    lines = ["| method | pairs | " + " | ".join(METRIC_HEADERS[m] for m in METRICS) + " |",
             "|---|---:|" + "---:|" * len(METRICS)]
    tasks = [g for g in ("all", "task:animate", "task:replace", "task:multi") if g in summary[methods[0]]]
    for group in tasks:
        for method in methods:
            scores = summary[method].get(group)
            if scores:
                name = f"{labels.get(method, method)}" + ("" if group == "all" else f" ({group[5:]})")
                lines.append(f"| {name} | {scores['pairs']} | " +
                             " | ".join(_format(scores[m], m) for m in METRICS) + " |")
    plans = [g for g in summary[methods[0]] if g.startswith("plan:")]
    lines += ["", "| body plan (pairs) | " + " | ".join(f"{labels.get(m, m)} IoU / PSNR" for m in methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for group in plans:
        cells = [f"{_format(summary[m][group]['iou'], 'iou')} / {_format(summary[m][group]['psnr'], 'psnr')}"
                 for m in methods]
        lines.append(f"| {group[5:]} ({summary[methods[0]][group]['pairs']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format(value: float, metric: str) -> str:
    return "n/a" if math.isnan(value) else (f"{value:.1f}" if metric in ("psnr", "colour_error") else
                                            f"{value:.2f}" if metric == "flicker" else f"{value:.3f}")


PLOT_COLOURS = [(150, 150, 150), (230, 140, 40), (40, 110, 220), (90, 180, 90), (170, 80, 170)]


def plot_summary(summary: dict, labels: dict[str, str] | None = None,
                 panels: tuple[str, ...] = ("iou", "psnr")) -> np.ndarray:
    """A grouped bar chart [H, W, 3] uint8: one panel per metric, bars per method over all pairs and each body
    plan. Drawn with PIL, so the report needs no plotting library."""
    from PIL import Image, ImageDraw

    labels = labels or {}
    methods = list(summary)
    groups = [g for g in summary[methods[0]] if g == "all" or g.startswith("plan:")]
    bar, gap, panel_h, left, top = 14, 18, 220, 48, 30
    group_w = bar * len(methods) + gap
    width = left + group_w * len(groups) + 20
    height = top + len(panels) * (panel_h + 60) + 20 * len(methods)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for p, metric in enumerate(panels):
        y0 = top + p * (panel_h + 60)
        values = [summary[m][g][metric] for m in methods for g in groups]
        high = max([v for v in values if not math.isnan(v)] + [1e-6])
        scale_max = 1.0 if metric in ("iou", "ssim") else math.ceil(high / 5) * 5
        draw.text((4, y0 - 22), METRIC_HEADERS[metric], fill=(0, 0, 0))
        for tick in np.linspace(0, scale_max, 5):
            y = y0 + panel_h - panel_h * tick / scale_max
            draw.line([(left - 4, y), (width - 10, y)], fill=(225, 225, 225))
            draw.text((4, y - 6), f"{tick:g}", fill=(80, 80, 80))
        for gi, group in enumerate(groups):
            x0 = left + gi * group_w
            for mi, method in enumerate(methods):
                value = summary[method][group][metric]
                if math.isnan(value):
                    continue
                h = panel_h * min(value, scale_max) / scale_max
                draw.rectangle([x0 + mi * bar, y0 + panel_h - h, x0 + (mi + 1) * bar - 2, y0 + panel_h],
                               fill=PLOT_COLOURS[mi % len(PLOT_COLOURS)])
            draw.text((x0, y0 + panel_h + 4), group.removeprefix("plan:")[:9], fill=(0, 0, 0))
    legend_y = top + len(panels) * (panel_h + 60) - 20
    for mi, method in enumerate(methods):
        y = legend_y + 20 * mi
        draw.rectangle([left, y, left + 12, y + 12], fill=PLOT_COLOURS[mi % len(PLOT_COLOURS)])
        draw.text((left + 18, y), labels.get(method, method), fill=(0, 0, 0))
    return np.asarray(image)
