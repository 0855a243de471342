"""Masks from files: the four methods behind one interface, used by `scail2 masks` and `scail2 animate`.

- "motion": the weight-free method (`motion.py` + `tracking.py`) at a working resolution, rendered
  back at any resolution with the fast guided filter so edges follow the full-resolution frame;
- "sam2": SAM 2 from a local weights folder, prompted by `--boxes` / `--points` or automatically by
  the weight-free method's tracks;
- "provided": the user's masks (binary or palette, video or PNG folder);
- the reference: its alpha channel, a user mask, or still-image segmentation (`still.py`).

Every method yields identity maps (uint8, 0 background, k = identity k in upstream palette order).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from scail2.errors import Scail2Error
from scail2.preprocess.masks import describe_identities, normalize_user_mask
from scail2.preprocess.palette import IDENTITY_COLORS, MAX_IDENTITIES
from scail2.preprocess.segmentation.filters import (
    as_float_images,
    component_areas,
    fill_holes,
    fit_long_side,
    label_components,
    resize_images,
    single_threaded,
)
from scail2.preprocess.segmentation.motion import MotionSettings, segment_clip
from scail2.preprocess.segmentation.refine import Refinement, refine_identities, upsample_identities
from scail2.preprocess.segmentation.sam2 import ObjectPrompt, Sam2Tracker, auto_prompts, logits_to_identities
from scail2.preprocess.segmentation.still import StillSettings, still_probability
from scail2.preprocess.segmentation.tracking import TrackingSettings, track_identities

logger = logging.getLogger(__name__)

METHODS = ("auto", "sam2", "motion", "provided")
# A reference piece smaller than this share of the largest one is clutter, not a character.
REFERENCE_MIN_RELATIVE_AREA = 0.15


@dataclass(frozen=True)
class MaskSettings:
    method: str = "auto"
    # One by default: spurious motion (parallax, reflections) must not become a second identity, which
    # would also break the reference binding; several characters are asked for with --max-characters K.
    max_characters: int = 1
    min_track_fraction: float = 0.01  # smaller tracks are dropped (kept, with a note, when nothing larger moves)
    work_size: int = 320  # longer side of the weight-free method's working resolution
    refinement: Refinement = field(default_factory=Refinement)
    sam2_model: str | None = None
    prompts: tuple[ObjectPrompt, ...] = ()
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise Scail2Error(f"--method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 1 <= self.max_characters <= MAX_IDENTITIES:
            raise Scail2Error(f"--max-characters {self.max_characters} must be between 1 and {MAX_IDENTITIES}")
        if self.work_size < 32:
            raise Scail2Error(f"--work-size {self.work_size} is too small; use at least 32 pixels")

    def tracking(self) -> TrackingSettings:
        return TrackingSettings(max_characters=self.max_characters, min_track_fraction=self.min_track_fraction)


def downscaler(work_size: int):
    """A `read_video` frame transform: uint8 [H, W, 3] -> float [3, h, w] with the longer side <= work_size."""

    def transform(frame: np.ndarray) -> torch.Tensor:
        image = as_float_images(torch.from_numpy(np.ascontiguousarray(frame)))
        return resize_images(image, fit_long_side(*image.shape[-2:], work_size))[0]

    return transform


def describe_tracks(ids: torch.Tensor, first_frames: list[int] | None = None) -> list[dict]:
    """Per identity: palette index, colour, first frame and its largest / mean share of the frame."""
    area = ids.shape[-2] * ids.shape[-1]
    summary = []
    for identity in range(1, MAX_IDENTITIES + 1):
        areas = (ids == identity).flatten(1).sum(dim=1).float() / area
        if float(areas.max()) == 0:
            continue
        first = int(torch.nonzero(areas > 0)[0]) if first_frames is None else first_frames[identity - 1]
        summary.append(
            {
                "index": identity,
                "colour": list(IDENTITY_COLORS[identity - 1]),
                "name": describe_identities((identity - 1,)),
                "first_frame": first,
                "peak_fraction": round(float(areas.max()), 5),
                "mean_fraction": round(float(areas.mean()), 5),
            }
        )
    return summary


# ---------------------------------------------------------------------------------------------------
# 1. Driving masks
# ---------------------------------------------------------------------------------------------------


class DrivingMasks(ABC):
    """Identity maps of a driving video, rendered frame by frame at the frames' own resolution."""

    method: str
    identities: list[dict]
    notes: list[str]
    frame_count: int | None = None  # frames the method saw (None when it streams)

    @abstractmethod
    def render(self, frames: Iterable[np.ndarray]) -> Iterator[torch.Tensor]: ...

    @property
    def count(self) -> int:
        return len(self.identities)


