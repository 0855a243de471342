"""Masks for `scail2 animate` when the user gives none, or gives a `scail2 masks` folder.

`driving_palette` returns the driving masks as palette colours at the generation size; `reference_palette`
returns the reference mask at the reference image's size, coloured to match the driving identities.
Both raise Scail2Error with the reason when automatic extraction cannot work (the caller adds how to
give masks by hand).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scail2.errors import Scail2Error
from scail2.preprocess import mask_folder
from scail2.preprocess.masks import identity_colors_present
from scail2.preprocess.segmentation.extract import MaskSettings, MotionMasks, downscaler, reference_identities


def folder_driving_palette(
    folder_path: str | Path, mode: str, num_frames: int, frame_transform: Callable[[np.ndarray], torch.Tensor]
) -> torch.Tensor:
    """The driving masks of a `scail2 masks` folder, resized by `frame_transform`: uint8 [T, H, W, 3]."""
    folder = mask_folder.open_mask_folder(folder_path)
    if folder.num_frames < num_frames:
        raise Scail2Error(
            f"{folder_path}: has {folder.num_frames} mask frames but the driving video has "
            f"{num_frames}; make the masks from the same video (or pass --max-frames)"
        )
    return folder.palette_frames(mode, "driving", max_frames=num_frames, frame_transform=frame_transform)


# Automatic masks inside `scail2 animate` follow the largest moving character: a spurious second track
# would otherwise make the identity counts of reference and driving differ. Several characters: make a
# folder with `scail2 masks --max-characters K`, review it, and pass it as --driving-mask.
ANIMATE_MAX_CHARACTERS = 1


def automatic_driving_palette(
    frames: torch.Tensor, mode: str, max_characters: int = ANIMATE_MAX_CHARACTERS
) -> torch.Tensor:
    """Weight-free driving masks of the (already resized) driving frames uint8 [T, H, W, 3]."""
    settings = MaskSettings(method="motion", max_characters=max_characters)
    transform = downscaler(settings.work_size)
    small = torch.stack([transform(frame.numpy()) for frame in frames])
    masks = MotionMasks(small, settings)
    ids = torch.stack(list(masks.render(frame.numpy() for frame in frames)))
    return mask_folder.identities_to_palette(ids, mode, "driving")


def reference_palette(
    image_path: str | Path,
    rgb: np.ndarray,
    driving_palette: torch.Tensor,
    mode: str,
    folder_path: str | Path | None = None,
    alpha: np.ndarray | None = None,
) -> torch.Tensor:
    """The reference mask (uint8 [H, W, 3]) coloured like the driving masks.

    A `scail2 masks` folder's own reference mask is used when it was made from this very image;
    otherwise the alpha channel (split into characters left to right) or still-image segmentation.
    """
    if folder_path is not None and mask_folder.is_mask_folder(folder_path):
        folder = mask_folder.open_mask_folder(folder_path)
        ids = folder.reference_ids()
        if ids is not None and folder.reference_matches(image_path) and ids.shape == rgb.shape[:2]:
            return mask_folder.identities_to_palette(ids, mode, "reference")
    present = identity_colors_present(driving_palette)
    if list(present) != list(range(len(present))):
        raise Scail2Error(
            "the driving masks do not use the first palette colours in order, so the reference "
            "characters cannot be matched to them automatically"
        )
    ids, _ = reference_identities(rgb, alpha, len(present), str(image_path))
    return mask_folder.identities_to_palette(ids, mode, "reference")
