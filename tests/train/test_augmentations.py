"""The driving-signal augmentation hooks (`flow.augmentations`): each changes only what its name says."""

from __future__ import annotations

import pytest
import torch

from scail2.errors import Scail2Error
from scail2.train.config import check_augmentations
from scail2.train.trainer import AUGMENTATIONS


def driving(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 4, 6, generator=g), torch.rand(28, 3, 4, 6, generator=g)


@pytest.mark.parametrize(
    "name, pose_kept, masks_kept",
    [
        ("latent_noise", False, True),
        ("drop_driving", False, True),
        ("drop_driving_masks", True, False),
        ("mask_jitter", True, False),
    ],
)
def test_each_hook_changes_only_its_own_input(name, pose_kept, masks_kept):
    pose, masks = driving()
    new_pose, new_masks = AUGMENTATIONS[name](pose.clone(), masks.clone(), torch.Generator().manual_seed(1), 0.1)
    assert new_pose.shape == pose.shape and new_masks.shape == masks.shape
    assert torch.equal(new_pose, pose) == pose_kept and torch.equal(new_masks, masks) == masks_kept


def test_dropping_the_masks_zeroes_them_and_keeps_the_latents():
    pose, masks = driving()
    new_pose, new_masks = AUGMENTATIONS["drop_driving_masks"](pose, masks, torch.Generator(), 0.0)
    assert torch.equal(new_pose, pose) and not new_masks.any()
    check_augmentations([{"name": "drop_driving_masks", "probability": 0.3}])
    with pytest.raises(Scail2Error, match="is not an augmentation"):
        check_augmentations([{"name": "drop_masks"}])
