"""`scail2 masks` as a library call: read the inputs, run a method, write the mask folder and a preview.

    request = MasksRequest(driving="dance.mp4", ref="ref.png", out="masks/", preview=True)
    meta = build_mask_folder(request)

The driving video is read twice: once small for the weight-free method (whole clip in memory at the
working resolution), then frame by frame at full resolution to render, write and preview each mask,
so long high-resolution videos never sit in memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue

import numpy as np
import torch
import torch.nn.functional as F

from scail2.errors import Scail2Error
from scail2.preprocess import mask_folder, video_io
from scail2.preprocess.mask_checks import check_user_mask
from scail2.preprocess.palette import IDENTITY_COLORS
from scail2.preprocess.segmentation.extract import (
    DrivingMasks,
    MaskSettings,
    MotionMasks,
    ProvidedMasks,
    Sam2Masks,
    downscaler,
    reference_identities,
)
from scail2.preprocess.segmentation.filters import dilate, fit_long_side, single_threaded

logger = logging.getLogger(__name__)

PREVIEW_LONG_SIDE = 960
PREVIEW_OPACITY = 0.55


@dataclass
class MasksRequest:
    driving: str | Path
    out: str | Path
    ref: str | Path | None = None
    driving_mask: str | Path | None = None  # provided masks (video or PNG folder)
    ref_mask: str | Path | None = None
    settings: MaskSettings = field(default_factory=MaskSettings)
    preview: bool = False
    max_frames: int | None = None
    overwrite: bool = False


def resolve_method(request: MasksRequest) -> str:
    """auto: the user's masks when given, SAM 2 when a weights folder is given, else the weight-free method."""
    method = request.settings.method
    if method == "auto":
        if request.driving_mask is not None:
            return "provided"
        return "sam2" if request.settings.sam2_model else "motion"
    if method == "provided" and request.driving_mask is None:
        raise Scail2Error("--method provided needs --driving-mask (a mask video or a folder of PNG frames)")
    if method != "provided" and request.driving_mask is not None:
        raise Scail2Error(f"--driving-mask is only used with --method provided (or auto), not {method}")
    return method


def _check_inputs(request: MasksRequest) -> video_io.VideoInfo:
    info = video_io.probe_video(request.driving)
    for path, what in ((request.ref, "reference image"), (request.ref_mask, "reference mask")):
        if path is not None and not Path(path).is_file():
            raise Scail2Error(f"{path}: {what} not found; check the path")
    if request.ref_mask is not None and request.ref is None:
        raise Scail2Error("--ref-mask needs --ref (the reference image it belongs to)")
    if request.max_frames is not None and request.max_frames < 1:
        raise Scail2Error(f"--max-frames {request.max_frames} must be at least 1")
    out = Path(request.out)
    if out.exists() and not request.overwrite:
        raise Scail2Error(f"{out}: already exists; pass --overwrite or choose another --out folder")
    return info


def driving_masks(request: MasksRequest, method: str, size: tuple[int, int]) -> DrivingMasks:
    settings = request.settings
    if method == "provided":
        if mask_folder.is_mask_folder(request.driving_mask):  # a `scail2 masks` folder: its identities as colours
            folder = mask_folder.open_mask_folder(request.driving_mask)
            frames = folder.palette_frames("animate", max_frames=request.max_frames)
        else:
            frames = video_io.read_mask_frames(request.driving_mask, max_frames=request.max_frames)
            check_user_mask(frames, f"--driving-mask {request.driving_mask}")
        return ProvidedMasks(frames, settings, str(request.driving_mask))
    with single_threaded():  # one frame's resize is too small to gain from threads while the decoder runs
        small = video_io.read_video(
            request.driving, max_frames=request.max_frames, frame_transform=downscaler(settings.work_size)
        ).frames
    try:
        if method == "sam2":
            return Sam2Masks(small, size, settings)
        return MotionMasks(small, settings)
    except Scail2Error as error:
        raise Scail2Error(f"{request.driving}: {error}") from None


