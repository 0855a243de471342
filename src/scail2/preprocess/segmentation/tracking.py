"""Identities through a clip: connected pieces of the foreground, tracked by overlap and appearance.

Per frame, the foreground is cut into 8-connected components. Every live track predicts where it is
now (its last mask shifted by its velocity) and claims the component it overlaps most:
- a component claimed by one track joins it, with any smaller pieces that overlap only that track;
- a component claimed by several tracks (characters touching or crossing) is split between them,
  pixel by pixel, by the position prior (blurred predicted masks) plus each track's colour model;
- an unclaimed component is matched by appearance to a track lost earlier (re-identification after an
  occlusion), else it starts a new track.
After the clip, tracks are filtered (too short, too small, beyond `max_characters`) and numbered in the
upstream order: by first appearance, then left to right by the bounding-box centre where they appear.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from scail2.preprocess.segmentation.colour_model import HISTOGRAM_BINS, colour_bins
from scail2.preprocess.segmentation.filters import dilate, gaussian_blur, label_components

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingSettings:
    max_characters: int = 1  # keep the largest tracks (`scail2 masks --max-characters`)
    min_track_fraction: float = 0.01  # smaller tracks are dropped (kept, with a note, when nothing larger moves)
    min_component_fraction: float = 2e-4  # pieces under this share of the frame are ignored
    min_new_track_fraction: float = 2e-3  # a piece must cover this share of the frame to start a track
    max_speed_fraction: float = 0.03  # predicted motion per frame is capped at this share of the longer side
    min_track_frames: float = 0.1  # tracks seen in fewer than this share of frames (and >= 2) are dropped
    companion_gap_fraction: float = 0.01  # pieces closer than this (share of the longer side) touch
    companion_touching: float = 0.8  # a track touching a larger one in this share of shared frames joins it
    majority: float = 0.92  # share of a piece's pixel votes that gives one track the whole piece
    reidentify_similarity: float = 0.6  # colour similarity (Bhattacharyya) that revives a lost track
    position_sigma_fraction: float = 0.03  # blur of predicted masks when splitting merged components
    colour_weight: float = 1.0  # weight of colour against position when splitting


@dataclass
class Track:
    key: int
    first_frame: int
    first_centre_x: float  # bounding-box centre x where the track first appears [pixels]
    mask: torch.Tensor  # [h, w] bool, last seen
    last_frame: int
    colour_counts: torch.Tensor  # [bins^3] running colour histogram (counts)
    velocity: torch.Tensor = field(default_factory=lambda: torch.zeros(2))  # (dy, dx) pixels per frame
    merged: bool = False  # the last frame split a component between this and other tracks
    frames: int = 0
    peak_area: int = 0
    total_area: int = 0

    def log_colour(self) -> torch.Tensor:
        counts = self.colour_counts + 1e-3 * self.colour_counts.sum().clamp_min(1.0) / self.colour_counts.numel()
        return torch.log(counts / counts.sum())


@dataclass
class TrackedIdentities:
    ids: torch.Tensor  # [T, h, w] uint8: 0 background, k = identity k (palette order)
    tracks: list[Track]  # in identity order
    notes: list[str]  # one line per dropped (or small but kept) track, for the user


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([ys.float().mean(), xs.float().mean()])


def _shift(mask: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """bool [h, w] moved by whole pixels (dy, dx), zeros shifted in."""
    dy, dx = (int(round(float(v))) for v in offset)
    height, width = mask.shape
    out = torch.zeros_like(mask)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    out[max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)] = mask[
        max(0, -dy) : height + min(0, -dy), max(0, -dx) : width + min(0, -dx)
    ]
    return out


def _similarity(counts_a: torch.Tensor, counts_b: torch.Tensor) -> float:
    """Bhattacharyya coefficient of two colour histograms (1 = identical distributions)."""
    p = counts_a / counts_a.sum().clamp_min(1e-9)
    q = counts_b / counts_b.sum().clamp_min(1e-9)
    return float(torch.sqrt(p * q).sum())


class IdentityTracker:
    """Feeds frames one by one (`update`) and remembers every frame's assignment."""

    def __init__(self, height: int, width: int, settings: TrackingSettings):
        self.settings = settings
        self.area = height * width
        self.tracks: list[Track] = []
        self.assignments: list[torch.Tensor] = []  # per frame int64 [h, w] of track keys (0 none)
        self.sigma = max(1.0, settings.position_sigma_fraction * max(height, width))
        self.max_speed = settings.max_speed_fraction * max(height, width)

    def _counts(self, bins: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.bincount(bins[mask], minlength=HISTOGRAM_BINS**3).float()

    def update(self, t: int, foreground: torch.Tensor, bins: torch.Tensor) -> None:
        """Assign frame `t`'s foreground (bool [h, w]) to tracks; `bins` are its colour-histogram bins."""
        labels, count = label_components(foreground)
        areas = torch.bincount(labels.flatten(), minlength=count + 1)
        live = [k for k, track in enumerate(self.tracks) if t - track.last_frame <= max(3, t // 4 + 3)]
        # extrapolate at most two frames: beyond that a velocity guess misleads more than it helps
        predicted = {
            k: _shift(self.tracks[k].mask, self.tracks[k].velocity * min(2, t - self.tracks[k].last_frame))
            for k in live
        }
        reach = {k: gaussian_blur(mask.float(), self.sigma) for k, mask in predicted.items()}
        assignment = torch.zeros_like(labels)
        clean = torch.zeros_like(foreground)
        whole: dict[int, list[torch.Tensor]] = {}  # track index -> pieces it took whole
        for c in range(1, count + 1):
            if areas[c] < self.settings.min_component_fraction * self.area:
                continue
            piece = labels == c
            candidates = [k for k in live if float(reach[k][piece].max()) > 0.05]
            key = (
                self._vote(piece, candidates, reach, bins, assignment)
                if candidates
                else self._reidentify_or_create(t, piece, bins)
            )
            if key is not None:
                assignment[piece] = self.tracks[key].key
                clean |= piece
                whole.setdefault(key, []).append(piece)
        self._hand_back_extra_pieces(t, whole, assignment, bins)
        self._update_tracks(t, assignment, clean, bins)
        self.assignments.append(assignment)

    def _vote(self, piece, candidates, reach, bins, assignment) -> int | None:
        """Per-pixel position + colour scores; a clear majority takes the whole piece (its track index is
        returned), otherwise the pixels are shared (touching or overlapping characters) and None returned."""
        scores = torch.stack(
            [
                torch.log(reach[k][piece] + 0.02)
                + self.settings.colour_weight * self.tracks[k].log_colour()[bins[piece]]
                for k in candidates
            ]
        )
        winners = scores.argmax(dim=0)
        votes = torch.bincount(winners, minlength=len(candidates)).float() / winners.numel()
        if float(votes.max()) >= self.settings.majority:
            return candidates[int(votes.argmax())]
        keys = torch.tensor([self.tracks[k].key for k in candidates])
        assignment[piece] = keys[winners]
        for k in candidates:
            self.tracks[k].merged = True
        return None

    def _hand_back_extra_pieces(self, t: int, whole: dict, assignment: torch.Tensor, bins: torch.Tensor) -> None:
        """When one track took several separate pieces, the smaller ones may be a character reappearing
        from behind it: give such a piece to a track missing from this frame whose colours match better."""
        taken = set(whole)
        for key, pieces in whole.items():
            for piece in sorted(pieces, key=lambda p: int(p.sum()), reverse=True)[1:]:
                counts = self._counts(bins, piece)
                own = _similarity(counts, self.tracks[key].colour_counts)
                missing = [k for k in range(len(self.tracks)) if k not in taken and self.tracks[k].last_frame < t]
                best = max(missing, key=lambda k: _similarity(counts, self.tracks[k].colour_counts), default=None)
                if best is None:
                    continue
                other = _similarity(counts, self.tracks[best].colour_counts)
                if other > own and other >= self.settings.reidentify_similarity:
                    assignment[piece] = self.tracks[best].key
                    taken.add(best)

    def _reidentify_or_create(self, t: int, piece, bins) -> int | None:
        """A piece no live track reaches: a lost track with the same colours, else a new track."""
        counts = self._counts(bins, piece)
        lost = [k for k, track in enumerate(self.tracks) if track.last_frame < t]
        best = max(lost, key=lambda k: _similarity(counts, self.tracks[k].colour_counts), default=None)
        if (
            best is not None
            and _similarity(counts, self.tracks[best].colour_counts) >= self.settings.reidentify_similarity
        ):
            return best
        if counts.sum() < self.settings.min_new_track_fraction * self.area:
            return None
        ys, xs = torch.nonzero(piece, as_tuple=True)
        centre_x = 0.5 * float(xs.min() + xs.max())
        self.tracks.append(Track(len(self.tracks) + 1, t, centre_x, piece.clone(), t, counts))
        return len(self.tracks) - 1

    def _update_tracks(self, t: int, assignment: torch.Tensor, clean: torch.Tensor, bins: torch.Tensor) -> None:
        for track in self.tracks:
            mask = assignment == track.key
            area = int(mask.sum())
            if area == 0:
                continue
            if track.last_frame == t - 1 and track.frames and not track.merged:
                step = _centroid(mask) - _centroid(track.mask)
                track.velocity = (0.5 * track.velocity + 0.5 * step).clamp(-self.max_speed, self.max_speed)
            elif track.merged:
                track.velocity = 0.5 * track.velocity  # centroids of shared pieces jump; trust them less
            track.merged = False
            track.mask, track.last_frame = mask, t
            colours = self._counts(bins, mask & clean)  # learn appearance only from unshared pieces
            if colours.sum() > 0:
                track.colour_counts = 0.8 * track.colour_counts + 0.2 * colours if track.frames else colours
            track.frames += 1
            track.peak_area = max(track.peak_area, area)
            track.total_area += area


def _merge_companions(tracker: IdentityTracker, settings: TrackingSettings) -> None:
    """Fold a track into a larger one it touches in most frames they share (a hand or head that came
    apart from the body's piece when the track started). Characters that only touch while crossing stay
    apart."""
    height, width = tracker.assignments[0].shape
    radius = max(1, round(settings.companion_gap_fraction * max(height, width)))
    order = sorted(tracker.tracks, key=lambda tr: tr.total_area)
    for small in order:
        for large in reversed(order):
            if large.total_area <= small.total_area or large.key == small.key:
                continue
            shared = touching = 0
            for assignment in tracker.assignments:
                mine, theirs = assignment == small.key, assignment == large.key
                if bool(mine.any()) and bool(theirs.any()):
                    shared += 1
                    touching += bool((dilate(mine, radius) & theirs).any())
            if shared >= 0.5 * small.frames and touching >= settings.companion_touching * shared:
                for assignment in tracker.assignments:
                    assignment[assignment == small.key] = large.key
                large.total_area += small.total_area
                large.peak_area = max(large.peak_area, small.peak_area)
                large.first_frame = min(large.first_frame, small.first_frame)
                small.total_area, small.frames = 0, 0
                break


def _select(tracks: list[Track], count: int, area: int, settings: TrackingSettings) -> tuple[list[Track], list[str]]:
    """Drop short, small and surplus tracks; the rest in upstream identity order.

    Small tracks are kept, with a note, when nothing larger moves: a distant character or one that only moves a
    hand is better reviewed in the preview than refused.
    """
    kept, small, notes = [], [], []
    for track in tracks:
        if track.frames == 0:  # folded into another track
            continue
        if track.frames < max(2, settings.min_track_frames * count):
            notes.append(f"dropped a track seen in only {track.frames} of {count} frames (spurious motion)")
        elif track.peak_area / area < settings.min_track_fraction:
            small.append(track)
        else:
            kept.append(track)
    for track in small:
        where = (
            f"track at x={track.first_centre_x:.0f}px from frame {track.first_frame} covering at most "
            f"{100 * track.peak_area / area:.2f}% of the frame (under {100 * settings.min_track_fraction:g}%)"
        )
        notes.append(
            f"dropped a {where}" if kept else f"kept a small {where}, as nothing larger moves; check the preview"
        )
    if not kept:
        kept = small
    kept.sort(key=lambda tr: tr.total_area, reverse=True)
    for track in kept[settings.max_characters :]:
        notes.append(
            f"dropped a track at x={track.first_centre_x:.0f}px from frame {track.first_frame} beyond "
            f"--max-characters {settings.max_characters}"
        )
    kept = sorted(kept[: settings.max_characters], key=lambda tr: (tr.first_frame, tr.first_centre_x))
    return kept, notes


def track_identities(
    foreground: torch.Tensor, images: torch.Tensor, settings: TrackingSettings = TrackingSettings()
) -> TrackedIdentities:
    """Identity map [T, h, w] uint8 of a clip's foreground (bool [T, h, w]) with its frames [T, 3, h, w]."""
    count, height, width = foreground.shape
    tracker = IdentityTracker(height, width, settings)
    bins = colour_bins(images)
    for t in range(count):
        tracker.update(t, foreground[t], bins[t])
    _merge_companions(tracker, settings)
    kept, notes = _select(tracker.tracks, count, height * width, settings)
    lookup = torch.zeros(len(tracker.tracks) + 1, dtype=torch.uint8)
    for identity, track in enumerate(kept, start=1):
        lookup[track.key] = identity
    ids = torch.stack([lookup[assignment] for assignment in tracker.assignments])
    for line in notes:
        logger.debug("%s", line)
    return TrackedIdentities(ids, kept, notes)
