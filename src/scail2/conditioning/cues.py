"""DirectAnimator's driving cues as model inputs, encoded alike for generation and for the training cache.

pose cue video uint8 [T, H, W, 3]  -> VAE -> pose_latents  [1, z, T_lat, H/8, W/8]
body mask      uint8 [T, H, W]     -> packed soft mask     [1, 4, T_lat, H/8, W/8]
face cue video uint8 [T, H, W, 3]  -> VAE -> face_latents  [1, z, T_lat, H/8, W/8]
face mask      uint8 [T, H, W]     -> packed soft mask     [1, 4, T_lat, H/8, W/8]

A soft mask is packed like the VAE packs time: each cell's coverage (area mean of the 0..255 values / 255) per
pixel frame, frame 0 repeated 4 times, then 4 pixel frames per latent frame as 4 channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scail2.conditioning.codec import VideoLatentCodec
from scail2.conditioning.geometry import pad_frames
from scail2.conditioning.masks import pack_planes_to_latent
from scail2.conditioning.streams import encode_video
from scail2.preprocess.cues import DrivingCues


@dataclass
class CueConditions:
    pose_latents: torch.Tensor  # [1, z, T_lat, h, w]
    pose_masks: torch.Tensor  # [1, 4, T_lat, h, w]
    face_latents: torch.Tensor | None  # [1, z, T_lat, h, w]; None without a face cue
    face_masks: torch.Tensor | None  # [1, 4, T_lat, h, w]

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """The transformer's keyword arguments."""
        return {
            "pose_cue_latents": self.pose_latents,
            "pose_masks": self.pose_masks,
            "face_cue_latents": self.face_latents,
            "face_masks": self.face_masks,
        }


def pack_soft_mask(mask: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Soft mask uint8 [T, H, W] (T = 4n+1) -> float32 [4, T_lat, h, w] in [0, 1] on the latent grid (h, w)."""
    frames = torch.as_tensor(np.asarray(mask)).float()[:, None] / 255  # [T, 1, H, W]
    return pack_planes_to_latent(frames, grid)


def pad_cues(cues: DrivingCues, length: int) -> DrivingCues:
    """The cues with their last frame repeated up to `length` frames (a segment's padding)."""
    padded = {name: pad_frames(torch.from_numpy(np.array(a)), length).numpy() for name, a in vars(cues).items()}
    return DrivingCues(**padded)


def encode_cues(codec: VideoLatentCodec, cues: DrivingCues, face: bool = True) -> CueConditions:
    """Cues of 4n+1 frames at the target size -> normalised cue latents and packed soft masks (batch 1)."""
    pose = encode_video(codec, torch.from_numpy(np.array(cues.pose)))
    grid = tuple(pose.shape[-2:])
    pose_masks = pack_soft_mask(cues.body_mask, grid)[None].to(pose.device)
    if not face:
        return CueConditions(pose, pose_masks, None, None)
    face_latents = encode_video(codec, torch.from_numpy(np.array(cues.face)))
    face_masks = pack_soft_mask(cues.face_mask, grid)[None].to(pose.device)
    return CueConditions(pose, pose_masks, face_latents, face_masks)
