"""Mask tensors the transformer reads (docs/architecture.md, "Mask channels").

28-channel mask latent   [28, T_lat, h, w]    4 sub-frames x 7 colour planes, area coverage per cell
reference-mask stream    [28, 1 + T_lat, h, w] the compressed reference mask, then zeros
history mask             [4, T_lat, h, w]      ones on latent frames that are clean history
coverage (loss weights)  [C, T_lat, h, w]      per latent cell, the largest area fraction over its frames
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from scail2.conditioning.geometry import TEMPORAL_STRIDE, latent_frame_count
from scail2.preprocess.palette import DETAIL_TAGS, NUM_PLANES, ON_THRESHOLD_UINT8, PLANE_COLORS

# Channels of the compressed mask: 4 sub-frames x 7 colour planes.
MASK_CHANNELS = TEMPORAL_STRIDE * NUM_PLANES
# The i2v mask channels concatenated to each 16-channel latent stream (ones on clean frames).
HISTORY_MASK_CHANNELS = 4


# ---------------------------------------------------------------------------------------------------
# 1. The 28-channel compression
# ---------------------------------------------------------------------------------------------------


def mask_color_planes(mask: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1] -> [T, 7, H, W] float32 binary planes in `PLANE_COLORS` order.

    A channel is ON when its value is strictly above (225 - 127.5) / 127.5, compared in float32
    (so uint8 225 is OFF and 226 is ON, as upstream).
    """
    if mask.dim() != 4 or mask.shape[0] != 3:
        raise ValueError(f"expected a mask [3, T, H, W], got {tuple(mask.shape)}")
    threshold = torch.tensor((ON_THRESHOLD_UINT8 - 127.5) / 127.5, dtype=torch.float32)
    red, green, blue = (mask.to(torch.float32) > threshold).unbind(0)  # each [T, H, W]
    planes = []
    for colour in PLANE_COLORS:
        on = [channel if level else ~channel for channel, level in zip((red, green, blue), colour)]
        planes.append(on[0] & on[1] & on[2])
    return torch.stack(planes, dim=1).to(torch.float32)  # [T, 7, H, W]


def _three_ceil_halvings(size: int) -> int:
    for _ in range(3):
        size = -(-size // 2)
    return size


def compress_mask_to_latent(mask: torch.Tensor) -> torch.Tensor:
    """The 28-channel mask latent: [3, T, H, W] in [-1, 1] (T = 4n+1) -> [28, T_lat, h, w] float32.

    h, w = three ceil-halvings of H, W (H/8 for multiples of 8); cells hold the area coverage of each
    colour plane. Frame 0 is repeated 4 times, then each latent frame packs 4 pixel frames:
    channel = 7 * subframe + colour plane.
    """
    planes = mask_color_planes(mask)  # [T, 7, H, W]
    height, width = planes.shape[-2:]
    return pack_planes_to_latent(planes, (_three_ceil_halvings(height), _three_ceil_halvings(width)))


def pack_planes_to_latent(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Planes [T, C, H, W] (T = 4n+1) -> [4 * C, T_lat, h, w] float32, packed as the VAE packs time: each
    plane's area coverage on the grid `size`, frame 0 repeated 4 times, channel = C * subframe + plane."""
    num_latent = latent_frame_count(planes.shape[0])
    pooled = F.interpolate(planes.float(), size=size, mode="area")  # [T, C, h, w]
    first = pooled[:1].expand(TEMPORAL_STRIDE - 1, -1, -1, -1)
    padded = torch.cat([first, pooled], dim=0)  # [4 * T_lat, C, h, w]
    packed = padded.reshape(num_latent, TEMPORAL_STRIDE * planes.shape[1], *size)  # [T_lat, 4 * C, h, w]
    return packed.permute(1, 0, 2, 3).contiguous()  # [4 * C, T_lat, h, w]


# ---------------------------------------------------------------------------------------------------
# 2. The reference-mask stream and the history mask
# ---------------------------------------------------------------------------------------------------


def reference_mask_tensor(ref_mask: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
    """The reference-mask stream: the ref mask image [3, H, W] in [-1, 1] -> [28, 1 + T_lat, H/8, W/8].

    Frame 0 is the compressed reference mask; the T_lat video frames that follow are zeros.
    """
    if ref_mask.dim() != 3:
        raise ValueError(f"expected a reference mask [3, H, W], got {tuple(ref_mask.shape)}")
    compressed = compress_mask_to_latent(ref_mask.unsqueeze(1))  # [28, 1, h, w]
    zeros = compressed.new_zeros(MASK_CHANNELS, num_latent_frames, *compressed.shape[-2:])
    return torch.cat([compressed, zeros], dim=1)


def history_mask(
    num_latent_frames: int,
    history_latent_frames: int,
    height: int,
    width: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The i2v mask of the noisy stream [4, T_lat, h, w]: ones on the first `history_latent_frames`."""
    if not 0 <= history_latent_frames <= num_latent_frames:
        raise ValueError(f"history of {history_latent_frames} latent frames does not fit in {num_latent_frames}")
    mask = torch.zeros(HISTORY_MASK_CHANNELS, num_latent_frames, height, width, dtype=dtype, device=device)
    mask[:, :history_latent_frames] = 1
    return mask


# ---------------------------------------------------------------------------------------------------
# 3. Coverage maps on the latent grid (training loss weights)
# ---------------------------------------------------------------------------------------------------


def coverage_to_latent(planes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bool/float planes [F, C, H, W] (F = 4n+1) -> coverage [C, T_lat, h, w]: per latent cell the area fraction,
    the largest over the pixel frames that latent frame stands for (frame 0 stands for 4, as in the VAE)."""
    pooled = F.interpolate(planes.float(), size=grid, mode="area")  # [F, C, h, w]
    groups = torch.cat([pooled[:1].expand(TEMPORAL_STRIDE, -1, -1, -1), pooled[1:]])  # [4 * T_lat, C, h, w]
    return groups.unflatten(0, (-1, TEMPORAL_STRIDE)).amax(dim=1).permute(1, 0, 2, 3).contiguous()


def detail_to_latent(detail: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Detail tags [F, H, W] -> coverage [2, T_lat, h, w] of limb ends (0) and face/head (1)."""
    return coverage_to_latent(torch.stack([torch.from_numpy(detail == tag) for tag in DETAIL_TAGS.values()], 1), grid)


def mask_to_latent(ids: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Identity maps [F, H, W] -> character coverage [1, T_lat, h, w] (the foreground loss weight)."""
    return coverage_to_latent(torch.from_numpy(ids > 0)[:, None], grid)
