"""Clips from outside the procedural world: new shapes on plain backgrounds moving along curved paths.

A model trained on the procedural world's body plans, scenes and mostly in-place motions meets here what a
user brings: a creature it never saw (a lobed body with waving feelers and eyes), on a plain backdrop,
travelling across the frame along an arc while it turns, grows or shrinks. Each clip is an animation pair:
the reference is creature A standing still on backdrop A, the driving video creature B (another shape and
colours) on backdrop B, the target creature A doing B's motion on backdrop A. Everything is drawn here (4x
supersampled, so the edges are anti-aliased and the identity masks exact) and depends only on (seed, index).
The empty scene is the backdrop colour, kept in the metadata as `plate_colour`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scail2.data.pairs import PairSample

OUTSIDE_SEED = 4000
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Creature:
    lobes: int  # bumps around the body outline (0: an ellipse)
    lobe_depth: float  # [body radius]
    aspect: float  # body width / height
    feelers: int  # waving appendages on top
    body: tuple[int, int, int]
    limb: tuple[int, int, int]


@dataclass(frozen=True)
class Path:
    start: tuple[float, float]  # centre at t = 0 [fraction of the frame]
    end: tuple[float, float]
    arc: float  # sideways bulge of the path [fraction of the frame]
    size: tuple[float, float]  # body height at start and end [fraction of the frame]: nearer or farther
    turns: float  # body rotation over the clip [turns]
    wave_hz: float  # feeler beat [cycles per frame]


def _colour(rng: np.random.Generator, low: float, high: float) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(int(255 * low), int(255 * high), size=3))


def sample_creature(rng: np.random.Generator) -> Creature:
    return Creature(
        lobes=int(rng.choice([0, 3, 4, 5, 6])),
        lobe_depth=float(rng.uniform(0.1, 0.3)),
        aspect=float(rng.uniform(0.6, 1.3)),
        feelers=int(rng.integers(1, 4)),
        body=_colour(rng, 0.1, 0.95),
        limb=_colour(rng, 0.1, 0.95),
    )


def sample_path(rng: np.random.Generator) -> Path:
    side = float(rng.choice([-1.0, 1.0]))
    y0, y1 = rng.uniform(0.45, 0.65, size=2)
    return Path(
        start=(0.5 - side * rng.uniform(0.2, 0.3), float(y0)),
        end=(0.5 + side * rng.uniform(0.2, 0.3), float(y1)),
        arc=float(rng.uniform(0.1, 0.2) * rng.choice([-1, 1])),
        size=(float(rng.uniform(0.35, 0.5)), float(rng.uniform(0.35, 0.5))),
        turns=float(rng.uniform(-0.15, 0.15)),
        wave_hz=float(rng.uniform(0.08, 0.15)),
    )


def _pose(path: Path, t: float) -> tuple[float, float, float, float]:
    """(centre x, centre y, body height, rotation) at clip fraction t in [0, 1]."""
    x = path.start[0] + (path.end[0] - path.start[0]) * t
    y = path.start[1] + (path.end[1] - path.start[1]) * t - path.arc * np.sin(np.pi * t)
    size = path.size[0] + (path.size[1] - path.size[0]) * t
    return x, y, size, 2 * np.pi * path.turns * t


def _window(pose, size: int) -> tuple[slice, slice]:
    """Output rows and columns that can hold the creature (its feelers reach about 1.1 body heights out)."""
    reach = 1.1 * pose[2] * size
    rows = slice(max(0, int(pose[1] * size - reach)), min(size, int(np.ceil(pose[1] * size + reach))))
    cols = slice(max(0, int(pose[0] * size - reach)), min(size, int(np.ceil(pose[0] * size + reach))))
    return rows, cols


def _shapes(creature: Creature, pose, phase: float, size: int, window) -> tuple[np.ndarray, ...]:
    """Supersampled coverage of the body, the feelers and the eyes over the output `window`."""
    rows, cols = window
    n = size * SUPERSAMPLE
    cx, cy, height, angle = pose[0] * n, pose[1] * n, pose[2] * n, pose[3]
    yy, xx = np.mgrid[
        rows.start * SUPERSAMPLE : rows.stop * SUPERSAMPLE, cols.start * SUPERSAMPLE : cols.stop * SUPERSAMPLE
    ]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)  # the creature's own axes
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    r_body = 0.3 * height
    theta = np.arctan2(v, u / creature.aspect)
    outline = r_body * (1 + creature.lobe_depth * np.cos(creature.lobes * theta)) if creature.lobes else r_body
    body = np.hypot(u / creature.aspect, v) < outline
    feelers = np.zeros_like(body)
    for k in range(creature.feelers):
        base = np.array([(k - (creature.feelers - 1) / 2) * 0.5 * r_body, -0.8 * r_body])
        swing = 0.6 * np.sin(2 * np.pi * phase + k * 1.3)
        tip = base + 0.9 * r_body * np.array([np.sin(swing), -np.cos(swing)])
        feelers |= _capsule(u, v, base, tip, 0.12 * r_body)
    eye = 0.06 * height
    eyes = (np.hypot(u - 0.12 * height, v + 0.05 * height) < eye) | (
        np.hypot(u + 0.12 * height, v + 0.05 * height) < eye
    )
    return body, feelers & ~body, eyes & body


def _capsule(u, v, a, b, radius) -> np.ndarray:
    ab = b - a
    s = np.clip(((u - a[0]) * ab[0] + (v - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9), 0, 1)
    return np.hypot(u - a[0] - s * ab[0], v - a[1] - s * ab[1]) < radius


def _downsample(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape[0] // SUPERSAMPLE, mask.shape[1] // SUPERSAMPLE
    return mask.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))


def render_clip(creature: Creature, path: Path, backdrop, size: int, frames: int, still: bool = False):
    """(frames [F, S, S, 3] uint8, ids [F, S, S] uint8) of `creature` on a plain `backdrop` along `path`
    (`still`: standing in the middle of the frame, upright, feelers at rest)."""
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = np.asarray(backdrop, np.uint8)
    ids = np.zeros((frames, size, size), np.uint8)
    for f in range(frames):
        pose = _pose(path, f / max(frames - 1, 1))
        pose = (0.5, 0.55, _pose(path, 0.5)[2], 0.0) if still else pose
        window = _window(pose, size)
        body, feelers, eyes = (
            _downsample(m) for m in _shapes(creature, pose, 0 if still else path.wave_hz * f, size, window)
        )
        rgb = np.asarray(backdrop, np.float64) * (1 - body - feelers)[..., None]
        rgb += np.asarray(creature.body, np.float64) * (body - eyes)[..., None] + 255.0 * eyes[..., None]
        rgb += np.asarray(creature.limb, np.float64) * feelers[..., None]
        video[f][window] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        ids[f][window] = (body + feelers) >= 0.5
    return video, ids


def outside_pair(index: int, size: int = 128, frames: int = 17, seed: int = OUTSIDE_SEED) -> PairSample:
    """Animation pair `index`: creature A (reference) does creature B's motion along a curved path."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    actor, driver, path = sample_creature(rng), sample_creature(rng), sample_path(rng)
    backdrop_a, backdrop_b = _colour(rng, 0.5, 1.0), _colour(rng, 0.5, 1.0)
    reference, reference_ids = render_clip(actor, path, backdrop_a, size, 1, still=True)
    driving, driving_ids = render_clip(driver, path, backdrop_b, size, frames)
    target, target_ids = render_clip(actor, path, backdrop_a, size, frames)
    zeros = np.zeros_like(target_ids)
    metadata = {
        "index": index,
        "seed": seed,
        "task": "animate",
        "mode": "animate",
        "height": size,
        "width": size,
        "frames": frames,
        "fps": 16.0,
        "plate_colour": list(backdrop_a),
        "characters": [{"identity": 1}],
        "body_plans": {"driving": ["outside"], "reference": ["outside"]},
        "generator": {"generator": "outside", "seed": seed},
    }
    return PairSample(
        f"outside-{index:05d}",
        "animate",
        "animate",
        reference[0],
        reference_ids[0],
        zeros[0],
        driving,
        driving_ids,
        zeros,
        target,
        target_ids,
        zeros,
        metadata,
    )


def outside_plate(metadata: dict) -> np.ndarray:
    """[F, H, W, 3] the backdrop colour of an outside clip: its empty scene."""
    shape = (metadata["frames"], metadata["height"], metadata["width"], 3)
    return np.broadcast_to(np.asarray(metadata["plate_colour"], np.uint8), shape).copy()
