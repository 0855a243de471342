"""Latent-cache records for DirectAnimator's Same2X training: the SCAIL-2 record plus two cue triplets.

Each MotionPair animation sample gives both of Same2X's conditions for one real target video:

    same-ID cues   from the target video itself (its own motion and face)       stage 1, and the S2X teacher
    cross-ID cues  from the driving video (the same motion by another identity) stage 2's student

Tensors added to a record (z latent channels, T latent frames, h x w latent grid; cue masks packed 4 per frame):
    {same,cross}_pose_latents [z, T, h, w]   {same,cross}_pose_masks [4, T, h, w]
    {same,cross}_face_latents [z, T, h, w]   {same,cross}_face_masks [4, T, h, w]

Head boxes come from the procedural rig's face/head tags. `scail2 cache --cues` writes such a cache; its
meta.json holds the cue settings, which the exported DirectAnimator model folder keeps.

`scail2 cache --cues --driving skeleton` (the "skeleton instead of pose cue" ablation): each side's pose cue is
made by the same recipe (foreground on mid-grey, grey, low-pass) from the stick figures re-rendered from the
rig (`driving_skeleton` for the cross side, `target_skeleton` for the same side) instead of from the frames; the
face and location cues stay those of the frames, so only the pose cue changes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from scail2.conditioning.cues import encode_cues
from scail2.data.latent_cache import CacheEncoder
from scail2.data.pairs import driving_skeleton, target_skeleton
from scail2.errors import Scail2Error
from scail2.preprocess.cue_settings import CueSettings
from scail2.preprocess.cues import DrivingCues, extract_cues, pose_cue

CUE_SIDES = ("same", "cross")
CUE_FIELDS = ("pose_latents", "pose_masks", "face_latents", "face_masks")
SKELETON_RENDERS = {"same": target_skeleton, "cross": driving_skeleton}


def cue_field_names(side: str) -> list[str]:
    return [f"{side}_{name}" for name in CUE_FIELDS]


class CueCacheEncoder(CacheEncoder):
    """`CacheEncoder` whose records also hold the same-ID and cross-ID cue triplets (animation samples only)."""

    def __init__(self, *args, cue_settings: CueSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cue_settings = cue_settings or CueSettings()

    def describe(self) -> dict:
        return {**super().describe(), "cues": self.cue_settings.to_json()}

    @torch.no_grad()
    def encode(self, sample) -> dict[str, torch.Tensor]:
        if sample.task != "animate":
            raise Scail2Error(
                f"sample {sample.key} is a {sample.task!r} pair; DirectAnimator trains on animation pairs only: "
                "synthesise the dataset with `scail2 synth --tasks animate`"
            )
        record = super().encode(sample)
        sources = {
            "same": (sample.target, sample.target_ids, sample.target_detail),
            "cross": (sample.driving, sample.driving_ids, sample.driving_detail),
        }
        for side, (frames, ids, detail) in sources.items():
            cues = extract_cues(np.asarray(frames), np.asarray(ids), self.cue_settings, detail=np.asarray(detail))
            if self.driving == "skeleton":
                cues = skeleton_pose_cue(cues, sample.metadata, side, self.cue_settings)
            encoded = encode_cues(self.codec, cues)
            values = (encoded.pose_latents, encoded.pose_masks, encoded.face_latents, encoded.face_masks)
            for name, value in zip(cue_field_names(side), values):
                dtype = self.dtype if name.endswith("latents") else torch.float32
                record[name] = value[0].detach().to("cpu", dtype).contiguous()
        return record


def skeleton_pose_cue(cues: DrivingCues, metadata: dict, side: str, settings: CueSettings) -> DrivingCues:
    """`cues` with the pose cue made from the stick-figure re-render of `side`'s video (a procedural pair's
    `metadata`): the skeleton's drawn bones are the foreground, filtered by the same recipe as the frames'."""
    skeleton = SKELETON_RENDERS[side](metadata)
    return dataclasses.replace(cues, pose=pose_cue(skeleton.frames, skeleton.ids > 0, settings))
