"""The on-disk mask folder `scail2 masks` writes and `scail2 animate --driving-mask DIR` reads.

    DIR/
      meta.json          format name and version, size, frame count, fps, identities, method, sources
      frames/000000.png  one lossless palette PNG per driving frame: pixel value k = identity k
      reference.png      the reference mask in the same form (optional)
      preview.mp4        the driving video with the masks drawn over it, for review (optional)

Pixel values are identity indices (0 background, k = k-th colour of `IDENTITY_COLORS`); the PNG
palette shows them in the upstream colours on black, so any image viewer or editor shows the masks as
the model sees them in animation mode. The background colour of a mode (white or black; docs/architecture.md,
"Modes") is applied when the folder is read, so one folder serves both modes. A frame edited and saved as RGB is
read back by snapping every pixel to the nearest palette colour (black and white are background).

`meta.json` carries `format_version`; readers refuse versions they do not know. The folder is written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scail2 import __version__
from scail2.data.format import partial_path, read_json, replace_folder
from scail2.errors import Scail2Error
from scail2.preprocess.masks import background_color
from scail2.preprocess.palette import BLACK, IDENTITY_COLORS, MAX_IDENTITIES, WHITE

FORMAT_NAME = "scail2-masks"
FORMAT_VERSION = 1
META_FILE = "meta.json"
FRAMES_DIR = "frames"
REFERENCE_FILE = "reference.png"
PREVIEW_FILE = "preview.mp4"
# index -> colour of the PNG palette: background black, then the identity colours.
PNG_PALETTE = (BLACK, *IDENTITY_COLORS)


def frame_name(index: int) -> str:
    return f"{FRAMES_DIR}/{index:06d}.png"


def is_mask_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's size and first 4 MiB: enough to tell whether a reference image is the same one."""
    path = Path(path)
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(4 << 20))
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# 1. Identity maps <-> PNG
# ---------------------------------------------------------------------------------------------------


def _palette_bytes() -> list[int]:
    flat = [channel for colour in PNG_PALETTE for channel in colour]
    return flat + [0] * (768 - len(flat))


def save_identity_png(path: Path, ids: np.ndarray | torch.Tensor) -> None:
    """uint8 identity map [H, W] -> palette PNG (lossless; value k shown in identity colour k)."""
    array = np.ascontiguousarray(np.asarray(ids, dtype=np.uint8))
    if array.ndim != 2 or int(array.max(initial=0)) > MAX_IDENTITIES:
        raise ValueError(f"expected an identity map [H, W] with values 0..{MAX_IDENTITIES}, got {array.shape}")
    image = Image.fromarray(array, mode="P")
    image.putpalette(_palette_bytes())
    image.save(path, optimize=False, compress_level=6)


def _snap_rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """An edited RGB mask -> identity map: nearest of black, white and the identity colours."""
    palette = np.array([BLACK, WHITE, *IDENTITY_COLORS], dtype=np.int32)  # [8, 3]
    distance = ((rgb[..., None, :].astype(np.int32) - palette) ** 2).sum(axis=-1)  # [H, W, 8]
    nearest = distance.argmin(axis=-1)
    return np.where(nearest >= 2, nearest - 1, 0).astype(np.uint8)


def load_identity_png(path: Path) -> np.ndarray:
    """A mask PNG -> uint8 identity map [H, W] (palette PNGs as written, or edited RGB frames)."""
    try:
        with Image.open(path) as image:
            image.load()
            if (
                image.mode == "P"
                and list(image.getpalette()[: 3 * len(PNG_PALETTE)]) == _palette_bytes()[: 3 * len(PNG_PALETTE)]
            ):
                ids = np.asarray(image, dtype=np.uint8)
                if int(ids.max(initial=0)) <= MAX_IDENTITIES:
                    return ids.copy()
            return _snap_rgb_to_ids(np.asarray(image.convert("RGB")))
    except (OSError, SyntaxError, ValueError) as error:
        raise Scail2Error(
            f"{path}: cannot be read as a mask image ({error.__class__.__name__}); re-run "
            "`scail2 masks` or save the frame as PNG"
        ) from None


def identities_to_palette(ids: torch.Tensor | np.ndarray, mode: str, side: str) -> torch.Tensor:
    """uint8 identity map [..., H, W] -> palette colours uint8 [..., H, W, 3] with the mode's background."""
    lookup = torch.tensor([background_color(mode, side), *IDENTITY_COLORS], dtype=torch.uint8)
    return lookup[torch.as_tensor(np.asarray(ids)).long()]


