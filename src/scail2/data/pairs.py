"""Paired training samples: the same motion performed by different identities (MotionPair).

See docs/architecture.md, "Training".

A `PairSample` holds a reference image and mask, a driving video and masks, a target video and masks, the
task and JSON metadata. Masks are kept as identity maps (0 background, k = identity k); `*_mask()` turns
them into the upstream palette with the background colour of the mode (docs/architecture.md, "Modes"):
animation puts a WHITE background on the reference mask and BLACK on the driving mask, replacement the other
way round. Target masks always have a black background. Per-frame detail maps tag limb ends (1) and face/head (2).

Generators make samples from an index, deterministically:
- `ProceduralPairGenerator` builds them in the procedural world, exact by construction;
- `ModelPairGenerator` wraps any animation callable to re-synthesise driving videos from real clips, the
  real clip being the target ("reverse driving", as MotionPair-60K was built).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from scail2.data.world import (
    PLAN_NAMES,
    Actor,
    Camera,
    Character,
    Motion,
    Placement,
    Rendered,
    Scene,
    WorldOptions,
    closeup_camera,
    evaluate_motion,
    render_video,
    sample_camera,
    sample_character,
    sample_motion,
    sample_scene,
    travelling,
    world_scene,
)
from scail2.errors import Scail2Error
from scail2.modes import Mode, parse_mode
from scail2.preprocess.palette import BLACK, IDENTITY_COLORS, MAX_IDENTITIES, WHITE

TASKS = ("animate", "replace", "multi")
TASK_MODES: dict[str, Mode] = {"animate": "animate", "replace": "replace", "multi": "animate"}
# Relative task frequencies: MotionPair-60K is about 3:1 animation to replacement.
TASK_WEIGHTS = {"animate": 3.0, "replace": 1.0, "multi": 1.0}
MASK_BACKGROUNDS = {
    "animate": {"reference": WHITE, "driving": BLACK, "target": BLACK},
    "replace": {"reference": BLACK, "driving": WHITE, "target": BLACK},
}


def palette_mask(ids: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Identity map [...] -> palette colours [..., 3] uint8 (identity k in IDENTITY_COLORS[k - 1])."""
    lut = np.array([background, *IDENTITY_COLORS], dtype=np.uint8)
    return lut[ids]


@dataclass
class PairSample:
    key: str
    task: str  # one of TASKS
    mode: Mode
    reference: np.ndarray  # [H, W, 3] uint8
    reference_ids: np.ndarray  # [H, W] uint8 identity map
    reference_detail: np.ndarray  # [H, W] uint8 detail tags
    driving: np.ndarray  # [F, H, W, 3] uint8
    driving_ids: np.ndarray  # [F, H, W]
    driving_detail: np.ndarray  # [F, H, W]
    target: np.ndarray  # [F, H, W, 3]
    target_ids: np.ndarray  # [F, H, W]
    target_detail: np.ndarray  # [F, H, W]
    metadata: dict = field(default_factory=dict)

    def reference_mask(self) -> np.ndarray:
        return palette_mask(self.reference_ids, MASK_BACKGROUNDS[self.mode]["reference"])

    def driving_mask(self) -> np.ndarray:
        return palette_mask(self.driving_ids, MASK_BACKGROUNDS[self.mode]["driving"])

    def target_mask(self) -> np.ndarray:
        return palette_mask(self.target_ids, MASK_BACKGROUNDS[self.mode]["target"])

    def check(self) -> None:
        """Raise Scail2Error naming the sample when shapes or dtypes are inconsistent."""
        frames, height, width = self.driving.shape[:3]
        expected = {
            "reference": (height, width, 3),
            "reference_ids": (height, width),
            "reference_detail": (height, width),
            "driving": (frames, height, width, 3),
            "driving_ids": (frames, height, width),
            "driving_detail": (frames, height, width),
            "target": (frames, height, width, 3),
            "target_ids": (frames, height, width),
            "target_detail": (frames, height, width),
        }
        for name, shape in expected.items():
            array = getattr(self, name)
            if array.shape != shape or array.dtype != np.uint8:
                raise Scail2Error(
                    f"sample {self.key}: {name} is {array.dtype}{list(array.shape)}, expected uint8{list(shape)}"
                )
        if self.task not in TASKS or self.mode not in MASK_BACKGROUNDS:
            raise Scail2Error(f"sample {self.key}: unknown task {self.task!r} or mode {self.mode!r}")
        for name in ("reference_ids", "driving_ids", "target_ids"):
            if int(getattr(self, name).max(initial=0)) > MAX_IDENTITIES:
                raise Scail2Error(f"sample {self.key}: {name} holds an identity above {MAX_IDENTITIES}")


