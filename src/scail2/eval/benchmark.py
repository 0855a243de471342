"""The demo benchmark: methods animate held-out procedural pairs and are scored against the ground truth.

A split is a fixed stream of procedural pairs (its own seed, so no identity, scene or motion instance of it was
seen in training). A method maps a `PairSample` to a uint8 video [F, H, W, 3]:

- `copy_reference`: the reference image in every frame (no motion at all);
- `ModelMethod(..., driving="skeleton")`: a model conditioned on stick figures re-rendered from the rig;
- `ModelMethod(..., driving="frames")`: SCAIL-2, conditioned on the driving frames themselves;
- `vae_round_trip`: the ground truth through the VAE, the ceiling any latent model can reach;
- `scail2.eval.directanimator.DirectAnimatorMethod`: DirectAnimator on its cues from the driving frames, on
  the animation pairs only (a method's `tasks` attribute names the tasks it runs; the others are skipped).

Scores per pair (`pair_metrics`): PSNR, SSIM, the silhouette score (the output's departure from the empty
scene in the method's own space against the target's character mask, with a 2-px boundary tolerance: see
`scail2.eval.metrics`), motion following (correlation of each character's centre and extent with its
driver's over the clip), colour error inside the target mask, temporal flicker; the old silhouette IoU (raw
plate, no tolerance) is kept beside them for comparison. They are averaged per task (animate, replace, multi)
and per body plan of the animated characters (`summarise`).

A method that decodes through a VAE says so with a `codec` attribute: its silhouette is measured against the
plate's round trip through that codec, since the VAE re-renders the background as well as the character.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from scail2.conditioning import AnimationInputs, encode_video, model_video_to_frames
from scail2.data.pairs import PairSample, ProceduralPairGenerator, SynthConfig, driving_condition, target_plate
from scail2.data.world import PLAN_NAMES, WORLD_PRESETS
from scail2.errors import Scail2Error
from scail2.eval import metrics
from scail2.pipelines.pipeline_scail2 import SamplingSettings

# Held-out splits: seeds no training run uses (the demo model trained on seed 1000).
# The close-up splits draw from the same seeds in the close-up world (characters 80-100 px tall, a following camera),
# the world a model trained on `scail2 synth --world closeup` is scored in.
SPLITS = {
    "test": SynthConfig(height=128, width=128, frames=17, seed=2000),
    "val": SynthConfig(height=128, width=128, frames=17, seed=3000),
    "closeup-test": SynthConfig(height=128, width=128, frames=17, seed=2000, world=WORLD_PRESETS["closeup"]),
    "closeup-val": SynthConfig(height=128, width=128, frames=17, seed=3000, world=WORLD_PRESETS["closeup"]),
}
SPLIT_SIZE = 64
# Clips drawn outside the procedural world (scail2.eval.outside): new shapes on plain backdrops along curved
# paths. They have no rig, so the skeleton-driven baseline cannot run on them.
OUTSIDE_SPLIT = "outside"
OUTSIDE_SIZE = 16
METRICS = ("psnr", "ssim", "silhouette", "path_x", "path_y", "extent_h", "extent_w", "colour_error", "flicker")
# Averaged like the metrics, not ranked: the silhouette score's two halves, the old IoU (raw plate, no
# tolerance) and the part of the flicker on the target's characters (the rest is scenery).
DIAGNOSTICS = ("silhouette_precision", "silhouette_recall", "iou", "flicker_character")
HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "silhouette": True,
    "path_x": True,
    "path_y": True,
    "extent_h": True,
    "extent_w": True,
    "iou": True,
    "colour_error": False,
    "flicker": False,
}
# A pixel belongs to the output's character when it departs from the empty scene by more than this (0-255):
# above the VAE's background error (a few levels) and below character/scene contrast.
SILHOUETTE_THRESHOLD = 24.0

Method = Callable[[PairSample], np.ndarray]


def split_pairs(split: str = "test", count: int = SPLIT_SIZE) -> list[PairSample]:
    """The first `count` pairs of a held-out split, generated on the fly (deterministic)."""
    if split not in SPLITS and split != OUTSIDE_SPLIT:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join([*SPLITS, OUTSIDE_SPLIT])}")
    if count < 1:
        raise Scail2Error(f"--pairs must be at least 1, got {count}")
    if split == OUTSIDE_SPLIT:
        from scail2.eval.outside import outside_pair

        return [outside_pair(index) for index in range(count)]
    generator = ProceduralPairGenerator(SPLITS[split])
    return [generator.generate(index) for index in range(count)]


def copy_reference(sample: PairSample) -> np.ndarray:
    return np.repeat(sample.reference[None], sample.target.shape[0], axis=0)


@dataclass
class ModelMethod:
    """A SCAIL-2 pipeline run on a pair with fixed sampling settings and seed."""

    pipeline: object
    settings: SamplingSettings
    driving: str = "frames"
    seed: int = 0

    @property
    def codec(self):
        return self.pipeline.codec

    def __call__(self, sample: PairSample) -> np.ndarray:
        inputs = AnimationInputs.from_pair(sample, *driving_condition(sample, self.driving))
        result = self.pipeline(inputs, self.settings, seed=self.seed, progress=False)
        return result.frames.cpu().numpy()


@dataclass
class VaeRoundTrip:
    """The ground truth encoded and decoded by the model's VAE: the best score a latent model can get."""

    pipeline: object

    @property
    def codec(self):
        return self.pipeline.codec

    def __call__(self, sample: PairSample) -> np.ndarray:
        return vae_round_trip(self.codec, sample.target)