def palette_to_identities(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Palette-exact uint8 [..., H, W, 3] -> identity map uint8 [..., H, W] (other colours are background)."""
    frames = torch.as_tensor(np.asarray(frames))
    ids = torch.zeros(frames.shape[:-1], dtype=torch.uint8)
    for index, colour in enumerate(IDENTITY_COLORS, start=1):
        ids[(frames == torch.tensor(colour, dtype=torch.uint8)).all(dim=-1)] = index
    return ids


# ---------------------------------------------------------------------------------------------------
# 2. Writing
# ---------------------------------------------------------------------------------------------------


class MaskFolderWriter:
    """Writes a mask folder under a temporary name; `commit(meta)` renames it into place.

    Use as a context manager: leaving the block with an exception removes the temporary folder, so a
    failed or interrupted run leaves nothing half-written.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise Scail2Error(f"{self.path}: already exists; pass --overwrite or choose another --out folder")
        if self.path.exists() and not is_mask_folder(self.path) and any(self.path.iterdir()):
            raise Scail2Error(f"{self.path}: exists and is not a mask folder; choose another --out folder")
        self.tmp = partial_path(self.path)
        self.frames = 0

    def __enter__(self) -> MaskFolderWriter:
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / FRAMES_DIR).mkdir(parents=True)
        # PNG compression releases the GIL: frames are encoded on a second thread while the next is rendered
        self._encoder = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future] = []
        return self

    def write_frame(self, ids: np.ndarray | torch.Tensor) -> None:
        array = np.array(ids, dtype=np.uint8)  # a copy: the caller may reuse its buffer
        self._pending.append(self._encoder.submit(save_identity_png, self.tmp / frame_name(self.frames), array))
        self.frames += 1
        while self._pending and self._pending[0].done():
            self._pending.pop(0).result()  # raises an encoding error here, at the next frame

    def _finish_frames(self) -> None:
        self._encoder.shutdown(wait=True)
        for future in self._pending:
            future.result()
        self._pending = []

    def write_reference(self, ids: np.ndarray | torch.Tensor) -> None:
        save_identity_png(self.tmp / REFERENCE_FILE, ids)

    def preview_path(self) -> Path:
        return self.tmp / PREVIEW_FILE

    def commit(self, meta: dict) -> Path:
        self._finish_frames()
        payload = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "scail2_version": __version__,
            **meta,
            "frames": self.frames,
        }
        (self.tmp / META_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return replace_folder(self.tmp, self.path)

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is not None:
            self._encoder.shutdown(wait=True, cancel_futures=True)
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# 3. Reading
# ---------------------------------------------------------------------------------------------------


@dataclass
class MaskFolder:
    path: Path
    meta: dict

    @property
    def num_frames(self) -> int:
        return int(self.meta["frames"])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.meta["height"]), int(self.meta["width"])

    @property
    def fps(self) -> Fraction:
        return Fraction(self.meta["fps"])

    @property
    def identities(self) -> tuple[int, ...]:
        """0-based indices into IDENTITY_COLORS of the identities the folder holds."""
        return tuple(int(entry["index"]) - 1 for entry in self.meta.get("identities", []))

    def frame_ids(self, index: int) -> np.ndarray:
        return load_identity_png(self.path / frame_name(index))

    def iter_ids(self, max_frames: int | None = None) -> Iterator[np.ndarray]:
        for index in range(min(self.num_frames, max_frames or self.num_frames)):
            yield self.frame_ids(index)

    def palette_frames(
        self,
        mode: str,
        side: str = "driving",
        *,
        max_frames: int | None = None,
        frame_transform: Callable[[np.ndarray], Any] | None = None,
    ) -> torch.Tensor:
        """The masks as palette colours with `mode`'s background: uint8 [T, H, W, 3] (or transformed frames)."""
        transform = frame_transform or (lambda frame: frame)
        frames = [transform(identities_to_palette(ids, mode, side).numpy()) for ids in self.iter_ids(max_frames)]
        return torch.stack([torch.as_tensor(np.asarray(f)) for f in frames])

    def reference_ids(self) -> np.ndarray | None:
        return load_identity_png(self.path / REFERENCE_FILE) if (self.path / REFERENCE_FILE).is_file() else None

    def reference_matches(self, image_path: str | Path) -> bool:
        """Whether the folder's reference mask was made from this very image file."""
        reference = self.meta.get("reference") or {}
        return bool(reference.get("fingerprint")) and reference["fingerprint"] == file_fingerprint(image_path)


def _check_meta(path: Path, meta: Any) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise Scail2Error(
            f"{path / META_FILE}: not a scail2 mask folder (format is not {FORMAT_NAME!r}); "
            "make one with `scail2 masks`"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise Scail2Error(
            f"{path / META_FILE}: mask folder format version {version!r} is not supported (this "
            f"scail2 reads version {FORMAT_VERSION}); upgrade scail2 or re-run `scail2 masks`"
        )
    for key in ("frames", "height", "width", "fps"):
        if key not in meta:
            raise Scail2Error(f"{path / META_FILE}: missing {key!r}; re-run `scail2 masks`")
    return meta


def open_mask_folder(path: str | Path) -> MaskFolder:
    """Open and check a mask folder: known format version and every frame file present."""
    path = Path(path)
    if not is_mask_folder(path):
        raise Scail2Error(f"{path}: no {META_FILE}; pass a folder written by `scail2 masks`")
    meta = _check_meta(
        path, read_json(path / META_FILE, missing_hint="re-run `scail2 masks`", corrupt_hint="re-run `scail2 masks`")
    )
    missing = [frame_name(i) for i in range(int(meta["frames"])) if not (path / frame_name(i)).is_file()]
    if missing:
        raise Scail2Error(f"{path}: {len(missing)} mask frames are missing (first {missing[0]}); re-run `scail2 masks`")
    return MaskFolder(path, meta)