class PairGenerator(Protocol):
    """Anything that makes the sample for an index, deterministically."""

    def generate(self, index: int) -> PairSample: ...

    def describe(self) -> dict: ...


# ---------------------------------------------------------------------------------------------------
# The procedural generator
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    height: int = 128
    width: int = 128
    frames: int = 17  # 4n + 1 suits the Wan VAE; any count renders
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    fps: float = 16.0
    cross_plan: float = 0.5  # probability that a reference character has another body plan than its driver
    same_identity: float = 0.1  # probability of a same-identity pair (reference = driving character and scene)
    max_characters: int = 3  # multi-character pairs have 2..max_characters characters
    world: WorldOptions = WorldOptions()  # framing, scenes and travel (scail2.data.world.framing)

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise Scail2Error(f"size {self.height}x{self.width} is too small; use at least 8x8 pixels")
        if self.frames < 1:
            raise Scail2Error(f"frames must be at least 1, got {self.frames}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise Scail2Error(f"unknown tasks {unknown or list(self.tasks)}; choose from {','.join(TASKS)}")
        if not 2 <= self.max_characters <= MAX_IDENTITIES:
            raise Scail2Error(f"max_characters must be in 2..{MAX_IDENTITIES}, got {self.max_characters}")

    def to_json(self) -> dict:
        return {
            "height": self.height,
            "width": self.width,
            "frames": self.frames,
            "tasks": list(self.tasks),
            "seed": self.seed,
            "fps": self.fps,
            "cross_plan": self.cross_plan,
            "same_identity": self.same_identity,
            "max_characters": self.max_characters,
        } | ({} if self.world.is_default else {"world": self.world.to_json()})


@dataclass(frozen=True)
class _Cast:
    """Who is in a pair: drivers, reference characters, motions and where they stand."""

    drivers: list
    references: list
    motions: list
    placements: list
    same_identity: bool


class ProceduralPairGenerator:
    """Pairs from the procedural world; sample `index` depends only on (config.seed, index)."""

    VERSION = (
        2  # bump when a change alters the generated pixels (2: the reference is taken from the target's first view)
    )

    def __init__(self, config: SynthConfig):
        self.config = config
        weights = np.array([TASK_WEIGHTS[t] for t in config.tasks])
        self._task_p = weights / weights.sum()

    def describe(self) -> dict:
        return {"generator": "procedural", "version": self.VERSION, "config": self.config.to_json()}

    def generate(self, index: int) -> PairSample:
        cfg = self.config
        rngs = dict(
            zip(
                ("task", "cast", "motion", "camera", "scene_a", "scene_b", "reference"),
                (np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, index]).spawn(7)),
            )
        )
        task = str(rngs["task"].choice(cfg.tasks, p=self._task_p))
        cast = self._cast(rngs, task)
        camera, zoom = sample_camera(rngs["camera"]), 1.0
        if cfg.world.framing == "closeup":
            heights = [c.height for c in cast.drivers + cast.references]
            aspect = cfg.width / cfg.height
            camera, placements, zoom = closeup_camera(
                rngs["camera"], cfg.world, heights, cast.motions, cast.placements, cfg.frames, cfg.fps, aspect
            )
            cast = dataclasses.replace(cast, placements=placements)
        scene_a = world_scene(rngs["scene_a"], cfg.world)
        scene_b = scene_a if cast.same_identity else world_scene(rngs["scene_b"], cfg.world)
        size = (cfg.height, cfg.width, cfg.frames, cfg.fps)
        driving = render_video(scene_a, camera, self._actors(cast.drivers, cast), *size)
        identities = _left_to_right(driving.ids[0], cast)
        driving = _renumber(driving, identities)
        if cast.same_identity:
            target = driving
        else:
            target_scene = scene_b if TASK_MODES[task] == "animate" else scene_a
            target = render_video(target_scene, camera, self._actors(cast.references, cast, identities), *size)
        ref_actors = self._reference_actors(rngs["reference"], cast, identities, camera.x, zoom)
        # The reference is shot from where the camera starts: in animation the output begins in the reference's
        # view and then moves as the driving camera does. (Version 1 shot it at zoom 1 while the target started at
        # zoom 0.95-1.1, a framing no input reveals: 20-25 dB between the two backgrounds, which a model can only blur.)
        start_view = Camera(camera.x, camera.zoom, 0.0, 0.0)
        reference = render_video(scene_b, start_view, ref_actors, cfg.height, cfg.width, 1, cfg.fps)
        metadata = self._metadata(index, task, cast, identities, camera, scene_a, scene_b, ref_actors)
        return PairSample(
            f"{index:09d}",
            task,
            TASK_MODES[task],
            reference.frames[0],
            reference.ids[0],
            reference.detail[0],
            driving.frames,
            driving.ids,
            driving.detail,
            target.frames,
            target.ids,
            target.detail,
            metadata,
        )

    def _cast(self, rngs: dict, task: str) -> _Cast:
        cfg, rng = self.config, rngs["cast"]
        count = int(rng.integers(2, cfg.max_characters + 1)) if task == "multi" else 1
        same = bool(rng.uniform() < cfg.same_identity)
        drivers, references = [], []
        for _ in range(count):
            driver = sample_character(rng)
            cross = not same and rng.uniform() < cfg.cross_plan
            plan = str(rng.choice([p for p in PLAN_NAMES if p != driver.plan])) if cross else driver.plan
            drivers.append(driver)
            references.append(driver if same else sample_character(rng, plan))
        duration = cfg.frames / cfg.fps
        motions = [sample_motion(rngs["motion"], duration, fps=cfg.fps) for _ in range(count)]
        placements = self._placements(rng, motions)
        if cfg.world.travel:  # some characters walk across the frame instead, also in depth
            moved = [travelling(rngs["motion"], m, p, duration, cfg.world) for m, p in zip(motions, placements)]
            motions, placements = [m for m, _ in moved], [p for _, p in moved]
        return _Cast(drivers, references, motions, placements, same)

    def _placements(self, rng: np.random.Generator, motions: list) -> list:
        """Spread characters over the view, left to right, each centred on its own travel."""
        count = len(motions)
        half_view = 0.5 * self.config.width / self.config.height
        slots = np.linspace(-0.55, 0.55, count) * half_view if count > 1 else np.zeros(1)
        lanes = rng.permutation(np.linspace(0.0, 0.8, count)) if count > 1 else rng.uniform(0.0, 0.4, size=1)
        placements = []
        for slot, lane, motion in zip(slots, lanes, motions):
            travel = evaluate_motion(motion, self.config.frames).root_x[-1] * (1.0 - 0.3 * lane)
            jitter = rng.uniform(-0.08, 0.08) * half_view
            placements.append(Placement(float(slot + jitter - 0.5 * travel), float(lane)))
        return placements

    def _actors(self, characters: list, cast: _Cast, identities: list[int] | None = None) -> list:
        identities = identities or list(range(1, len(characters) + 1))
        return [Actor(c, m, p, i) for c, m, p, i in zip(characters, cast.motions, cast.placements, identities)]

    def _reference_actors(
        self, rng: np.random.Generator, cast: _Cast, identities: list[int], centre: float = 0.0, zoom: float = 1.0
    ) -> list:
        """The reference characters standing idle in their own scene, in identity order left to right, spread
        over the view of a camera at `centre` with `zoom` (the defaults: the wide camera)."""
        count = len(cast.references)
        half_view = 0.5 * self.config.width / self.config.height
        slots = np.linspace(-0.55, 0.55, count) * half_view if count > 1 else np.zeros(1)
        by_identity = sorted(range(count), key=lambda k: identities[k])
        actors = []
        for slot, k in zip(slots, by_identity):
            pose = sample_motion(rng, 1.0 / self.config.fps, "idle", fps=self.config.fps)
            x = float(slot + rng.uniform(-0.1, 0.1) * half_view)
            x = x if zoom == 1.0 else centre + x / zoom
            lane = float(rng.uniform(0.0, 0.5))
            actors.append(Actor(cast.references[k], pose, Placement(x, lane), identities[k]))
        return actors

    def _metadata(self, index, task, cast, identities, camera, scene_a, scene_b, ref_actors) -> dict:
        characters = []
        for k in range(len(cast.drivers)):
            ref_actor = next(a for a in ref_actors if a.identity == identities[k])
            characters.append(
                {
                    "identity": identities[k],
                    "colour": list(IDENTITY_COLORS[identities[k] - 1]),
                    "driving": cast.drivers[k].to_json(),
                    "reference": cast.references[k].to_json(),
                    "motion": cast.motions[k].to_json(),
                    "placement": cast.placements[k].to_json(),
                    "reference_pose": {
                        "motion": ref_actor.motion.to_json(),
                        "placement": ref_actor.placement.to_json(),
                    },
                }
            )
        characters.sort(key=lambda c: c["identity"])
        cfg = self.config
        return {
            "index": index,
            "seed": cfg.seed,
            "task": task,
            "mode": TASK_MODES[task],
            "height": cfg.height,
            "width": cfg.width,
            "frames": cfg.frames,
            "fps": cfg.fps,
            "same_identity": cast.same_identity,
            "cross_body_plan": any(d.plan != r.plan for d, r in zip(cast.drivers, cast.references)),
            "body_plans": {
                "driving": [c["driving"]["plan"] for c in characters],
                "reference": [c["reference"]["plan"] for c in characters],
            },
            "motions": [c["motion"]["kind"] for c in characters],
            "characters": characters,
            "camera": camera.to_json(),
            "driving_scene": scene_a.to_json(),
            "reference_scene": scene_b.to_json(),
            "generator": self.describe(),
        }