@torch.no_grad()
def vae_round_trip(codec, video: np.ndarray) -> np.ndarray:
    """A uint8 video [F, H, W, 3] encoded and decoded by `codec`."""
    latent = encode_video(codec, torch.from_numpy(np.ascontiguousarray(video)))
    return model_video_to_frames(codec.decode(latent)[0]).cpu().numpy()


def sample_plate(sample: PairSample) -> np.ndarray:
    """The target's empty scene: re-rendered from a procedural pair's metadata, or an outside clip's backdrop."""
    if "plate_colour" in sample.metadata:
        from scail2.eval.outside import outside_plate

        return outside_plate(sample.metadata)
    return target_plate(sample.metadata)


def method_plate(method: Method, plate: np.ndarray, round_trips: dict | None = None) -> np.ndarray:
    """The empty scene in `method`'s own space: the plate itself, or its round trip through the method's codec
    (memoised in `round_trips`, keyed by VAE, so methods sharing a VAE share one round trip)."""
    codec = getattr(method, "codec", None)
    if codec is None:
        return plate
    round_trips = {} if round_trips is None else round_trips
    key = id(getattr(codec, "vae", codec))  # a pipeline makes a new codec object per call around the same VAE
    if key not in round_trips:
        round_trips[key] = vae_round_trip(codec, plate)
    return round_trips[key]


def pair_metrics(
    output: np.ndarray, sample: PairSample, plate: np.ndarray | None = None, own_plate: np.ndarray | None = None
) -> dict[str, float]:
    """The scores of one output against its pair's target. `plate`: the raw empty scene (the old IoU);
    `own_plate`: the empty scene in the output's own space (default: the raw plate, right for pixel-space
    methods; pass the plate's VAE round trip for a VAE-decoded output)."""
    if output.shape != sample.target.shape:
        raise ValueError(f"output {list(output.shape)} does not match the target {list(sample.target.shape)}")
    plate = sample_plate(sample) if plate is None else plate
    own_plate = plate if own_plate is None else own_plate
    character = sample.target_ids > 0
    raw_foreground = metrics.foreground_from_plate(output, plate, SILHOUETTE_THRESHOLD)
    foreground = metrics.foreground_from_plate(output, own_plate, SILHOUETTE_THRESHOLD)
    overlap = metrics.silhouette_overlap(foreground, character)
    count = len(sample.metadata.get("characters", [])) or int(sample.driving_ids.max(initial=0))
    following = metrics.track_correlations(
        metrics.foreground_tracks(foreground, count), metrics.identity_tracks(sample.driving_ids, count)
    )
    return {
        "psnr": metrics.psnr(output, sample.target),
        "ssim": metrics.ssim(output, sample.target),
        "silhouette": overlap["f"],
        **following,
        "silhouette_precision": overlap["precision"],
        "silhouette_recall": overlap["recall"],
        "iou": metrics.silhouette_iou(raw_foreground, character),
        "colour_error": metrics.masked_colour_error(
            output, sample.target, np.broadcast_to(character[..., None], output.shape)
        ),
        "flicker": metrics.temporal_flicker(output, sample.target),
        "flicker_character": metrics.temporal_flicker(output, sample.target, character),
    }


