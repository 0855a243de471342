"""The conditioning streams, encoded alike for generation and for the training latent cache.

driving frames uint8 [T, H, W, 3]  -> half resolution -> VAE -> pose latents  [1, z, T_lat, H/16, W/16]
driving masks  uint8 [T, H, W, 3]  -> half resolution -> 28-channel masks     [1, 28, T_lat, H/16, W/16]
    (with driving_scale 1 the driving streams skip the downscale: [*, T_lat, H/8, W/8])
reference mask float [3, H, W]     -> 28-channel mask of the reference frame  [1, 28, 1, H/8, W/8]
any video      uint8 [T, H, W, 3]  -> VAE -> latents                          [1, z, T_lat, H/8, W/8]
"""

from __future__ import annotations

import torch

from scail2.conditioning.codec import VideoLatentCodec
from scail2.conditioning.geometry import driving_resolution, frames_to_model_video, uint8_to_signed_unit
from scail2.conditioning.masks import compress_mask_to_latent


def encode_driving(codec: VideoLatentCodec, frames: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Driving frames (4n+1 of them) at the target size -> normalised latents at 1/`scale` resolution (the
    transformer's `driving_scale`; 2 is SCAIL-2's half resolution)."""
    return codec.encode(driving_resolution(frames_to_model_video(frames), scale)[None])


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