def overlay(frame: np.ndarray, ids: torch.Tensor) -> np.ndarray:
    """The frame with each identity tinted in its colour and outlined, at most PREVIEW_LONG_SIDE wide."""
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float()[None]
    size = fit_long_side(*frame.shape[:2], PREVIEW_LONG_SIDE)
    image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    ids = F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0].long()
    colours = torch.tensor([(0, 0, 0), *IDENTITY_COLORS], dtype=torch.float32)[ids].permute(2, 0, 1)
    inside = (ids > 0)[None]
    tinted = torch.where(inside, (1 - PREVIEW_OPACITY) * image + PREVIEW_OPACITY * colours, image)
    edges = (dilate(ids > 0, 1) & ~(ids > 0)) | (inside[0] & (F.max_pool2d(ids[None].float(), 3, 1, 1)[0] != ids))
    outline = torch.tensor([(255, 255, 255), *IDENTITY_COLORS], dtype=torch.float32)[
        F.max_pool2d(ids[None].float(), 3, 1, 1)[0].long()
    ].permute(2, 0, 1)
    tinted = torch.where(edges[None], outline, tinted)
    return tinted.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _reference(request: MasksRequest, writer: mask_folder.MaskFolderWriter, masks: DrivingMasks) -> dict:
    image = video_io.read_image(request.ref)
    user_mask = None
    if request.ref_mask is not None:
        user_mask = video_io.read_image(request.ref_mask).rgb
        check_user_mask(user_mask, f"--ref-mask {request.ref_mask}")
        if user_mask.shape[:2] != image.rgb.shape[:2]:
            raise Scail2Error(
                f"{request.ref_mask}: is {user_mask.shape[1]}x{user_mask.shape[0]} but the reference "
                f"image is {image.rgb.shape[1]}x{image.rgb.shape[0]}; give the mask the image's size"
            )
    ids, method = reference_identities(
        image.rgb,
        image.alpha,
        masks.count,
        str(request.ref_mask or request.ref),
        user_mask,
        request.settings.refinement,
    )
    present = sorted(int(k) for k in torch.unique(ids) if k > 0)
    expected = [entry["index"] for entry in masks.identities]
    if present != expected:
        raise Scail2Error(
            f"{request.ref_mask or request.ref}: the reference has identities {present} but the "
            f"driving masks have {expected}; give both the same characters (palette colours blue, "
            "red, green, magenta, cyan, yellow from left to right)"
        )
    writer.write_reference(ids)
    if request.preview:
        from PIL import Image

        Image.fromarray(overlay(image.rgb, ids)).save(writer.tmp / "reference_preview.png")
    return {
        "file": mask_folder.REFERENCE_FILE,
        "width": int(ids.shape[1]),
        "height": int(ids.shape[0]),
        "source": str(request.ref),
        "fingerprint": mask_folder.file_fingerprint(request.ref),
        "method": method,
    }


def _read_ahead(frames: Iterator[np.ndarray], depth: int = 4) -> Iterator[np.ndarray]:
    """`frames`, decoded on a second thread up to `depth` frames ahead (the decoder releases the GIL)."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        """Put `item` in the queue unless the reader stopped; False once it has."""
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def decode() -> None:
        try:
            for frame in frames:
                if not offer(frame):
                    return
            offer(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the reading thread, which raises it
            offer(error)

    thread = threading.Thread(target=decode, name="scail2-decode", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


_END = object()


def _render_and_write(
    request: MasksRequest, masks: DrivingMasks, writer: mask_folder.MaskFolderWriter, fps
) -> tuple[int, int]:
    """Render every driving frame's mask at full resolution, write it (and the preview); returns (H, W)."""
    current: dict[str, np.ndarray] = {}

    def frames():
        for frame in _read_ahead(video_io.iter_video_frames(request.driving, max_frames=request.max_frames)):
            current["frame"] = frame  # renderers consume one frame and yield its mask before the next
            yield frame

    size = (0, 0)
    preview = video_io.Mp4Writer(writer.preview_path(), fps) if request.preview else contextlib.nullcontext()
    with preview:
        for ids in masks.render(frames()):
            size = tuple(ids.shape)
            writer.write_frame(ids.numpy())
            if request.preview:
                preview.write(overlay(current["frame"], ids))
    if masks.frame_count is not None and writer.frames < masks.frame_count:
        logger.warning("the driving video decoded %d frames, the masks had %d", writer.frames, masks.frame_count)
    return size


def build_mask_folder(request: MasksRequest) -> dict:
    """Write the mask folder of `request` and return its meta (also written as meta.json)."""
    info = _check_inputs(request)
    method = resolve_method(request)
    masks = driving_masks(request, method, (info.height, info.width))
    for note in masks.notes:
        logger.warning("%s", note)
    with mask_folder.MaskFolderWriter(request.out, overwrite=request.overwrite) as writer:
        reference = _reference(request, writer, masks) if request.ref is not None else None
        height, width = _render_and_write(request, masks, writer, info.fps)
        meta = {
            "width": width,
            "height": height,
            "fps": str(info.fps),
            "method": masks.method,
            "identities": masks.identities,
            "reference": reference,
            "preview": mask_folder.PREVIEW_FILE if request.preview else None,
            "source": {
                "driving": str(request.driving),
                "fingerprint": mask_folder.file_fingerprint(request.driving),
                "driving_mask": str(request.driving_mask) if request.driving_mask else None,
            },
            "settings": _settings_json(request.settings),
            "notes": masks.notes,
        }
        writer.commit(meta)
    return mask_folder.open_mask_folder(request.out).meta


def _settings_json(settings: MaskSettings) -> dict:
    return {
        "method": settings.method,
        "max_characters": settings.max_characters,
        "min_track_fraction": settings.min_track_fraction,
        "work_size": settings.work_size,
        "refinement": settings.refinement.to_json(),
        "sam2_model": settings.sam2_model,
        "prompts": [vars(p) for p in settings.prompts],
    }
