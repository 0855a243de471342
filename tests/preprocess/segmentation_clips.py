"""Fixed-camera clips from the procedural world with exact identity maps, for the segmentation tests."""

from __future__ import annotations

import dataclasses

import numpy as np

from scail2.data.world import (
    Actor,
    Camera,
    Placement,
    Rendered,
    render_video,
    sample_character,
    sample_motion,
    sample_scene,
)

FPS = 16.0


def fixed_camera_clip(
    seed: int, kind: str = "walk", height: int = 128, width: int = 192, frames: int = 33, zoom: float = 1.3
) -> Rendered:
    """One humanoid doing `kind` in a random scene, filmed by a camera that does not move."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    actor = Actor(
        sample_character(rng, "humanoid"), sample_motion(rng, frames / FPS, kind, fps=FPS), Placement(0.0, 0.0), 1
    )
    return render_video(scene, Camera(0.0, zoom, 0.0, 0.0, "static"), [actor], height, width, frames, FPS)


def crossing_clip(seed: int, height: int = 128, width: int = 192, frames: int = 33, zoom: float = 1.3) -> Rendered:
    """Two humanoids running towards each other, the right one in a back lane: they cross, one hides the
    other, then they separate. Identity 1 starts on the left."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    actors = []
    for identity, (x, lane, direction) in enumerate([(-0.35, 0.0, 1.0), (0.35, 0.6, -1.0)], start=1):
        character = sample_character(rng, "humanoid")
        motion = dataclasses.replace(sample_motion(rng, frames / FPS, "run", fps=FPS), direction=direction)
        actors.append(Actor(character, motion, Placement(x, lane), identity))
    return render_video(scene, Camera(0.0, zoom, 0.0, 0.0, "static"), actors, height, width, frames, FPS)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    return float((predicted & truth).sum() / max(1, (predicted | truth).sum()))