def _world_of(metadata: dict, scene_key: str, with_actors: bool = True, role: str = "driving") -> tuple:
    try:
        scene, camera = Scene.from_json(metadata[scene_key]), Camera.from_json(metadata["camera"])
        size = (metadata["height"], metadata["width"], metadata["frames"], metadata["fps"])
        actors = (
            [
                Actor(
                    Character.from_json(c[role]),
                    Motion.from_json(c["motion"]),
                    Placement.from_json(c["placement"]),
                    int(c["identity"]),
                )
                for c in metadata["characters"]
            ]
            if with_actors
            else []
        )
    except (KeyError, TypeError) as error:
        raise Scail2Error(
            f"sample {metadata.get('index')}: metadata lacks {error}; only procedural pairs "
            "(scail2 synth) can be re-rendered"
        ) from None
    if with_actors and not actors:
        raise Scail2Error(
            f"sample {metadata.get('index')}: metadata lists no characters; only procedural pairs "
            "(scail2 synth) can be re-rendered"
        )
    return scene, camera, actors, size


def driving_skeleton(metadata: dict) -> Rendered:
    """The driving video of a procedural pair re-rendered with its characters as stick figures from the rig
    (perfect pose extraction): what a skeleton-driven system is conditioned on."""
    scene, camera, actors, size = _world_of(metadata, "driving_scene")
    return render_video(scene, camera, actors, *size, skeleton=True)