def pair_groups(sample: PairSample) -> list[str]:
    """The summary groups a pair counts in: all, its task, and the body plan of each animated character."""
    plans = sorted(set(sample.metadata["body_plans"]["reference"]))
    return ["all", f"task:{sample.task}", *(f"plan:{plan}" for plan in plans)]


def evaluate(
    methods: dict[str, Method],
    samples: list[PairSample],
    progress: bool = True,
    on_output: Callable[[str, PairSample, np.ndarray], None] | None = None,
) -> list[dict]:
    """Every method on every pair: one row per (method, pair) with its scores, groups and seconds."""
    import time

    from tqdm import tqdm

    rows = []
    with tqdm(total=len(methods) * len(samples), disable=not progress, unit="video", desc="eval") as bar:
        for sample in samples:
            plate, round_trips = sample_plate(sample), {}
            for name, method in methods.items():
                if sample.task not in getattr(method, "tasks", (sample.task,)):
                    bar.update(1)
                    continue
                start = time.perf_counter()
                output = method(sample)
                seconds = time.perf_counter() - start
                if on_output is not None:
                    on_output(name, sample, output)
                rows.append(
                    {
                        "method": name,
                        "key": sample.key,
                        "task": sample.task,
                        "groups": pair_groups(sample),
                        "seconds": seconds,
                        **pair_metrics(output, sample, plate, method_plate(method, plate, round_trips)),
                    }
                )
                bar.update(1)
    return rows


def driver_dependence(methods: dict[str, Method], samples: list[PairSample], progress: bool = True) -> dict:
    """{method: scail2.train.dependence.driver_dependence(...)} for each model method: how much its flow loss on
    character cells rises when its driving latents, or its driving masks, are zeroed, on `samples` encoded as
    the training cache encodes them (with the method's own driving source)."""
    from tqdm import tqdm

    from scail2.data.latent_cache import CachedSample, CacheEncoder
    from scail2.train.dependence import driver_dependence as measure

    results = {}
    for name, method in methods.items():
        if not isinstance(method, ModelMethod):
            continue
        if hasattr(method, "driver_dependence"):  # a model with its own driving inputs (DirectAnimator's cues)
            results[name] = method.driver_dependence(samples, progress)
            continue
        transformer = method.pipeline.transformer  # its driving inputs are encoded as the model reads them
        encoder = CacheEncoder(
            method.pipeline.vae,
            driving=method.driving,
            driving_scale=transformer.driving_scale,
            driving_signal=transformer.driving_signal,
        )
        cached = [
            CachedSample(s.key, s.task, s.mode, encoder.encode(s))
            for s in tqdm(samples, disable=not progress, unit="pair", desc=f"dependence {name}")
        ]
        results[name] = measure(method.pipeline.transformer, cached, seed=method.seed)
    return results


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
                groups[group] = {
                    "pairs": len(members),
                    **{m: _mean([row[m] for row in members]) for m in METRICS + DIAGNOSTICS},
                }
        summary[method] = groups
    return summary


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
