"""The 28-channel mask compression against hand-computed channels, and the reference/history masks."""

from __future__ import annotations

import pytest
import torch

from scail2.conditioning import (
    compress_mask_to_latent,
    frames_to_model_video,
    history_mask,
    mask_color_planes,
    reference_mask_tensor,
)
from scail2.preprocess.palette import PLANE_COLORS

BLUE, RED, WHITE, YELLOW = (0, 0, 255), (255, 0, 0), (255, 255, 255), (255, 255, 0)


def paint(frames: torch.Tensor, t: int, rows: slice, cols: slice, colour: tuple[int, int, int]) -> None:
    frames[t, rows, cols] = torch.tensor(colour, dtype=torch.uint8)


def test_compression_matches_hand_computed_channels():
    # 5 frames of 16 x 24 -> T_lat 2, 2 x 3 cells of 8 x 8 pixels; everything else black.
    frames = torch.zeros(5, 16, 24, 3, dtype=torch.uint8)
    paint(frames, 0, slice(0, 8), slice(0, 8), BLUE)  # frame 0, cell (0, 0), full
    paint(frames, 1, slice(8, 16), slice(16, 20), RED)  # frame 1, cell (1, 2), left half
    paint(frames, 3, slice(0, 8), slice(8, 16), WHITE)  # frame 3, cell (0, 1), full
    paint(frames, 4, slice(8, 12), slice(0, 4), YELLOW)  # frame 4, cell (1, 0), a quarter
    latent = compress_mask_to_latent(frames_to_model_video(frames))

    expected = torch.zeros(28, 2, 2, 3)
    for subframe in range(4):  # latent frame 0 is frame 0 four times; blue is plane 3
        expected[7 * subframe + 3, 0, 0, 0] = 1.0
    expected[7 * 0 + 1, 1, 1, 2] = 0.5  # latent 1, sub-frame 0 = frame 1, red plane 1
    expected[7 * 2 + 0, 1, 0, 1] = 1.0  # sub-frame 2 = frame 3, white plane 0
    expected[7 * 3 + 4, 1, 1, 0] = 0.25  # sub-frame 3 = frame 4, yellow plane 4
    assert latent.shape == (28, 2, 2, 3)
    assert latent.dtype == torch.float32
    torch.testing.assert_close(latent, expected, rtol=0, atol=0)


def test_threshold_is_strict_at_225_in_float32():
    levels = torch.tensor([224, 225, 226, 255], dtype=torch.uint8)
    frames = levels.view(1, 1, 4, 1).expand(1, 1, 4, 3).contiguous()  # grey pixels, one frame
    planes = mask_color_planes(frames_to_model_video(frames))  # [1, 7, 1, 4]
    assert planes[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # white plane: 225 OFF, 226 ON
    assert planes[0, 1:].sum() == 0


@pytest.mark.parametrize("index", range(len(PLANE_COLORS)))
def test_each_palette_colour_lights_only_its_plane(index):
    frame = torch.tensor(PLANE_COLORS[index], dtype=torch.uint8).expand(1, 2, 3, 3).contiguous()
    planes = mask_color_planes(frames_to_model_video(frame))
    assert planes[0, :, 0, 0].tolist() == [1.0 if plane == index else 0.0 for plane in range(7)]


def test_sizes_not_multiple_of_eight_use_three_ceil_halvings():
    frames = torch.full((1, 20, 36, 3), 255, dtype=torch.uint8)  # 20 -> 10 -> 5 -> 3; 36 -> 18 -> 9 -> 5
    latent = compress_mask_to_latent(frames_to_model_video(frames))
    assert latent.shape == (28, 1, 3, 5)
    torch.testing.assert_close(latent[[0, 7, 14, 21]], torch.ones(4, 1, 3, 5))


def test_compression_rejects_frame_counts_other_than_4n_plus_1():
    with pytest.raises(ValueError, match="4n\\+1"):
        compress_mask_to_latent(torch.zeros(3, 4, 16, 16))


def test_reference_mask_tensor_is_compressed_mask_then_zeros():
    ref = torch.zeros(16, 24, 3, dtype=torch.uint8)
    ref[:, :12] = torch.tensor(BLUE, dtype=torch.uint8)
    ref[:, 12:] = torch.tensor(WHITE, dtype=torch.uint8)
    image = frames_to_model_video(ref[None])[:, 0]  # [3, H, W]
    tensor = reference_mask_tensor(image, num_latent_frames=3)
    assert tensor.shape == (28, 4, 2, 3)
    torch.testing.assert_close(tensor[:, :1], compress_mask_to_latent(image[:, None]))
    assert tensor[:, 1:].abs().sum() == 0
    assert tensor[3, 0].tolist() == [[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]]  # blue coverage per cell


def test_history_mask_marks_the_first_latent_frames():
    mask = history_mask(5, 2, 6, 10)
    assert mask.shape == (4, 5, 6, 10)
    assert mask[:, :2].min() == 1 and mask[:, 2:].max() == 0
    with pytest.raises(ValueError):
        history_mask(1, 2, 6, 10)
