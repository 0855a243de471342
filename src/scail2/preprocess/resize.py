"""Target size and resize-and-centre-crop of images and videos (docs/architecture.md, "Latent geometry").

Upstream resizes with torchvision's tensor `resize` (bicubic, antialias on: the a=-0.5 cubic kernel,
also when upscaling), which is `torch.nn.functional.interpolate(mode="bicubic", antialias=True,
align_corners=False)`. The new size is computed with Python float arithmetic and `int()` truncation,
then the centre is cropped. Images are resized as floats in [-1, 1]; videos are resized as uint8
(torchvision computes in float32, clamps, rounds and casts back) and normalised afterwards. Both
orders are kept here because they give different numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from scail2.errors import Scail2Error

# (height, width) of the default 512p landscape target; a portrait reference swaps it.
DEFAULT_TARGET_SIZE = (512, 896)
# H and W must be multiples of this: the pose/mask stream runs at H/2 x W/2 -> H/16 x W/16 latents -> 2x2 patches.
SIZE_MULTIPLE = 32


def choose_target_size(
    reference_hw: tuple[int, int],
    height: int | None = None,
    width: int | None = None,
    *,
    default: tuple[int, int] = DEFAULT_TARGET_SIZE,
    multiple: int = SIZE_MULTIPLE,
) -> tuple[int, int]:
    """The generation size (H, W).

    Explicit `height` and `width` are used as given and must both be positive multiples of
    `multiple`. Otherwise `default` is used with the orientation of the reference image: a portrait
    reference (taller than wide) gets the portrait version, a landscape or square one the landscape.
    """
    if (height is None) != (width is None):
        raise Scail2Error(
            "--height and --width go together; give both (multiples of 32) or neither for the default 512p"
        )
    if height is not None and width is not None:
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % multiple:
                raise Scail2Error(
                    f"--{name} {value} is not a positive multiple of {multiple}; use e.g. "
                    f"{max(multiple, round(value / multiple) * multiple)}"
                )
        return height, width
    ref_h, ref_w = reference_hw
    long_side, short_side = max(default), min(default)
    return (long_side, short_side) if ref_h > ref_w else (short_side, long_side)


def rectangle_crop_geometry(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
    """Upstream's resize size (h, w) and crop offsets (top, left) for a centre crop to `target_hw`."""
    src_h, src_w = source_hw
    tgt_h, tgt_w = target_hw
    if src_w / src_h > tgt_w / tgt_h:
        resized = (tgt_h, int(src_w * tgt_h / src_h))
    else:
        resized = (int(src_h * tgt_w / src_w), tgt_w)
    return resized, (resized[0] - tgt_h) // 2, (resized[1] - tgt_w) // 2


def resize_for_rectangle_crop(images: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic (antialiased) resize so the image covers `target_hw`, then centre crop. Float in, float out.

    `images`: [..., C, H, W] floating point (any leading dims); the result is [..., C, *target_hw] in
    the input dtype. Values are not clamped (bicubic may overshoot), as upstream.
    """
    if not images.is_floating_point():
        raise TypeError(f"resize_for_rectangle_crop expects a float tensor, got {images.dtype}")
    *lead, channels, src_h, src_w = images.shape
    (new_h, new_w), top, left = rectangle_crop_geometry((src_h, src_w), target_hw)
    flat = images.reshape(-1, channels, src_h, src_w)  # [N, C, H, W]
    if (new_h, new_w) != (src_h, src_w):
        flat = F.interpolate(flat, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    cropped = flat[..., top : top + target_hw[0], left : left + target_hw[1]]
    return cropped.reshape(*lead, channels, *target_hw)


def resize_crop_uint8(frames: torch.Tensor | np.ndarray, target_hw: tuple[int, int]) -> torch.Tensor:
    """Resize-and-centre-crop channels-last uint8 frames [..., H, W, C] the way torchvision does for uint8.

    Computed in float32, clamped to [0, 255], rounded and cast back to uint8; returns [..., *target_hw, C].
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8:
        raise TypeError(f"resize_crop_uint8 expects uint8 frames, got {frames.dtype}")
    channels_first = frames.movedim(-1, -3).to(torch.float32)  # [..., C, H, W]
    resized = resize_for_rectangle_crop(channels_first, target_hw)
    return resized.clamp_(0, 255).round_().to(torch.uint8).movedim(-3, -1).contiguous()


def frame_resizer(target_hw: tuple[int, int]) -> Callable[[np.ndarray], torch.Tensor]:
    """A per-frame transform for `read_video(frame_transform=...)`: uint8 [H, W, 3] -> uint8 [*target_hw, 3]."""

    def resize_frame(frame: np.ndarray) -> torch.Tensor:
        return resize_crop_uint8(torch.from_numpy(np.ascontiguousarray(frame)), target_hw)

    return resize_frame


def image_to_model(rgb: torch.Tensor | np.ndarray, target_hw: tuple[int, int]) -> torch.Tensor:
    """An image uint8 [H, W, 3] -> float32 [3, *target_hw] in [-1, 1] as upstream's image path does.

    The order matters: to [0, 1] (ToTensor), then x * 2 - 1, then the float bicubic resize and crop
    (unclamped); the reference image, its mask image and the CLIP input all come from this.
    """
    image = torch.as_tensor(np.array(rgb))  # a copy: decoded images are often read-only arrays
    unit = image.permute(2, 0, 1).to(torch.float32) / 255.0  # [3, H, W]
    return resize_for_rectangle_crop(unit * 2.0 - 1.0, target_hw)
