"""DirectAnimatorPipeline: SCAIL2Pipeline's steps with DirectAnimator's driving cues in place of the driving stream.

The steps are SCAIL2Pipeline's (prompts, reference, segments and their noise, denoising with clean history,
decoding, stitching, memory settings), except:

    0. extract_driving_cues   the Driving Cue Triplet of the whole driving video, once (or the caller's cues)
    5. prepare_segment        the segment's cues, padded, VAE-encoded, masks packed (`CueConditions`)
    6. build_velocity_fn      the DirectAnimator transformer over the reference and the segment's cues

Animation mode only (the paper's only mode). The cue settings the model was trained with are part of the
pipeline's config (`model_index.json`, `cue_settings`), so generation extracts cues exactly as training did.
"""

from __future__ import annotations

import numpy as np
import torch

from scail2.conditioning import EncodedReference, history_mask
from scail2.conditioning.cues import CueConditions, encode_cues, pad_cues
from scail2.errors import Scail2Error
from scail2.models.transformer_directanimator import DirectAnimatorTransformer3DModel
from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline, guided_velocity
from scail2.pipelines.segments import Segment
from scail2.preprocess.cue_folder import read_cue_folder
from scail2.preprocess.cue_settings import CueSettings
from scail2.preprocess.cues import DrivingCues, cues_at_size
from scail2.preprocess.face_detect import extract_cues_with
from scail2.preprocess.mask_folder import palette_to_identities

PIPELINE_CLASS_NAME = "DirectAnimatorPipeline"


def cue_velocity(
    transformer,
    device: torch.device,
    reference: EncodedReference,
    conditions: CueConditions,
    text: torch.Tensor,
    history_frames: int = 0,
    autocast_dtype: torch.dtype | None = None,
    cfg_mode: str = "batched",
):
    """The DirectAnimator transformer over one segment's cues as `velocity(latent, timestep)` (see
    `scail2.pipelines.pipeline_scail2.transformer_velocity` for `text` and `cfg_mode`)."""
    frames, (height, width) = conditions.pose_latents.shape[2], reference.latent.shape[-2:]
    on_device = lambda t: None if t is None else t.to(device)  # noqa: E731
    zeros = reference.mask.new_zeros(1, reference.mask.shape[1], frames, height, width)
    shared = dict(
        ref_latents=on_device(reference.latent),
        ref_masks=on_device(torch.cat([reference.mask, zeros], 2)),
        image_embeds=on_device(reference.image_embeds),
        **{name: on_device(value) for name, value in conditions.model_inputs().items()},
    )
    if history_frames:
        shared["history_mask"] = history_mask(frames, history_frames, height, width, device=device)[None]
    return guided_velocity(transformer, device, shared, text, autocast_dtype, cfg_mode)