def target_skeleton(metadata: dict) -> Rendered:
    """The target video of a procedural animation pair re-rendered with its characters (the reference's, doing
    the driving motion in the reference's scene) as stick figures: the same-identity twin of `driving_skeleton`."""
    scene, camera, actors, size = _world_of(metadata, _target_scene_key(metadata), role="reference")
    return render_video(scene, camera, actors, *size, skeleton=True)


def driving_plate(metadata: dict) -> np.ndarray:
    """[F, H, W, 3] the driving video's scene with no character in it."""
    scene, camera, _, size = _world_of(metadata, "driving_scene", with_actors=False)
    return render_video(scene, camera, [], *size).frames


DRIVING_SOURCES = ("frames", "skeleton")  # skeleton: the stick-figure baseline of the demo benchmark


def driving_condition(sample: PairSample, source: str = "frames") -> tuple[np.ndarray, np.ndarray]:
    """The driving video [F, H, W, 3] and its palette masks a model is conditioned on: the frames themselves
    (SCAIL-2), or the stick-figure re-render and the masks of its drawn bones (the skeleton-driven baseline).
    Training caches and the benchmark both call this, so the two always agree."""
    if source == "frames":
        return sample.driving, sample.driving_mask()
    if source == "skeleton":
        skeleton = driving_skeleton(sample.metadata)
        return skeleton.frames, palette_mask(skeleton.ids, MASK_BACKGROUNDS[sample.mode]["driving"])
    raise Scail2Error(f"unknown driving source {source!r}; choose from {', '.join(DRIVING_SOURCES)}")


