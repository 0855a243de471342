"""Target size, upstream resize-and-crop semantics and the half-resolution stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scail2.errors import Scail2Error
from scail2.preprocess.resize import (
    choose_target_size,
    frame_resizer,
    image_to_model,
    rectangle_crop_geometry,
    resize_crop_uint8,
    resize_for_rectangle_crop,
)


def test_default_size_follows_the_reference_orientation():
    assert choose_target_size((720, 1280)) == (512, 896)
    assert choose_target_size((1280, 720)) == (896, 512)
    assert choose_target_size((600, 600)) == (512, 896)


def test_explicit_sizes_are_used_as_given_and_must_be_multiples_of_32():
    assert choose_target_size((1280, 720), 704, 1280) == (704, 1280)
    with pytest.raises(Scail2Error, match="--height 700 is not a positive multiple of 32; use e.g. 704"):
        choose_target_size((720, 1280), 700, 1280)
    with pytest.raises(Scail2Error, match="--width"):
        choose_target_size((720, 1280), 704, 1290)
    with pytest.raises(Scail2Error, match="go together"):
        choose_target_size((720, 1280), 704, None)


def test_crop_geometry_truncates_like_upstream():
    assert rectangle_crop_geometry((1080, 1920), (512, 896)) == ((512, 910), 0, 7)
    assert rectangle_crop_geometry((1280, 720), (896, 512)) == ((910, 512), 7, 0)
    # 1777 * 512 / 1000 = 909.82: int() gives 909 where rounding would give 910.
    assert rectangle_crop_geometry((1000, 1777), (512, 896)) == ((512, 909), 0, 6)


@pytest.mark.parametrize("source_hw", [(75, 130), (30, 41)])  # downscale and upscale
def test_resize_matches_pillow_antialiased_bicubic(source_hw):
    rng = np.random.default_rng(0)
    # Values kept away from 0 and 255: Pillow clips its intermediate pass to uint8, torch does not.
    image = rng.integers(64, 192, (*source_hw, 3), dtype=np.uint8)
    target = (48, 80)
    (new_h, new_w), top, left = rectangle_crop_geometry(source_hw, target)
    pil = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))[top : top + 48, left : left + 80]
    ours = resize_crop_uint8(torch.from_numpy(image), target).numpy()
    assert ours.shape == (48, 80, 3)
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1


def test_uint8_path_rounds_and_clamps_the_float_path():
    rng = np.random.default_rng(1)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 30, 50, 3), dtype=np.uint8))
    floats = resize_for_rectangle_crop(frames.permute(0, 3, 1, 2).float(), (48, 80))
    assert floats.min() < 0 or floats.max() > 255  # bicubic overshoots, so clamping matters here
    expected = floats.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(resize_crop_uint8(frames, (48, 80)), expected)
    assert torch.equal(frame_resizer((48, 80))(frames[1].numpy()), expected[1])


def test_image_path_normalises_before_resizing():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    out = image_to_model(rgb, (48, 80))
    signed = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0
    torch.testing.assert_close(out, resize_for_rectangle_crop(signed, (48, 80)), rtol=0, atol=0)
    assert out.shape == (3, 48, 80)
