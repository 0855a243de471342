"""DirectAnimator in the benchmark: its method (animation pairs only) and its driver-dependence check.

The method runs a DirectAnimator model folder's pipeline on a pair's driving frames: the pipeline extracts the
Driving Cue Triplet from them with the model's own cue settings, as `scail2 animate` does. It scores on the
animation pairs only, since animation is the paper's only mode; the table says so in its label.

The driver-dependence check mirrors SCAIL-2's (`scail2.train.dependence`): the same noise levels, the same noise
per sample and level, the loss on the target's character cells; the pairs are encoded as `scail2 cache --cues`
encodes them and the model gets the cross-identity cues (those of the driving video, as in generation). The
"driving latents" variant zeroes the pose-cue latents, the "driving masks" variant the pose-cue masks (the
location cue of the body); the face cue is left in place in both, so the rise measures the body's driver.

`driving="skeleton"` scores a model trained on a `scail2 cache --cues --driving skeleton` cache (the "skeleton
instead of pose cue" ablation): its pose cue is made from the stick-figure re-render of the driving video, its
face and location cues from the frames, in generation and in the dependence check alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from scail2.conditioning import AnimationInputs
from scail2.data.latent_cache import CachedSample
from scail2.data.pairs import driving_condition
from scail2.errors import Scail2Error
from scail2.eval.benchmark import ModelMethod
from scail2.pipelines.pipeline_directanimator import DirectAnimatorPipeline
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from scail2.train.dependence import DEPENDENCE_SIGMAS, dependence_inputs, driver_dependence

# The SCAIL-2 variant names (so the tables line up) -> the DirectAnimator inputs each one zeroes.
CUE_VARIANTS = {"driving_latents": "pose_cue_latents", "driving_masks": "pose_masks"}
DRIVING_INPUTS = ("pose_latents", "driving_masks", "replace")


@dataclass
class DirectAnimatorMethod(ModelMethod):
    """A DirectAnimator pipeline on a pair's driving frames; animation pairs only."""

    tasks: ClassVar[tuple[str, ...]] = ("animate",)
    cue_side: ClassVar[str] = "cross"

    def __call__(self, sample) -> np.ndarray:
        if self.driving == "frames":
            return super().__call__(sample)
        from scail2.data.cue_cache import skeleton_pose_cue

        inputs = AnimationInputs.from_pair(sample, *driving_condition(sample, "frames"))
        cues = self.pipeline.extract_driving_cues(inputs)
        cues = skeleton_pose_cue(cues, sample.metadata, self.cue_side, self.pipeline.cue_settings)
        result = self.pipeline(inputs, self.settings, seed=self.seed, progress=False, cues=cues)
        return result.frames.cpu().numpy()

    def driver_dependence(self, samples: list, progress: bool = True) -> dict[str, float]:
        from tqdm import tqdm

        from scail2.data.cue_cache import CueCacheEncoder

        encoder = CueCacheEncoder(self.pipeline.vae, cue_settings=self.pipeline.cue_settings, driving=self.driving)
        animated = [s for s in samples if s.task in self.tasks]
        cached = [
            CachedSample(s.key, s.task, s.mode, encoder.encode(s))
            for s in tqdm(animated, disable=not progress, unit="pair", desc="dependence directanimator")
        ]
        return cue_driver_dependence(self.pipeline.transformer, cached, seed=self.seed, side=self.cue_side)


def directanimator_method(
    folder: str | Path, settings: SamplingSettings, seed: int = 0, driving: str = "frames"
) -> DirectAnimatorMethod:
    """The benchmark method of a DirectAnimator model folder (`--directanimator-model`); `driving="skeleton"`
    for a model trained on skeleton pose cues."""
    from scail2.animate import load_pipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise Scail2Error(
            f"--directanimator-model {folder} has no model_index.json; give the export/model folder of a "
            "`scail2 train --recipe directanimator` run"
        )
    pipeline = load_pipeline(folder, torch.device("cpu"))
    if not isinstance(pipeline, DirectAnimatorPipeline):
        raise Scail2Error(
            f"--directanimator-model {folder} is a {type(pipeline).__name__} folder, not a DirectAnimator one; "
            "pass SCAIL-2 models with --model"
        )
    return DirectAnimatorMethod(pipeline, settings, driving=driving, seed=seed)


def cue_case(sample: CachedSample, sigma: float, generator: torch.Generator, text_dim: int, side: str) -> dict:
    """`dependence_inputs` of one cached cue sample with the driving stream swapped for `side`'s cues."""
    case = dependence_inputs(sample, sigma, generator, text_dim)
    inputs = {k: v for k, v in case["inputs"].items() if k not in DRIVING_INPUTS}
    t = sample.tensors
    for name, field in (
        ("pose_cue_latents", "pose_latents"),
        ("pose_masks", "pose_masks"),
        ("face_cue_latents", "face_latents"),
        ("face_masks", "face_masks"),
    ):
        key = f"{side}_{field}"
        if key not in t:
            raise Scail2Error(f"sample {sample.key}: no {key} in the cache; build it with `scail2 cache --cues`")
        inputs[name] = t[key].float()
    return {**case, "inputs": inputs}


@torch.no_grad()
def cue_driver_dependence(
    model,
    samples: list[CachedSample],
    sigmas: tuple[float, ...] = DEPENDENCE_SIGMAS,
    seed: int = 0,
    side: str = "cross",
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """`scail2.train.dependence.driver_dependence`'s result for a DirectAnimator model: the character-cell loss
    intact and with the pose-cue latents or the pose-cue masks zeroed (same noise and levels as SCAIL-2's)."""
    if not samples:
        raise Scail2Error("the driver-dependence check needs at least one animation pair")
    return driver_dependence(
        model,
        samples,
        sigmas,
        seed,
        autocast_dtype,
        make_case=functools.partial(cue_case, side=side),
        zeroed_inputs=CUE_VARIANTS,
    )
