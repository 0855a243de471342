"""What one generation is given, and its encoded forms.

`AnimationInputs` holds tensors at the target size; `from_arrays` and `from_pair` are the one place where
uint8 arrays (a MotionPair sample, a preference build's call) become inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scail2.modes import Mode, parse_mode
from scail2.preprocess.resize import image_to_model


@dataclass
class AnimationInputs:
    """One generation's inputs at the target size (H, W multiples of 32).

    reference: [3, H, W] float in [-1, 1]; reference_mask: [3, H, W] float in [-1, 1] (palette colours);
    driving: [T, H, W, 3] uint8; driving_masks: [T, H, W, 3] uint8 (palette colours);
    extra_references: (image, mask) pairs shaped like reference / reference_mask.
    """

    reference: torch.Tensor
    reference_mask: torch.Tensor
    driving: torch.Tensor
    driving_masks: torch.Tensor
    mode: Mode = "animate"
    prompt: str = ""
    negative_prompt: str = ""
    extra_references: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def from_arrays(
        cls,
        reference: np.ndarray,
        reference_mask: np.ndarray,
        driving: np.ndarray,
        driving_masks: np.ndarray,
        mode: str,
        prompt: str = "",
    ) -> AnimationInputs:
        """uint8 arrays [H, W, 3], [H, W, 3], [T, H, W, 3], [T, H, W, 3] at the driving video's size -> inputs."""
        size = tuple(driving.shape[1:3])
        return cls(
            reference=image_to_model(reference, size),
            reference_mask=image_to_model(reference_mask, size),
            driving=torch.from_numpy(np.array(driving)),
            driving_masks=torch.from_numpy(np.array(driving_masks)),
            mode=parse_mode(mode),
            prompt=prompt,
        )

    @classmethod
    def from_pair(
        cls, pair, driving: np.ndarray | None = None, driving_masks: np.ndarray | None = None, prompt: str = ""
    ) -> AnimationInputs:
        """A MotionPair sample (reference, reference_mask(), driving, driving_mask(), mode) as inputs.

        `driving` / `driving_masks` replace the pair's own driving video and masks (a skeleton render, say).
        """
        return cls.from_arrays(
            pair.reference,
            pair.reference_mask(),
            pair.driving if driving is None else driving,
            pair.driving_mask() if driving_masks is None else driving_masks,
            pair.mode,
            prompt,
        )


@dataclass
class EncodedReference:
    latent: torch.Tensor  # [1, z, 1, h, w]
    mask: torch.Tensor  # [1, 28, 1, h, w]
    image_embeds: torch.Tensor | None  # [1, N_img, image_dim]
    extra_latents: torch.Tensor | None = None  # [1, z, N, h, w]
    extra_masks: torch.Tensor | None = None  # [1, 28, N, h, w]


@dataclass
class SegmentConditions:
    pose_latents: torch.Tensor  # [1, z, T_lat, h/2, w/2]
    driving_masks: torch.Tensor  # [1, 28, T_lat, h/2, w/2]