class MotionMasks(DrivingMasks):
    """The weight-free method: segmentation and tracking at the working resolution (`small` [T, 3, h, w])."""

    def __init__(self, small: torch.Tensor, settings: MaskSettings, motion: MotionSettings = MotionSettings()):
        self.small, self.refinement = small, settings.refinement
        self.frame_count = small.shape[0]
        with single_threaded():
            segmentation = segment_clip(small, motion)
            tracked = track_identities(segmentation.probability > 0.5, small, settings.tracking())
        self.ids = tracked.ids
        self.method = "motion" if segmentation.method == "background" else "motion (propagation: moving camera)"
        self.notes = list(tracked.notes)
        if segmentation.method != "background":
            self.notes.append(
                f"{100 * segmentation.changed_fraction:.0f}% of a typical frame differs from the "
                "background model even after aligning the camera; still-image segmentation was carried "
                "through the clip instead (lower quality; --method sam2 does better)"
            )
        self.identities = describe_tracks(self.ids, [track.first_frame for track in tracked.tracks])
        if not self.identities:
            raise Scail2Error(
                "no moving character found (the weight-free method needs a character that moves in "
                "front of a fixed background)"
            )

    def render(self, frames: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        for t, frame in enumerate(frames):
            large = torch.from_numpy(np.ascontiguousarray(frame))  # uint8 [H, W, 3]: read only along the outlines
            with single_threaded():  # per-frame work is small and mostly gathers: threads cost more than they gain
                ids = upsample_identities(self.ids[t], self.small[t], large, self.count)
                ids = refine_identities(ids, self.refinement)
            yield ids


class Sam2Masks(DrivingMasks):
    """SAM 2 tracking; prompts are given or come from the weight-free method on `small`."""

    def __init__(self, small: torch.Tensor, video_size: tuple[int, int], settings: MaskSettings):
        if not settings.sam2_model:
            raise Scail2Error(
                "--method sam2 needs --sam2-model DIR (a local SAM 2 folder, e.g. a converted "
                "facebook/sam2.1-hiera-large saved with Sam2VideoModel.save_pretrained)"
            )
        self.tracker = Sam2Tracker(settings.sam2_model, settings.device)
        self.refinement = settings.refinement
        self.method, self.notes = "sam2", []
        prompts = list(settings.prompts)
        if not prompts:
            weight_free = MotionMasks(small, settings)
            scale = (video_size[1] / small.shape[-1], video_size[0] / small.shape[-2])
            prompts = auto_prompts(weight_free.ids, *scale)
            self.notes.append(f"SAM 2 prompted automatically with {len(prompts)} boxes from the weight-free method")
        if len(prompts) > MAX_IDENTITIES:
            raise Scail2Error(f"{len(prompts)} SAM 2 prompts; at most {MAX_IDENTITIES} characters are supported")
        self.prompts = prompts
        self.identities = [
            {
                "index": k,
                "colour": list(IDENTITY_COLORS[k - 1]),
                "name": describe_identities((k - 1,)),
                "first_frame": p.frame,
            }
            for k, p in enumerate(self._ordered(), start=1)
        ]

    def _ordered(self) -> list[ObjectPrompt]:
        """Upstream order: first appearance, then left to right by the prompt's centre x."""

        def centre_x(prompt: ObjectPrompt) -> float:
            if prompt.box is not None:
                return 0.5 * (prompt.box[0] + prompt.box[2])
            return float(np.mean([x for x, _ in prompt.points]))

        order = sorted(range(len(self.prompts)), key=lambda k: (self.prompts[k].frame, centre_x(self.prompts[k])))
        return [self.prompts[k] for k in order]

    def render(self, frames: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        for logits in self.tracker.track(frames, self._ordered()):
            yield refine_identities(logits_to_identities(logits), self.refinement)


class ProvidedMasks(DrivingMasks):
    """The user's masks (uint8 RGB [T, H, W, 3], binary or palette), kept exactly unless refined."""

    def __init__(self, frames: torch.Tensor, settings: MaskSettings, source: str):
        from scail2.preprocess.mask_folder import palette_to_identities

        self.source = source
        palette = normalize_user_mask(frames, "animate", "driving")
        self.ids = palette_to_identities(palette)
        self.frame_count = self.ids.shape[0]
        self.refinement, self.method = settings.refinement, "provided"
        self.notes = []
        self.identities = describe_tracks(self.ids)
        if not self.identities:
            raise Scail2Error(
                f"{source}: marks no character (no pixel is bright or in an identity colour); give "
                "white-on-black or palette-coloured masks"
            )

    def render(self, frames: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        for t, frame in enumerate(frames):
            if t >= self.ids.shape[0]:
                raise Scail2Error(
                    f"{self.source}: has {self.ids.shape[0]} mask frames but the driving video has more; "
                    "give one mask frame per driving frame (or --max-frames)"
                )
            ids = self.ids[t]
            if tuple(ids.shape) != tuple(frame.shape[:2]):
                ids = F.interpolate(ids[None, None].float(), size=frame.shape[:2], mode="nearest")[0, 0].to(torch.uint8)
            yield refine_identities(ids, self.refinement)


# ---------------------------------------------------------------------------------------------------
# 2. Reference masks
# ---------------------------------------------------------------------------------------------------


def split_left_to_right(foreground: torch.Tensor, count: int, source: str, *, drop_clutter: bool) -> torch.Tensor:
    """bool [H, W] -> identity map with the `count` largest pieces numbered left to right (bbox centre x).

    With `count` 1 every piece kept is the one character (a detached hand or prop stays with it).
    Raises Scail2Error when fewer than `count` pieces are found (the identity counts differ).
    """
    labels, pieces = label_components(foreground)
    areas = component_areas(labels, pieces)[1:].float()
    order = sorted(range(pieces), key=lambda c: float(areas[c]), reverse=True)
    if drop_clutter and order:
        order = [c for c in order if areas[c] >= REFERENCE_MIN_RELATIVE_AREA * areas[order[0]]]
    if count == 1 and order:
        keep = torch.zeros(pieces + 1, dtype=torch.bool)
        keep[torch.tensor(order) + 1] = True
        return keep[labels].to(torch.uint8)
    if len(order) < count:
        raise Scail2Error(
            f"{source}: shows {len(order)} character(s) but the driving masks have {count}; give a "
            f"reference with {count} separate characters, a reference mask (--ref-mask), or change "
            "--max-characters"
        )
    chosen = order[:count]
    centres = []
    for c in chosen:
        xs = torch.nonzero((labels == c + 1).any(dim=0)).flatten()
        centres.append(0.5 * float(xs[0] + xs[-1]))
    ids = torch.zeros(foreground.shape, dtype=torch.uint8)
    for rank, c in enumerate(sorted(chosen, key=lambda c: centres[chosen.index(c)]), start=1):
        ids[labels == c + 1] = rank
    return ids


def still_identities(
    rgb: np.ndarray, count: int, source: str, work_size: int = 320, settings: StillSettings = StillSettings()
) -> torch.Tensor:
    """Reference image without alpha -> identity map [H, W] by still-image segmentation."""
    large = as_float_images(torch.from_numpy(np.ascontiguousarray(rgb)))[0]
    small = resize_images(large[None], fit_long_side(*large.shape[-2:], work_size))[0]
    with single_threaded():
        probability = still_probability(small, settings)
        foreground = fill_holes(probability > 0.5, 0.01 * probability.numel())
        ids_small = split_left_to_right(foreground, count, source, drop_clutter=True)
    return upsample_identities(ids_small, small, large, count)


def reference_identities(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    count: int,
    source: str,
    user_mask: np.ndarray | None = None,
    refinement: Refinement = Refinement(),
):
    """(identity map [H, W], method) of the reference image for `count` driving identities."""
    if user_mask is not None:
        from scail2.preprocess.mask_folder import palette_to_identities

        palette = normalize_user_mask(user_mask, "animate", "driving")  # black background: identities only
        ids, method = palette_to_identities(palette), "provided"
        if int(ids.max()) <= 1 and count > 1:  # a binary mask of several characters: split left to right
            ids = split_left_to_right(ids > 0, count, source, drop_clutter=False)
    elif alpha is not None:
        ids, method = split_left_to_right(torch.from_numpy(alpha >= 128), count, source, drop_clutter=False), "alpha"
    else:
        ids, method = still_identities(rgb, count, source), "still"
    return refine_identities(ids, refinement), method
