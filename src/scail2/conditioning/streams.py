"""The conditioning streams, encoded alike for generation and for the training latent cache.

driving frames uint8 [T, H, W, 3]  -> half resolution -> VAE -> pose latents  [1, z, T_lat, H/16, W/16]
driving masks  uint8 [T, H, W, 3]  -> half resolution -> 28-channel masks     [1, 28, T_lat, H/16, W/16]
    (with driving_scale 1 the driving streams skip the downscale: [*, T_lat, H/8, W/8])
    (with driving_signal "pose_cue" the frames become DirectAnimator's pose cue of their characters first)
reference mask float [3, H, W]     -> 28-channel mask of the reference frame  [1, 28, 1, H/8, W/8]
any video      uint8 [T, H, W, 3]  -> VAE -> latents                          [1, z, T_lat, H/8, W/8]
"""

from __future__ import annotations

import torch

from scail2.conditioning.codec import VideoLatentCodec
from scail2.conditioning.geometry import driving_resolution, frames_to_model_video, uint8_to_signed_unit
from scail2.conditioning.masks import compress_mask_to_latent
from scail2.errors import Scail2Error
from scail2.modes import parse_mode

# What the driving latents encode (the transformer's `driving_signal`): "frames" is the driving video as it is
# (SCAIL-2); "pose_cue" is DirectAnimator's pose cue of it (scail2.preprocess.cues.pose_cue with the default
# CueSettings: the characters, grey and low-pass filtered on a mid-grey background), which keeps silhouette and
# limb layout and drops the driver's colours and texture. In animation it drops the driver's scene too; in
# replacement the target keeps that scene, so the cue is pasted into the driving frames over the characters.
DRIVING_SIGNALS = ("frames", "pose_cue")


def check_driving_signal(signal: str) -> str:
    """`signal` itself when it is one of DRIVING_SIGNALS; anything else is a ValueError."""
    if signal not in DRIVING_SIGNALS:
        raise ValueError(f"driving_signal must be one of {DRIVING_SIGNALS}, got {signal!r}")
    return signal


def driving_signal_frames(
    frames: torch.Tensor, masks: torch.Tensor | None, signal: str = "frames", mode: str = "animate"
) -> torch.Tensor:
    """uint8 driving frames [T, H, W, 3] -> the uint8 frames the VAE encodes for `signal`; "pose_cue" needs the
    palette masks [T, H, W, 3] (their characters are the cue's foreground) and, in `mode` "replace", keeps the
    frames outside them."""
    if check_driving_signal(signal) == "frames":
        return frames
    if masks is None:
        raise Scail2Error("a model with driving_signal 'pose_cue' needs the driving masks to make its pose cue")
    from scail2.preprocess.cue_settings import CueSettings
    from scail2.preprocess.cues import pose_cue
    from scail2.preprocess.mask_folder import palette_to_identities

    foreground = palette_to_identities(masks) > 0  # [T, H, W]
    cue = torch.from_numpy(pose_cue(frames.numpy(), foreground.numpy(), CueSettings()))
    return torch.where(foreground[..., None], cue, frames) if parse_mode(mode) == "replace" else cue


def encode_driving(
    codec: VideoLatentCodec,
    frames: torch.Tensor,
    scale: int = 2,
    signal: str = "frames",
    masks: torch.Tensor | None = None,
    mode: str = "animate",
) -> torch.Tensor:
    """Driving frames (4n+1 of them) at the target size -> normalised latents at 1/`scale` resolution (the
    transformer's `driving_scale`; 2 is SCAIL-2's half resolution) of the transformer's `driving_signal`
    (`masks`: the palette masks, which "pose_cue" needs; `mode`: the generation's, which "pose_cue" follows)."""
    video = frames_to_model_video(driving_signal_frames(frames, masks, signal, mode))
    return codec.encode(driving_resolution(video, scale)[None])


def compress_driving_masks(masks: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Palette masks (4n+1 frames) at the target size -> the 28-channel driving masks at 1/`scale` resolution."""
    signed = uint8_to_signed_unit(masks).permute(3, 0, 1, 2)  # [3, T, H, W]
    return compress_mask_to_latent(driving_resolution(signed, scale))[None]


def compress_reference_mask(mask: torch.Tensor) -> torch.Tensor:
    """Reference mask [3, H, W] in [-1, 1] -> its 28-channel frame [1, 28, 1, H/8, W/8]."""
    return compress_mask_to_latent(mask[:, None])[None]


def encode_video(codec: VideoLatentCodec, frames: torch.Tensor) -> torch.Tensor:
    """Frames uint8 [T, H, W, 3] -> normalised latents [1, z, T_lat, H/8, W/8]."""
    return codec.encode(frames_to_model_video(frames)[None])
