"""The on-disk cue folder `scail2 cues` writes: DirectAnimator's Driving Cue Triplet, lossless and reviewable.

    DIR/
      meta.json               format name and version, size, frame count, fps, identities, settings, box source
      pose/000000.png         pose cue, RGB PNG per frame
      face/000000.png         face cue, RGB PNG per frame
      body_mask/000000.png    location cue: grid-softened body mask, 8-bit grey PNG per frame
      face_mask/000000.png    location cue: grid-softened face mask, 8-bit grey PNG per frame
      head_boxes.json         head box (x0, y0, x1, y1) per frame and character, null where none

PNG is lossless, so reading the folder gives back exactly the uint8 cues `scail2.preprocess.cues.extract_cues`
computed. The folder is written under a temporary name and renamed when complete; readers refuse format
versions they do not know.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from scail2 import __version__
from scail2.data.format import atomic_folder, read_json
from scail2.errors import Scail2Error
from scail2.preprocess.cues import DrivingCues

FORMAT_NAME = "scail2-cues"
FORMAT_VERSION = 1
META_FILE = "meta.json"
BOXES_FILE = "head_boxes.json"
STREAMS = {"pose": "RGB", "face": "RGB", "body_mask": "L", "face_mask": "L"}


def frame_path(folder: Path, stream: str, index: int) -> Path:
    return folder / stream / f"{index:06d}.png"


def write_cue_folder(path: str | Path, cues: DrivingCues, meta: dict, *, overwrite: bool = False) -> Path:
    """Write `cues` (and `meta`: fps, identities, settings, sources) as a cue folder, atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise Scail2Error(f"{path}: already exists; pass --overwrite or choose another --out folder")
    if path.exists() and not (path / META_FILE).is_file() and any(path.iterdir()):
        raise Scail2Error(f"{path}: exists and is not a cue folder; choose another --out folder")
    with atomic_folder(path) as tmp:
        for stream, mode in STREAMS.items():
            (tmp / stream).mkdir(parents=True)
            for index, frame in enumerate(getattr(cues, stream)):
                Image.fromarray(np.ascontiguousarray(frame), mode=mode).save(frame_path(tmp, stream, index))
        boxes = [[None if np.isnan(b[0]) else [float(v) for v in b] for b in frame] for frame in cues.head_boxes]
        (tmp / BOXES_FILE).write_text(json.dumps(boxes) + "\n")
        height, width = cues.pose.shape[1:3]
        payload = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "scail2_version": __version__,
            **meta,
            "frames": cues.num_frames,
            "height": height,
            "width": width,
        }
        (tmp / META_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def read_cue_folder(path: str | Path) -> tuple[DrivingCues, dict]:
    """The cues and meta of a cue folder (format and every frame checked)."""
    path = Path(path)
    hint = "re-run `scail2 cues`"
    meta = read_json(
        path / META_FILE, missing_hint=f"pass a folder written by `scail2 cues` or {hint}", corrupt_hint=hint
    )
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise Scail2Error(f"{path / META_FILE}: not a scail2 cue folder (format is not {FORMAT_NAME!r}); {hint}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise Scail2Error(
            f"{path / META_FILE}: cue folder format version {meta.get('format_version')!r} is not supported "
            f"(this scail2 reads version {FORMAT_VERSION}); {hint}"
        )
    arrays = {}
    for stream, mode in STREAMS.items():
        files = [frame_path(path, stream, i) for i in range(int(meta["frames"]))]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise Scail2Error(f"{path}: {len(missing)} {stream} frames are missing (first {missing[0].name}); {hint}")
        arrays[stream] = np.stack([np.asarray(Image.open(f).convert(mode)) for f in files])
    boxes = read_json(path / BOXES_FILE, missing_hint=hint, corrupt_hint=hint)
    nan = [np.nan] * 4
    arrays["head_boxes"] = np.array([[b or nan for b in frame] for frame in boxes], dtype=np.float32).reshape(
        len(boxes), -1, 4
    )
    return DrivingCues(**arrays), meta