def _target_scene_key(metadata: dict) -> str:
    """The scene the target is rendered in: the reference's in animation, the driver's in replacement."""
    try:
        mode = parse_mode(str(metadata.get("mode")))
    except Scail2Error:
        raise Scail2Error(
            f"sample {metadata.get('index')}: metadata has no valid mode; only procedural pairs "
            "(scail2 synth) can be re-rendered"
        ) from None
    return "reference_scene" if mode == "animate" else "driving_scene"


def target_plate(metadata: dict) -> np.ndarray:
    """[F, H, W, 3] the target video's scene with no character in it (the background a model should keep)."""
    scene, camera, _, size = _world_of(metadata, _target_scene_key(metadata), with_actors=False)
    return render_video(scene, camera, [], *size).frames


def _left_to_right(first_ids: np.ndarray, cast: _Cast) -> list[int]:
    """Palette identity of each actor: ordered by the bounding-box centre x of its first-frame mask
    (SCAIL-Pose's rule; docs/architecture.md, "Colour palette"); an actor hidden in frame 0 is ordered by its
    start position."""
    centres = []
    for k, placement in enumerate(cast.placements):
        cols = np.flatnonzero((first_ids == k + 1).any(axis=0))
        centre = 0.5 * (cols[0] + cols[-1]) if len(cols) else np.inf
        centres.append((centre, placement.x, k))
    order = sorted(centres)
    identities = [0] * len(centres)
    for rank, (_, _, k) in enumerate(order):
        identities[k] = rank + 1
    return identities


def _renumber(video, identities: list[int]):
    """The video with provisional identity k + 1 replaced by identities[k]."""
    lut = np.arange(256, dtype=np.uint8)
    lut[1 : len(identities) + 1] = identities
    return Rendered(video.frames, lut[video.ids], video.detail)


# ---------------------------------------------------------------------------------------------------
# The model-based generator (reverse driving from real clips)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealClip:
    """A real video with its identity masks: it becomes the target of a pair."""

    key: str
    frames: np.ndarray  # [F, H, W, 3] uint8
    ids: np.ndarray  # [F, H, W] uint8 identity map
    reference: np.ndarray  # [H, W, 3] the clip's identity, e.g. a frame from elsewhere in the source video
    reference_ids: np.ndarray  # [H, W]
    detail: np.ndarray | None = None  # [F, H, W] detail tags when known


@dataclass(frozen=True)
class AnimationRequest:
    """What an animation model is asked: animate `reference` with the motion of `driving`."""

    mode: Mode
    reference: np.ndarray  # [H, W, 3] the new identity
    reference_mask: np.ndarray  # [H, W, 3] palette mask with the mode's background
    driving: np.ndarray  # [F, H, W, 3] the real clip
    driving_mask: np.ndarray  # [F, H, W, 3]
    seed: int


@dataclass(frozen=True)
class AnimationResult:
    frames: np.ndarray  # [F, H, W, 3] uint8 the re-synthesised video
    ids: np.ndarray  # [F, H, W] uint8 identity map of the synthetic characters (same identities as the clip)


AnimateFn = Callable[[AnimationRequest], AnimationResult]
IdentitySource = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


