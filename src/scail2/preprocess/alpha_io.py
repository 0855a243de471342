"""Production outputs with alpha (`--alpha`): per-frame masks as lossless PNGs, an RGBA PNG sequence and a
ProRes 4444 MOV whose alpha channel is the mask.

    paths = write_alpha_outputs("out.mp4", frames, masks, fps)
    # out_alpha/mask_000000.png ... (8-bit grey, 255 = character), out_rgba/frame_000000.png ..., out.alpha.mov

Folders are written under a temporary name and renamed when complete, like every other output; the MOV is
written under a temporary name too. ProRes 4444 (`prores_ks`, profile 4444, 16-bit alpha) is what compositing
tools read; its colour is lossy like any delivery codec, the PNG sequence is the lossless copy.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from scail2.data.format import atomic_folder, atomic_path

PRORES_PROFILE = "4444"


def rgba_frames(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] and bool masks [T, H, W] -> uint8 RGBA [T, H, W, 4] (alpha 255 on the mask)."""
    alpha = np.where(np.asarray(masks, dtype=bool), 255, 0).astype(np.uint8)
    return np.concatenate([np.asarray(frames, dtype=np.uint8), alpha[..., None]], axis=-1)


def write_prores_4444(path: str | Path, rgba: np.ndarray, fps: Fraction | float) -> Path:
    """RGBA frames [T, H, W, 4] (even H and W) as a ProRes 4444 MOV with alpha, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mov") as container:
        stream = container.add_stream("prores_ks", rate=Fraction(fps).limit_denominator(1001 * 1000))
        stream.width, stream.height, stream.pix_fmt = rgba.shape[2], rgba.shape[1], "yuva444p10le"
        stream.options = {"profile": PRORES_PROFILE, "alpha_bits": "16"}
        for frame in rgba:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgba")))
        container.mux(stream.encode(None))
    return path


def alpha_paths(out: str | Path) -> dict[str, Path]:
    """Where `write_alpha_outputs` puts the files for the video `out`."""
    out = Path(out)
    return {
        "masks": out.with_name(out.stem + "_alpha"),
        "rgba": out.with_name(out.stem + "_rgba"),
        "mov": out.with_name(out.stem + ".alpha.mov"),
    }


def write_alpha_outputs(out: str | Path, frames: np.ndarray, masks: np.ndarray, fps: Fraction | float) -> dict:
    """The three alpha outputs beside the video `out` (see the module docstring); returns their paths as text."""
    paths = alpha_paths(out)
    rgba = rgba_frames(frames, masks)

    with atomic_folder(paths["masks"]) as folder:
        for index, frame in enumerate(rgba[..., 3]):
            Image.fromarray(frame).save(folder / f"mask_{index:06d}.png")
    with atomic_folder(paths["rgba"]) as folder:
        for index, frame in enumerate(rgba):
            Image.fromarray(frame).save(folder / f"frame_{index:06d}.png")
    write_prores_4444(paths["mov"], rgba, fps)
    return {name: str(path) for name, path in paths.items()}
