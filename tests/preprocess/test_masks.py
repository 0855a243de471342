"""User-mask clean-up into palette colours and the identity binding between reference and driving masks."""

from __future__ import annotations

import pytest
import torch

from scail2.errors import Scail2Error
from scail2.preprocess.masks import (
    background_color,
    binary_to_palette,
    check_identity_binding,
    detect_mask_kind,
    identity_colors_present,
    mask_from_alpha,
    normalize_user_mask,
    snap_to_palette,
)
from scail2.preprocess.palette import IDENTITY_COLORS

BLUE, RED, WHITE, YELLOW, BLACK = (0, 0, 255), (255, 0, 0), (255, 255, 255), (255, 255, 0), (0, 0, 0)


def test_backgrounds_follow_the_mode_table():
    assert background_color("animate", "driving") == BLACK
    assert background_color("animate", "reference") == WHITE
    assert background_color("replace", "driving") == WHITE
    assert background_color("replace", "reference") == BLACK


@pytest.mark.parametrize(
    ("mode", "side", "background"),
    [
        ("animate", "reference", WHITE),
        ("replace", "driving", WHITE),
        ("animate", "driving", BLACK),
        ("replace", "reference", BLACK),
    ],
)
def test_binary_masks_become_first_identity_on_mode_background(mode, side, background):
    grey = torch.zeros(2, 4, 6, 3, dtype=torch.uint8)
    grey[:, 1:3, 2:5] = 200  # the character, slightly grey as after lossy coding
    out = normalize_user_mask(grey, mode, side)
    assert out.shape == grey.shape
    assert tuple(out[0, 1, 2].tolist()) == IDENTITY_COLORS[0]
    assert tuple(out[1, 0, 0].tolist()) == background


def test_palette_masks_are_snapped_to_the_nearest_palette_colour():
    noisy = torch.tensor(
        [[[30, 20, 240], [250, 12, 5], [240, 250, 3], [20, 10, 25], [235, 240, 250]]], dtype=torch.uint8
    )
    assert detect_mask_kind(noisy) == "palette"
    snapped = normalize_user_mask(noisy, "animate", "driving")
    assert snapped[0].tolist() == [list(BLUE), list(RED), list(YELLOW), list(BLACK), list(WHITE)]
    assert torch.equal(snap_to_palette(snapped), snapped)


def test_detect_kind_sees_greyscale_as_binary():
    grey = torch.tensor([[[0, 0, 0], [128, 130, 126], [255, 255, 255]]], dtype=torch.uint8)
    assert detect_mask_kind(grey) == "binary"
    assert binary_to_palette(grey, "animate", "driving")[0, 1].tolist() == list(BLUE)


def test_mask_from_alpha_uses_the_reference_background():
    alpha = torch.tensor([[0, 127], [128, 255]], dtype=torch.uint8)
    assert mask_from_alpha(alpha, "animate").tolist() == [[list(WHITE), list(WHITE)], [list(BLUE), list(BLUE)]]
    assert mask_from_alpha(alpha, "replace")[0, 0].tolist() == list(BLACK)


def two_person_mask(frames: int, colours: tuple[tuple[int, int, int], ...], background=BLACK) -> torch.Tensor:
    mask = torch.tensor(background, dtype=torch.uint8).expand(frames, 40, 60, 3).clone()
    for slot, colour in enumerate(colours):
        mask[:, 10:30, 5 + 30 * slot : 25 + 30 * slot] = torch.tensor(colour, dtype=torch.uint8)
    return mask


def test_identity_binding_accepts_matching_colours():
    reference = two_person_mask(1, (BLUE, RED), background=WHITE)[0]
    driving = two_person_mask(3, (BLUE, RED))
    assert check_identity_binding(reference, driving) == (0, 1)


def test_identity_binding_names_the_missing_colour_and_both_files():
    reference = two_person_mask(1, (BLUE, RED), background=WHITE)[0]
    driving = two_person_mask(3, (BLUE,))
    with pytest.raises(Scail2Error, match=r"ref_mask.png has blue, red, drive_mask.mp4 has blue;") as error:
        check_identity_binding(reference, driving, reference_source="ref_mask.png", driving_source="drive_mask.mp4")
    assert "\n" not in str(error.value)


def test_identity_presence_ignores_speckles_below_the_area_fraction():
    mask = two_person_mask(2, (BLUE,))
    mask[1, 0, 0] = torch.tensor(RED, dtype=torch.uint8)  # one stray pixel of 2400
    assert identity_colors_present(mask) == (0,)
    assert identity_colors_present(mask, min_fraction=1e-6) == (0, 1)


def test_identity_binding_requires_a_character():
    empty_ref = torch.full((8, 8, 3), 255, dtype=torch.uint8)
    with pytest.raises(Scail2Error, match="no character"):
        check_identity_binding(empty_ref, torch.zeros(2, 8, 8, 3, dtype=torch.uint8))


def test_long_masks_are_cleaned_chunk_by_chunk_without_losing_late_frames():
    frames = torch.zeros(11, 8, 12, 3, dtype=torch.uint8)  # more frames than one chunk
    frames[10, 2:6, 3:9] = torch.tensor((245, 15, 20), dtype=torch.uint8)  # a red character only at the end
    assert detect_mask_kind(frames) == "palette"
    cleaned = normalize_user_mask(frames, "animate", "driving")
    assert cleaned[10, 3, 4].tolist() == list(RED) and cleaned[:10].sum() == 0
    assert identity_colors_present(cleaned) == (1,)