def procedural_identity(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A new identity for the model-based generator: one procedural character, idle in its own scene."""
    actor = Actor(sample_character(rng), sample_motion(rng, 0.1, "idle"), Placement(0.0, 0.0), 1)
    image = render_video(sample_scene(rng), Camera(0.0, 1.0, 0.0, 0.0), [actor], height, width, 1)
    return image.frames[0], image.ids[0]


class ModelPairGenerator:
    """Re-synthesise a driving video from each real clip with `animate`; the real clip is the target.

    A new identity (from `identity_source`) is animated with the clip's motion (animation mode) or put into
    the clip's scene (replacement mode, with probability `replace_fraction`). The pair then teaches the model
    to turn that synthetic video back into the real one, so synthetic artefacts never enter supervision.
    """

    def __init__(
        self,
        clips: Sequence[RealClip],
        animate: AnimateFn,
        seed: int = 0,
        identity_source: IdentitySource = procedural_identity,
        replace_fraction: float = 0.25,
        name: str = "model",
    ):
        self.clips, self.animate, self.seed = clips, animate, seed
        self.identity_source, self.replace_fraction, self.name = identity_source, replace_fraction, name

    def describe(self) -> dict:
        return {
            "generator": "model",
            "name": self.name,
            "seed": self.seed,
            "clips": len(self.clips),
            "replace_fraction": self.replace_fraction,
        }

    def generate(self, index: int) -> PairSample:
        if not 0 <= index < len(self.clips):
            raise Scail2Error(f"clip index {index} is out of range: the generator holds {len(self.clips)} clips")
        clip = self.clips[index]
        rng = np.random.default_rng([self.seed, index])
        mode = "replace" if rng.uniform() < self.replace_fraction else "animate"
        frames, height, width = clip.frames.shape[:3]
        new_identity, new_ids = self.identity_source(rng, height, width)
        backgrounds = MASK_BACKGROUNDS[mode]
        request = AnimationRequest(
            mode,
            new_identity,
            palette_mask(new_ids, backgrounds["reference"]),
            clip.frames,
            palette_mask(clip.ids, backgrounds["driving"]),
            int(rng.integers(2**31)),
        )
        result = self.animate(request)
        if result.frames.shape != clip.frames.shape or result.ids.shape != clip.ids.shape:
            raise Scail2Error(
                f"clip {clip.key}: the animation callable returned frames {list(result.frames.shape)} "
                f"and ids {list(result.ids.shape)}; expected {list(clip.frames.shape)} and "
                f"{list(clip.ids.shape)}"
            )
        detail = clip.detail if clip.detail is not None else np.zeros(clip.ids.shape, np.uint8)
        task = mode
        if int(clip.ids.max(initial=0)) > 1:
            task = "multi"
        metadata = {
            "index": index,
            "task": task,
            "mode": mode,
            "clip": clip.key,
            "request_seed": request.seed,
            "height": height,
            "width": width,
            "frames": frames,
            "detail_known": clip.detail is not None,
            "generator": self.describe(),
        }
        sample = PairSample(
            f"{index:09d}",
            task,
            mode,
            clip.reference,
            clip.reference_ids,
            np.zeros(clip.reference_ids.shape, np.uint8),
            result.frames.astype(np.uint8),
            result.ids.astype(np.uint8),
            np.zeros(clip.ids.shape, np.uint8),
            clip.frames,
            clip.ids,
            detail,
            metadata,
        )
        sample.check()
        return sample


# ---------------------------------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------------------------------


def contact_sheet(samples: Sequence[PairSample], columns: int = 4, gap: int = 4) -> np.ndarray:
    """One block per pair: a label line, then reference | driving | target frames, masks underneath."""
    from PIL import Image, ImageDraw

    blocks = []
    for sample in samples:
        frames = sample.driving.shape[0]
        picks = sorted(set(np.linspace(0, frames - 1, min(columns, frames)).round().astype(int).tolist()))
        top = [sample.reference] + [sample.driving[k] for k in picks] + [sample.target[k] for k in picks]
        bottom = [sample.reference_mask()] + [sample.driving_mask()[k] for k in picks]
        bottom += [sample.target_mask()[k] for k in picks]
        rows = [_strip(top, gap, len(picks)), _strip(bottom, gap, len(picks))]
        body = np.concatenate([rows[0], np.full((gap, rows[0].shape[1], 3), 40, np.uint8), rows[1]], axis=0)
        label = Image.new("RGB", (body.shape[1], 14), (30, 30, 30))
        meta = sample.metadata
        plans = meta.get("body_plans", {})
        text = (
            f"{sample.key} {sample.task}  driving {'+'.join(plans.get('driving', []))} -> reference "
            f"{'+'.join(plans.get('reference', []))}  motion {'+'.join(meta.get('motions', []))}"
        )
        ImageDraw.Draw(label).text((3, 1), text, fill=(235, 235, 235))
        blocks.append(np.concatenate([np.asarray(label), body, np.full((gap * 2, body.shape[1], 3), 15, np.uint8)]))
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=15) for b in blocks]
    return np.concatenate(blocks, axis=0)


def _strip(images: list[np.ndarray], gap: int, per_video: int) -> np.ndarray:
    """reference | driving frames | target frames, with wider gaps between the three groups."""
    height = images[0].shape[0]
    pieces = []
    for i, image in enumerate(images):
        if i:
            wide = i == 1 or i == 1 + per_video
            pieces.append(np.full((height, gap * (3 if wide else 1), 3), 15 if wide else 40, np.uint8))
        pieces.append(image)
    return np.concatenate(pieces, axis=1)
