"""Latent geometry of the Wan VAE and the driving stream (docs/architecture.md, "Latent geometry").

    pixel frames T = 4n + 1          latent frames T_lat = (T - 1) / 4 + 1  (frame 0 stands alone)
    pixels H x W                     latent grid H/8 x W/8
    driving stream at H/2 x W/2      driving latent grid H/16 x W/16   (driving_scale 2, SCAIL-2)
    driving stream at H x W          driving latent grid H/8 x W/8     (driving_scale 1)

The driving tokens are appended after the video's (`driving_injection` "append", SCAIL-2) or, at driving_scale 1,
added to the video token at their own position ("add"), so a small model reads the driver where it draws.

Pixel tensors the model sees are float32 in [-1, 1], channels first ([3, T, H, W]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Pixel frames per latent frame along time (the causal VAE keeps frame 0 on its own).
TEMPORAL_STRIDE = 4
# Pixels per latent cell along each spatial side.
SPATIAL_STRIDE = 8
# Divisors of the driving stream's resolution: 2 is SCAIL-2's half resolution (what the official weights were
# trained on, the default everywhere); 1 keeps the video's resolution, so small models get one driving token per
# video token. The transformer's `driving_scale` config field picks one; everything that encodes driving inputs
# reads it from there.
DRIVING_SCALES = (1, 2)
# Where the driving tokens enter the sequence: "append" gives them their own positions after the video's
# (SCAIL-2); "add" sums each with the video token on the same grid cell, which needs driving_scale 1 and leaves
# the sequence the length of the reference and video alone.
DRIVING_INJECTIONS = ("append", "add")


def latent_frame_count(num_frames: int) -> int:
    """T_lat for T = 4n + 1 pixel frames; any other count is a ValueError."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"the video needs 4n+1 frames, got {num_frames}")
    return (num_frames - 1) // TEMPORAL_STRIDE + 1


def valid_length(num_frames: int) -> int:
    """The smallest 4n + 1 >= num_frames (the length a shorter clip is padded to)."""
    return (num_frames - 1 + TEMPORAL_STRIDE - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1


def latent_grid(height: int, width: int) -> tuple[int, int]:
    """(h, w) of the latent grid for pixels height x width."""
    return height // SPATIAL_STRIDE, width // SPATIAL_STRIDE


def uint8_to_signed_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1] as upstream's video path does: (v - 127.5) / 127.5."""
    return (frames.to(torch.float32) - 127.5) / 127.5


def frames_to_model_video(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] (already at the target size) -> float32 video [3, T, H, W] in [-1, 1]."""
    return uint8_to_signed_unit(frames).permute(3, 0, 1, 2).contiguous()


def model_video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """float video [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3] (rounded, clamped)."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def half_resolution(video: torch.Tensor) -> torch.Tensor:
    """The half-resolution driving stream: bilinear x0.5 (align_corners=False) over the last two dims.

    At an exact 1/2 ratio this is the mean of each 2x2 block. Works for [..., H, W] with even H, W.
    """
    *lead, height, width = video.shape
    if height % 2 or width % 2:
        raise ValueError(f"half_resolution needs even sides, got {height}x{width}")
    flat = video.reshape(1, -1, height, width)  # [1, N, H, W]
    half = F.interpolate(flat, scale_factor=0.5, mode="bilinear", align_corners=False)
    return half.reshape(*lead, height // 2, width // 2)


def check_driving_scale(scale: int) -> int:
    """`scale` itself when it is one of DRIVING_SCALES; anything else is a ValueError."""
    if scale not in DRIVING_SCALES:
        raise ValueError(f"driving_scale must be one of {DRIVING_SCALES}, got {scale!r}")
    return scale


def check_driving_injection(injection: str, scale: int) -> str:
    """`injection` itself when it is one of DRIVING_INJECTIONS and fits `scale`; anything else is a ValueError."""
    if injection not in DRIVING_INJECTIONS:
        raise ValueError(f"driving_injection must be one of {DRIVING_INJECTIONS}, got {injection!r}")
    if check_driving_scale(scale) != 1 and injection == "add":
        raise ValueError(
            f"driving_injection 'add' needs driving_scale 1 (one driving token per video token), got {scale}"
        )
    return injection


def driving_resolution(video: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """A video [..., H, W] at the driving stream's resolution: `half_resolution` for scale 2, as is for 1."""
    return half_resolution(video) if check_driving_scale(scale) == 2 else video


def driving_latent_grid(height: int, width: int, scale: int = 2) -> tuple[int, int]:
    """(h, w) of the driving latent grid for pixels height x width at `scale` (H/16 x W/16 for scale 2)."""
    h, w = latent_grid(height, width)
    return h // check_driving_scale(scale), w // scale


def pad_frames(frames: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat the last frame (axis 0) until there are `length` frames: a segment's padding to 4n + 1."""
    missing = length - frames.shape[0]
    return frames if missing <= 0 else torch.cat([frames, frames[-1:].expand(missing, *frames.shape[1:])])
