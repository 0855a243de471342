"""DirectAnimator's Driving Cue Triplet from driving frames and their identity masks.

    pose cue      [T, H, W, 3] uint8  the driving foreground (our masks), grey or RGB, low-pass filtered in the
                                      frequency domain: silhouette and limb layout stay, texture and face go
    face cue      [T, H, W, 3] uint8  a centred, enlarged crop of each character's head, resized to the frame
    body mask     [T, H, W]    uint8  location cue: the characters' mask, grid-softened (0..255)
    face mask     [T, H, W]    uint8  location cue: the head boxes, grid-softened (0..255)

Every cue is uint8, so the folder `scail2 cues` writes (lossless PNGs) and the cues the DirectAnimator pipeline
computes in memory are the same numbers. Extraction is deterministic (no randomness, float32 CPU arithmetic).

Choices where the paper is silent, all in `CueSettings`:
- Pose cue: background set to mid-grey (0 in the model's [-1, 1] range) before filtering, so the filtered
  silhouette fades into a neutral level rather than into black; grey (BT.601 luma) by default, which drops the
  driver's colours; a Gaussian transfer function exp(-r^2 / 2c^2) by default (no ringing, unlike an ideal disc),
  r the spatial frequency as a fraction of the Nyquist frequency on each axis, so a cutoff means the same
  at every resolution; 2D per frame (no temporal filtering).
- Head boxes: from the procedural rig's face/head tags when given (synthetic data); otherwise from the top of
  each character's mask: a square box whose side is `head_fraction` of the mask's height, from its top row,
  centred on the mask's columns in those rows. This is a heuristic for upright humanoids; a face detector can
  replace it by passing boxes. Boxes are smoothed over `box_smoothing` frames (centred moving average) and held
  through frames where the character is missing.
- Face cue: each box enlarged `face_scale` times and grown to the panel's aspect ratio, cropped bilinearly
  (outside the frame: mid-grey), resized to the frame; several characters share the frame as equal panels side
  by side, in identity order. RGB, since the face's expression is what it carries.
- Location cue: per `grid` x `grid` pixel cell the fraction of the cell the mask covers ("grid softening": the
  outline is kept only to a cell, so the driver's exact shape does not leak).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scail2.preprocess.cue_settings import FILTERS, CueSettings
from scail2.preprocess.palette import DETAIL_TAGS

FACE_TAG = DETAIL_TAGS["face"]
LUMA = (0.299, 0.587, 0.114)


@dataclass
class DrivingCues:
    pose: np.ndarray  # [T, H, W, 3] uint8
    face: np.ndarray  # [T, H, W, 3] uint8
    body_mask: np.ndarray  # [T, H, W] uint8, 255 = fully covered cell
    face_mask: np.ndarray  # [T, H, W] uint8
    head_boxes: np.ndarray  # [T, K, 4] float32 (x0, y0, x1, y1) per character, NaN where none

    @property
    def num_frames(self) -> int:
        return self.pose.shape[0]

    def frames(self, window: slice) -> DrivingCues:
        """The cues of some frames."""
        return DrivingCues(*(array[window] for array in self.__dict__.values()))


# ---------------------------------------------------------------------------------------------------
# 1. Low-pass filtering in the frequency domain
# ---------------------------------------------------------------------------------------------------


def normalized_frequency(height: int, width: int) -> torch.Tensor:
    """r [H, W//2 + 1]: each rfft2 bin's frequency as a fraction of the Nyquist frequency, radially combined."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64) / 0.5  # [-1, 1) of Nyquist
    fx = torch.fft.rfftfreq(width, dtype=torch.float64) / 0.5
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def low_pass_response(height: int, width: int, kind: str, cutoff: float, order: int = 2) -> torch.Tensor:
    """The transfer function [H, W//2 + 1] (float32) of a radial low-pass filter."""
    r = normalized_frequency(height, width)
    if kind == "gaussian":
        response = torch.exp(-0.5 * (r / cutoff) ** 2)
    elif kind == "butterworth":
        response = 1 / (1 + (r / cutoff) ** (2 * order))
    elif kind == "ideal":
        response = (r <= cutoff).double()
    elif kind == "none":
        response = torch.ones_like(r)
    else:
        raise ValueError(f"unknown filter {kind!r}; choose from {FILTERS}")
    return response.float()


def low_pass(images: torch.Tensor, kind: str, cutoff: float, order: int = 2) -> torch.Tensor:
    """Filter float images [..., H, W] per 2D frame: rfft2, multiply by the response, irfft2."""
    height, width = images.shape[-2:]
    spectrum = torch.fft.rfft2(images.float())
    response = low_pass_response(height, width, kind, cutoff, order)
    return torch.fft.irfft2(spectrum * response, s=(height, width))


# ---------------------------------------------------------------------------------------------------
# 2. Pose cue
# ---------------------------------------------------------------------------------------------------


def _signed(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [-1, 1] (mid-grey 127.5 is 0)."""
    return (torch.from_numpy(np.array(frames)).float().permute(0, 3, 1, 2) - 127.5) / 127.5


def _unsigned(video: torch.Tensor) -> np.ndarray:
    """float32 [T, 3, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (rounded, clamped)."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def pose_cue(frames: np.ndarray, foreground: np.ndarray, settings: CueSettings) -> np.ndarray:
    """Driving frames uint8 [T, H, W, 3] and a foreground [T, H, W] (bool) -> the pose cue uint8 [T, H, W, 3]."""
    video = _signed(frames)
    if settings.color == "gray":
        luma = torch.tensor(LUMA).view(1, 3, 1, 1)
        video = (video * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    video = video * torch.from_numpy(np.array(foreground))[:, None].float()
    return _unsigned(low_pass(video, settings.filter, settings.cutoff, settings.order))


# ---------------------------------------------------------------------------------------------------
# 3. Head boxes
# ---------------------------------------------------------------------------------------------------


def head_box_from_mask(mask: np.ndarray, head_fraction: float) -> np.ndarray:
    """A square head box (x0, y0, x1, y1) from the top of one character's mask [H, W]; NaN when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.full(4, np.nan, dtype=np.float32)
    top, bottom = rows[0], rows[-1] + 1
    side = max(1.0, head_fraction * (bottom - top))
    head_rows = mask[top : int(np.ceil(top + side))]
    centre_x = np.flatnonzero(head_rows.any(axis=0)).mean() + 0.5
    return np.array([centre_x - side / 2, top, centre_x + side / 2, top + side], dtype=np.float32)


def head_box_from_tags(region: np.ndarray) -> np.ndarray:
    """The bounding box (x0, y0, x1, y1) of a character's face/head pixels [H, W]; NaN when there are none."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return np.full(4, np.nan, dtype=np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def head_boxes(
    ids: np.ndarray, identities: list[int], settings: CueSettings, detail: np.ndarray | None = None
) -> np.ndarray:
    """Boxes [T, K, 4] of each identity's head per frame: from face/head tags `detail` [T, H, W] when given,
    else from the top of the mask; then smoothed over time and held through gaps."""
    boxes = np.full((ids.shape[0], len(identities), 4), np.nan, dtype=np.float32)
    for t in range(ids.shape[0]):
        for k, identity in enumerate(identities):
            mask = ids[t] == identity
            if detail is not None:
                boxes[t, k] = head_box_from_tags(mask & (detail[t] == FACE_TAG))
            else:
                boxes[t, k] = head_box_from_mask(mask, settings.head_fraction)
    return smooth_boxes(boxes, settings.box_smoothing)


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` frames of the boxes present, then gaps filled from the nearest frame
    with a box (earlier first); characters never seen stay NaN."""
    present = ~np.isnan(boxes[..., 0])  # [T, K]
    values = np.where(present[..., None], boxes, 0.0)
    half, frames = window // 2, boxes.shape[0]
    smoothed = np.full_like(boxes, np.nan)
    for t in range(frames):
        span = slice(max(0, t - half), min(frames, t + half + 1))
        count = present[span].sum(0)  # [K]
        total = values[span].sum(0)  # [K, 4]
        smoothed[t] = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], np.nan)
    smoothed = np.where(present[..., None], smoothed, np.nan)
    for k in range(boxes.shape[1]):
        seen = np.flatnonzero(present[:, k])
        if seen.size:
            nearest = seen[np.clip(np.searchsorted(seen, np.arange(frames), side="right") - 1, 0, None)]
            nearest = np.where(np.arange(frames) < seen[0], seen[0], nearest)
            smoothed[:, k] = smoothed[nearest, k]
    return smoothed.astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# 4. Face cue
# ---------------------------------------------------------------------------------------------------


def crop_box(box: np.ndarray, scale: float, aspect: float) -> tuple[float, float, float, float]:
    """The crop (centre x, centre y, width, height) around a head box: enlarged `scale` times, then grown on one
    side to `aspect` = width / height."""
    x0, y0, x1, y1 = box
    side = scale * max(x1 - x0, y1 - y0)
    width, height = (side * aspect, side) if aspect >= 1 else (side, side / aspect)
    return (x0 + x1) / 2, (y0 + y1) / 2, width, height


def crop_resized(frame: torch.Tensor, crop: tuple[float, float, float, float], size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crop of a [3, H, W] signed frame to `size` (h, w); outside the frame is 0 (mid-grey)."""
    _, height, width = frame.shape
    cx, cy, cw, ch = crop
    out_h, out_w = size
    # sample points at output pixel centres, in grid_sample's [-1, 1] (align_corners=False) coordinates
    xs = cx + (torch.arange(out_w, dtype=torch.float32) + 0.5 - out_w / 2) * (cw / out_w)
    ys = cy + (torch.arange(out_h, dtype=torch.float32) + 0.5 - out_h / 2) * (ch / out_h)
    grid = torch.stack(torch.meshgrid(2 * xs / width - 1, 2 * ys / height - 1, indexing="xy"), dim=-1)
    return F.grid_sample(frame[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def panel_widths(width: int, panels: int) -> list[int]:
    """Widths of `panels` side-by-side panels filling `width` (the last takes the remainder)."""
    base = width // panels
    return [base] * (panels - 1) + [width - base * (panels - 1)]


def face_cue(frames: np.ndarray, boxes: np.ndarray, settings: CueSettings) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] and head boxes [T, K, 4] -> the face cue uint8 [T, H, W, 3]: each character's
    enlarged head crop in its own panel (mid-grey where a character has no box)."""
    video = _signed(frames)
    frames_n, _, height, width = video.shape
    out = torch.zeros_like(video)
    widths = panel_widths(width, max(1, boxes.shape[1]))
    for t in range(frames_n):
        left = 0
        for k, panel_w in enumerate(widths):
            if k < boxes.shape[1] and not np.isnan(boxes[t, k, 0]):
                crop = crop_box(boxes[t, k], settings.face_scale, panel_w / height)
                out[t, :, :, left : left + panel_w] = crop_resized(video[t], crop, (height, panel_w))
            left += panel_w
    return _unsigned(out)


# ---------------------------------------------------------------------------------------------------
# 5. Location cue
# ---------------------------------------------------------------------------------------------------


def grid_soften(mask: np.ndarray, grid: int) -> np.ndarray:
    """Binary masks [T, H, W] -> uint8 [T, H, W]: each grid x grid cell holds the fraction it covers (x 255)."""
    masks = torch.from_numpy(np.array(mask)).float()[:, None]  # [T, 1, H, W]
    height, width = masks.shape[-2:]
    cells = (-(-height // grid), -(-width // grid))
    padded = F.pad(masks, (0, cells[1] * grid - width, 0, cells[0] * grid - height))
    coverage = F.avg_pool2d(padded, grid)  # [T, 1, cells_h, cells_w]
    spread = coverage.repeat_interleave(grid, 2).repeat_interleave(grid, 3)[..., :height, :width]
    return (spread[:, 0] * 255).round().to(torch.uint8).numpy()


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Head boxes [T, K, 4] -> bool masks [T, H, W] of the pixels whose centres lie in any box."""
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    masks = np.zeros((boxes.shape[0], height, width), dtype=bool)
    for t, frame_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in frame_boxes[~np.isnan(frame_boxes[:, 0])]:
            masks[t] |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return masks


# ---------------------------------------------------------------------------------------------------
# 6. The triplet
# ---------------------------------------------------------------------------------------------------


def character_identities(ids: np.ndarray) -> list[int]:
    """The identities present anywhere in identity maps [T, H, W], in order (0 is background)."""
    return [int(i) for i in np.unique(ids) if i != 0]


def extract_cues(
    frames: np.ndarray,
    ids: np.ndarray,
    settings: CueSettings | None = None,
    detail: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> DrivingCues:
    """The Driving Cue Triplet of frames uint8 [T, H, W, 3] with identity maps [T, H, W] (0 background).

    Head boxes: `boxes` [T, K, 4] when given (a face detector's), else from face/head tags `detail` [T, H, W]
    (procedural data), else from the top of each mask.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or ids.shape != frames.shape[:3]:
        raise ValueError(f"frames must be [T, H, W, 3] and ids [T, H, W]; got {frames.shape} and {ids.shape}")
    settings = settings or CueSettings()
    foreground = ids > 0
    if boxes is None:
        boxes = head_boxes(ids, character_identities(ids), settings, detail)
    height, width = ids.shape[1:]
    return DrivingCues(
        pose=pose_cue(frames, foreground, settings),
        face=face_cue(frames, boxes, settings),
        body_mask=grid_soften(foreground, settings.grid),
        face_mask=grid_soften(box_masks(boxes, height, width), settings.grid),
        head_boxes=boxes,
    )


def cues_at_size(cues: DrivingCues, target_hw: tuple[int, int]) -> DrivingCues:
    """Cues made at the driving video's own size, resized and centre-cropped to the generation size as the
    driving frames are (`resize_crop_uint8`); head boxes follow the same scaling and crop."""
    from scail2.preprocess.resize import rectangle_crop_geometry, resize_crop_uint8

    source_hw = cues.pose.shape[1:3]
    if tuple(source_hw) == tuple(target_hw):
        return cues
    (new_h, new_w), top, left = rectangle_crop_geometry(source_hw, target_hw)
    scale = np.array([new_w / source_hw[1], new_h / source_hw[0]] * 2, np.float32)
    offset = np.array([left, top, left, top], np.float32)

    def resize_mask(mask: np.ndarray) -> np.ndarray:
        return resize_crop_uint8(torch.from_numpy(np.array(mask))[..., None], target_hw)[..., 0].numpy()

    return DrivingCues(
        pose=resize_crop_uint8(torch.from_numpy(np.array(cues.pose)), target_hw).numpy(),
        face=resize_crop_uint8(torch.from_numpy(np.array(cues.face)), target_hw).numpy(),
        body_mask=resize_mask(cues.body_mask),
        face_mask=resize_mask(cues.face_mask),
        head_boxes=cues.head_boxes * scale - offset,
    )
