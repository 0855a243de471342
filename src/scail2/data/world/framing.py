"""World options beyond the default procedural world: close-up framing, plainer or busier scenes, characters
that travel across the frame and in depth, and characters that enter or leave.

`WorldOptions()` is the world the bundled model was trained on: every helper here returns exactly what the
default code path would (and draws nothing from the generators) when its option is off, so pairs made with
the defaults keep their pixels. `WORLD_PRESETS["closeup"]` is the world a model that must read its driver is
trained on: the camera frames and follows the characters so they stand 80-100 px tall in a 128 px frame
(about 1.8x the default), with fewer props and plainer ground.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from scail2.data.world.motion import Motion, evaluate_motion, sample_motion
from scail2.data.world.render import LANE_SHRINK, Placement
from scail2.data.world.scene import GROUND_TEXTURES, Camera, Scene, plain_scene, sample_scene
from scail2.errors import Scail2Error

FRAMINGS = ("wide", "closeup")


@dataclass(frozen=True)
class WorldOptions:
    framing: str = "wide"  # "wide": the default cameras; "closeup": frames and follows the characters
    closeup_height: tuple[float, float] = (0.625, 0.78)  # character height, fraction of the frame (80-100 px of 128)
    follow: tuple[float, float] = (0.5, 1.0)  # share of the characters' travel the close-up camera follows
    props: tuple[int, int] = (2, 8)  # props per scene (inclusive range)
    ground_textures: tuple[str, ...] = GROUND_TEXTURES
    plain_background: float = 0.0  # probability that a scene (driving, reference: each on its own) is plain
    travel: float = 0.0  # probability that a character walks or runs across the frame, also in depth
    travel_speed: tuple[float, float] = (1.5, 2.5)  # its walk/run speed multiplier
    enter_leave: float = 0.0  # probability that a travelling single character enters or leaves the view

    def __post_init__(self) -> None:
        if self.framing not in FRAMINGS:
            raise Scail2Error(f"world framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        if not 0 <= self.props[0] <= self.props[1]:
            raise Scail2Error(f"world props must be a range low <= high of counts >= 0, got {self.props}")
        unknown = [t for t in self.ground_textures if t not in GROUND_TEXTURES]
        if unknown or not self.ground_textures:
            raise Scail2Error(f"unknown ground textures {unknown}; choose from {', '.join(GROUND_TEXTURES)}")
        for name in ("plain_background", "travel", "enter_leave"):
            if not 0 <= getattr(self, name) <= 1:
                raise Scail2Error(f"world {name} is a probability in [0, 1], got {getattr(self, name)}")

    @property
    def is_default(self) -> bool:
        return self == WorldOptions()

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @staticmethod
    def from_json(data: dict) -> WorldOptions:
        return WorldOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


WORLD_PRESETS = {
    "wide": WorldOptions(),
    "closeup": WorldOptions(
        framing="closeup",
        props=(0, 3),
        ground_textures=("plain", "plain", "noise"),
        plain_background=0.35,
        travel=0.5,
        enter_leave=0.2,
    ),
}


def world_scene(rng: np.random.Generator, options: WorldOptions) -> Scene:
    """A scene under `options`: plain with probability `plain_background`, else busy as `props` allows."""
    if options.is_default:
        return sample_scene(rng)
    if options.plain_background and rng.uniform() < options.plain_background:
        return plain_scene(rng)
    return sample_scene(rng, options.props, options.ground_textures)


def travelling(
    rng: np.random.Generator, motion: Motion, placement: Placement, duration: float, options: WorldOptions
) -> tuple[Motion, Placement]:
    """With probability `travel`, the character walks or runs across the frame instead (faster than the
    default walk) while its lane drifts and waves, so it grows or shrinks along a curved path on screen."""
    if not options.travel or rng.uniform() >= options.travel:
        return motion, placement
    kind = str(rng.choice(["walk", "run"]))
    motion = sample_motion(rng, duration, kind, fps=motion.fps)
    boost = float(rng.uniform(*options.travel_speed))
    keyframes = tuple(
        dataclasses.replace(k, params=k.params | {"speed": k.params["speed"] * boost}) for k in motion.keyframes
    )
    motion = dataclasses.replace(motion, keyframes=keyframes)
    placement = dataclasses.replace(
        placement,
        lane=float(rng.uniform(0.0, 0.6)),
        lane_rate=float(rng.uniform(-0.5, 0.5)),
        lane_wave=float(rng.uniform(0.0, 0.25)),
        lane_phase=float(rng.uniform(0.0, 2 * np.pi)),
    )
    return motion, placement


def _root_x(motion: Motion, placement: Placement, frames: int) -> np.ndarray:
    """[F] world x of a character's ground point, as `pose_actor` places it."""
    state = evaluate_motion(motion, frames)
    return placement.x + (1.0 - LANE_SHRINK * placement.lanes(state.times)) * state.root_x


def closeup_camera(
    rng: np.random.Generator,
    options: WorldOptions,
    heights: list[float],
    motions: list[Motion],
    placements: list[Placement],
    frames: int,
    fps: float,
    aspect: float,
) -> tuple[Camera, list[Placement], float]:
    """A camera that frames the characters close up and follows them: (camera, placements, zoom).

    The zoom makes the characters' mean height `closeup_height` of the frame; their start positions, spread
    over a zoom-1 view by the pair generator, are pulled in by the zoom (each still centred on its own
    travel); the view follows `follow` of the characters' mean travel and is centred on it over the clip. With
    probability `enter_leave` a single travelling character enters (or leaves) a still view instead."""
    zoom = float(rng.uniform(*options.closeup_height)) / float(np.mean(heights))
    squeezed = []
    for motion, placement in zip(motions, placements):
        travel = _root_x(motion, dataclasses.replace(placement, x=0.0), frames)[-1]
        squeezed.append(dataclasses.replace(placement, x=(placement.x + 0.5 * travel) / zoom - 0.5 * travel))
    follow = float(rng.uniform(*options.follow))
    entering = len(motions) == 1 and rng.uniform() < options.enter_leave
    paths = np.stack([_root_x(m, p, frames) for m, p in zip(motions, squeezed)])  # [K, F]
    if entering and abs(paths[0, -1] - paths[0, 0]) > 0.2 / zoom:  # it travels far enough to cross an edge
        placement = _enter_or_leave(rng, squeezed[0], paths[0], 0.5 * aspect / zoom + 0.08 / zoom)
        return Camera(0.0, zoom, 0.0, 0.0, "closeup", (), fps), [placement], zoom
    centre = paths.mean(axis=0)
    track = follow * (centre - centre[0])
    x = float(np.mean(centre - track))
    camera = Camera(x, zoom, 0.0, 0.0, "closeup", tuple(float(v) for v in track), fps)
    return camera, squeezed, zoom


def _enter_or_leave(rng: np.random.Generator, placement: Placement, path: np.ndarray, edge: float) -> Placement:
    """The character shifted so that, for a still view centred on x = 0, its path starts `edge` beyond the
    side it walks in from (it enters) or ends `edge` beyond the side it walks out of (it leaves)."""
    direction = float(np.sign(path[-1] - path[0]))
    if rng.uniform() < 0.5:
        shift = -direction * edge - path[0]
    else:
        shift = direction * edge - path[-1]
    return dataclasses.replace(placement, x=placement.x + float(shift))