class DirectAnimatorPipeline(SCAIL2Pipeline):
    r"""Skeleton-free character animation with DirectAnimator's cues on the SCAIL-2 backbone.

    Components as SCAIL2Pipeline's, with a `DirectAnimatorTransformer3DModel`; `cue_settings` (a dict of
    `CueSettings` fields) is saved in model_index.json. Call it like SCAIL2Pipeline, in animation mode; `cues`
    (a `DrivingCues` at the target size, e.g. read from a `scail2 cues` folder) replaces the extraction.
    """

    def __init__(
        self,
        transformer: DirectAnimatorTransformer3DModel,
        vae,
        text_encoder=None,
        tokenizer=None,
        image_encoder=None,
        cue_settings: dict | None = None,
    ):
        super().__init__(transformer, vae, text_encoder, tokenizer, image_encoder)
        self.register_to_config(cue_settings=dict(cue_settings or CueSettings().to_json()))
        self._cues: DrivingCues | None = None

    @property
    def cue_settings(self) -> CueSettings:
        return CueSettings(**self.config.cue_settings)

    # 0. -----------------------------------------------------------------------------------------------------
    def extract_driving_cues(self, inputs, face_detector: str = "mask") -> DrivingCues:
        """The cue triplet of `inputs.driving` from its palette masks, with the pipeline's cue settings; head
        boxes from the top of the masks or from `face_detector` (`scail2.preprocess.face_detect`)."""
        ids = palette_to_identities(inputs.driving_masks).numpy()
        return extract_cues_with(np.asarray(inputs.driving), ids, self.cue_settings, face_detector)[0]

    # 1. -----------------------------------------------------------------------------------------------------
    def check_inputs(self, inputs, image_embeds: torch.Tensor | None = None) -> None:
        super().check_inputs(inputs, image_embeds)
        if inputs.mode != "animate":
            raise Scail2Error(f"DirectAnimator models animate only; got mode {inputs.mode!r} (use --mode animate)")
        if inputs.extra_references:
            raise Scail2Error("DirectAnimator models take one reference image; leave out --extra-ref")

    def check_cues(self, cues: DrivingCues, inputs) -> None:
        frames, height, width = inputs.driving.shape[:3]
        if cues.pose.shape != (frames, height, width, 3):
            raise Scail2Error(
                f"the driving cues are {list(cues.pose.shape)} but the driving video is {[frames, height, width, 3]}; "
                "make the cues from this video at the generation size"
            )

    # 5. -----------------------------------------------------------------------------------------------------
    def prepare_segment(self, inputs, segment: Segment) -> CueConditions:
        """The cues of one segment (padded to its length) -> cue latents and packed soft masks."""
        window = slice(segment.start, segment.start + segment.real_frames)
        cues = pad_cues(self._cues.frames(window), segment.length)
        return encode_cues(self.codec, cues)

    # 6. -----------------------------------------------------------------------------------------------------
    def build_velocity_fn(
        self,
        reference: EncodedReference,
        conditions: CueConditions,
        text: torch.Tensor,
        replace: bool,
        history_frames: int = 0,
        autocast_dtype: torch.dtype | None = None,
        cfg_mode: str | None = None,
    ):
        device = self._execution_device
        cfg_mode = self.guidance_mode(cfg_mode or self.memory.cfg_mode, text.shape[0], conditions, reference)
        return cue_velocity(
            self.transformer, device, reference, conditions, text, history_frames, autocast_dtype, cfg_mode
        )

    @torch.no_grad()
    def __call__(self, inputs, settings: SamplingSettings | None = None, *args, cues=None, **kwargs):
        """SCAIL2Pipeline's call (same arguments and result), after the driving cues are extracted once (or
        `cues` checked and used)."""
        self.check_inputs(inputs, kwargs.get("image_embeds"))
        if cues is not None:
            self.check_cues(cues, inputs)
        self._cues = cues if cues is not None else self.extract_driving_cues(inputs)
        try:
            return super().__call__(inputs, settings or SamplingSettings(), *args, **kwargs)
        finally:
            self._cues = None


def read_cues_for(pipeline: DirectAnimatorPipeline, folder, size: tuple[int, int], frames: int) -> DrivingCues:
    """A `scail2 cues` folder for this pipeline: made with the model's cue settings, at least `frames` frames
    (the first ones are used), resized to the generation `size`."""
    cues, meta = read_cue_folder(folder)
    if meta.get("settings") != pipeline.cue_settings.to_json():
        raise Scail2Error(
            f"{folder}: made with cue settings {meta.get('settings')} but the model was trained with "
            f"{pipeline.cue_settings.to_json()}; re-run `scail2 cues` with the model's settings"
        )
    if cues.num_frames < frames:
        raise Scail2Error(f"{folder}: has {cues.num_frames} frames but the driving video has {frames}")
    return cues_at_size(cues.frames(slice(0, frames)), size)


def pipeline_class_for(model_index: dict) -> type[SCAIL2Pipeline]:
    """The pipeline class a model folder's model_index.json names (SCAIL2Pipeline unless DirectAnimator)."""
    return DirectAnimatorPipeline if model_index.get("_class_name") == PIPELINE_CLASS_NAME else SCAIL2Pipeline
