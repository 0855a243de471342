"""Small input files for generation tests: driving videos (optionally with audio), masks and images."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from scail2.preprocess.palette import IDENTITY_COLORS


def moving_square_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured background with a bright square moving left to right: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    side = height // 3
    for t in range(num_frames):
        left = int((width - side) * t / max(1, num_frames - 1))
        frames[t, height // 3 : height // 3 + side, left : left + side] = (230, 200, 40)
    return frames


def square_masks(num_frames: int, height: int, width: int, colors=((255, 255, 255),)) -> np.ndarray:
    """Masks of the moving square (binary white, or identity colours side by side for several characters)."""
    masks = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    side = height // 3
    for t in range(num_frames):
        left = int((width - side) * t / max(1, num_frames - 1))
        for k, color in enumerate(colors):
            top = height // 3 + (k * side // 2) % max(1, height - side)
            masks[t, top : top + side // max(1, len(colors)), left : left + side] = color
    return masks


def write_video(path: Path, frames: np.ndarray, fps: Fraction | int = 24, audio_seconds: float | None = None) -> Path:
    """Lossless-enough H.264 (crf 0, yuv444p avoided for player compatibility) with an optional sine track."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "0"}
        audio = None
        if audio_seconds:
            audio = output.add_stream("aac", rate=16000)
            audio.layout = "mono"
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode(None))
        if audio is not None:
            samples = int(16000 * audio_seconds)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)[None]
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(wave[:, start : start + 1024], format="fltp", layout="mono")
                chunk.sample_rate = 16000
                for packet in audio.encode(chunk):
                    output.mux(packet)
            for packet in audio.encode(None):
                output.mux(packet)
    return path


def write_mask_folder(folder: Path, masks: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, mask in enumerate(masks):
        Image.fromarray(mask).save(folder / f"mask_{index}.png")
    return folder


def write_reference(path: Path, height: int, width: int, rgba: bool = False, seed: int = 1) -> Path:
    """A reference image with a character blob; RGBA puts the blob in the alpha channel."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    if rgba:
        alpha = np.zeros((height, width), dtype=np.uint8)
        alpha[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 255
        image = np.dstack([image, alpha])
    Image.fromarray(image).save(path)
    return path


def write_reference_mask(path: Path, height: int, width: int, colors=((255, 255, 255),), background=(0, 0, 0)) -> Path:
    mask = np.zeros((height, width, 3), dtype=np.uint8)
    mask[:] = background
    band = width // (2 * len(colors))
    for k, color in enumerate(colors):
        mask[height // 4 : 3 * height // 4, width // 4 + k * band : width // 4 + (k + 1) * band] = color
    Image.fromarray(mask).save(path)
    return path


TWO_IDENTITIES = IDENTITY_COLORS[:2]
