"""Alpha outputs: lossless mask PNGs, RGBA PNGs carrying the mask as alpha, and a ProRes 4444 MOV with alpha."""

from __future__ import annotations

import av
import numpy as np
from PIL import Image

from scail2.preprocess.alpha_io import alpha_paths, write_alpha_outputs

T, H, W = 3, 32, 48


def test_alpha_outputs_carry_the_masks(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    masks = np.zeros((T, H, W), bool)
    masks[:, 8:20, 10 : 10 + 12] = True
    masks[1, 0, 0] = True
    out = tmp_path / "clip.mp4"
    paths = write_alpha_outputs(out, frames, masks, 24)
    assert paths == {name: str(path) for name, path in alpha_paths(out).items()}

    saved = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "clip_alpha").glob("*.png"))])
    assert np.array_equal(saved, masks * 255)
    rgba = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "clip_rgba").glob("*.png"))])
    assert rgba.shape == (T, H, W, 4) and np.array_equal(rgba[..., :3], frames)
    assert np.array_equal(rgba[..., 3], masks * 255)

    with av.open(paths["mov"]) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "prores" and "yuva444" in stream.codec_context.pix_fmt
        decoded = np.stack([f.to_ndarray(format="rgba") for f in container.decode(stream)])
    assert decoded.shape == (T, H, W, 4) and np.abs(decoded[..., 3].astype(int) - masks * 255).max() <= 1
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
