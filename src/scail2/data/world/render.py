"""Put characters in a scene and film them: posing, projection, depth order and the frame loop.

Characters are pseudo-3D: joints in the character's frame are turned by the facing (yaw) about the vertical
axis and projected orthographically, so a capsule stays a capsule on screen and the rotated depth decides
which part covers which (the far legs go behind the body, the eyes disappear when the head turns away).
Characters stand in depth lanes: a further lane stands higher on screen, is smaller, and is drawn first.
"""

from __future__ import annotations

import colorsys
import zlib
from dataclasses import dataclass

import numpy as np

from scail2.data.world.character import PATTERN_CODES, Character
from scail2.data.world.motion import Motion, MotionState, evaluate_motion
from scail2.data.world.plans import BODY_PLANS, Joints
from scail2.data.world.raster import PATTERN_FLAT, Canvas, PartBatch, draw_parts
from scail2.data.world.scene import Backdrop, Camera, Scene, lighting

LANE_RISE = 0.1  # a lane-1 character stands this much higher [world units]
LANE_SHRINK = 0.3  # and is this much smaller (fraction)
LANE_WAVE_HZ = 0.6  # the depth wave of a character travelling on a curve [cycles / s]
# Parts per rasteriser call: a few frames at a time keeps the sample arrays in cache (measured best ~250).
PARTS_PER_DRAW = 250
# Stick-figure bones: a radius of 2% of the body height (4% across), never under 3 pixels across (they must
# survive the VAE at half resolution, as pose renderers draw 4-pixel limbs at 512 px).
SKELETON_BONE_RADIUS = 0.02
SKELETON_MIN_PIXELS = 1.5


@dataclass(frozen=True)
class Placement:
    x: float  # start x of the root [world units]
    lane: float = 0.0  # 0 front .. 1 back
    # Depth travel (0: the character keeps its lane): lane(t) = lane + lane_rate * t + lane_wave * sin(2 pi
    # LANE_WAVE_HZ t + lane_phase), clipped to [0, 1], so it walks away or closer, on a curve on screen.
    lane_rate: float = 0.0  # [lanes / s]
    lane_wave: float = 0.0  # [lanes]
    lane_phase: float = 0.0  # [rad]

    @property
    def ground(self) -> float:
        return LANE_RISE * self.lane

    @property
    def scale(self) -> float:
        return 1.0 - LANE_SHRINK * self.lane

    @property
    def moves_in_depth(self) -> bool:
        return self.lane_rate != 0.0 or self.lane_wave != 0.0

    def lanes(self, times: np.ndarray) -> np.ndarray:
        """[F] lane at `times` (constant unless the character travels in depth)."""
        if not self.moves_in_depth:
            return np.full(np.shape(times), self.lane)
        wave = self.lane_wave * (np.sin(2 * np.pi * LANE_WAVE_HZ * times + self.lane_phase) - np.sin(self.lane_phase))
        return np.clip(self.lane + self.lane_rate * times + wave, 0.0, 1.0)

    def to_json(self) -> dict:
        depth = {"lane_rate": self.lane_rate, "lane_wave": self.lane_wave, "lane_phase": self.lane_phase}
        return {"x": self.x, "lane": self.lane} | (depth if self.moves_in_depth else {})

    @staticmethod
    def from_json(data: dict) -> Placement:
        depth = {k: data[k] for k in ("lane_rate", "lane_wave", "lane_phase") if k in data}
        return Placement(data["x"], data["lane"], **depth)


@dataclass(frozen=True)
class Actor:
    character: Character
    motion: Motion
    placement: Placement
    identity: int = 1  # value written into the identity map (1-based palette index)


@dataclass(frozen=True)
class PosedActor:
    actor: Actor
    state: MotionState
    joints: Joints  # character frame, world units before the lane scale
    root: np.ndarray  # [F, 2] world position of the ground point
    scale: np.ndarray  # [F] lane scale (constant unless the character travels in depth)

    @property
    def yaw(self) -> np.ndarray:
        return self.state.yaw


@dataclass(frozen=True)
class Rendered:
    frames: np.ndarray  # [F, H, W, 3] uint8
    ids: np.ndarray  # [F, H, W] uint8 identity map: 0 background, k = identity k
    detail: np.ndarray  # [F, H, W] uint8 region tag of the visible part (1 limb ends, 2 face/head)


def pose_actor(actor: Actor, num_frames: int) -> PosedActor:
    """Evaluate the actor's motion and pose its body plan over `num_frames` frames."""
    state = evaluate_motion(actor.motion, num_frames)
    joints = BODY_PLANS[actor.character.plan].pose(actor.character, state)
    lanes = actor.placement.lanes(state.times)
    scale, ground = 1.0 - LANE_SHRINK * lanes, LANE_RISE * lanes  # [F] each
    root = np.stack([actor.placement.x + scale * state.root_x, ground + scale * state.root_y], -1)
    return PosedActor(actor, state, joints, root, scale)


def actor_batches(posed: PosedActor, views: tuple, height: int, width: int, skeleton: bool = False) -> PartBatch:
    """The actor's parts in every frame, projected to pixels; within a frame ordered back to front.

    `skeleton`: every part becomes a thin bone between its two joints in a fixed colour per bone (the
    stick figure a pose-driven system is conditioned on), with the same depth order and visibility."""
    character, scale = posed.actor.character, posed.scale  # scale: [F]
    specs = BODY_PLANS[character.plan].parts(character)
    names = sorted({s.a for s in specs} | {s.b for s in specs} | {s.facing for s in specs if s.facing})
    index = {name: i for i, name in enumerate(names)}
    local = np.stack([posed.joints[name] for name in names], axis=1)  # [F, J, 3]
    cos, sin = np.cos(posed.yaw)[:, None], np.sin(posed.yaw)[:, None]
    facing_depth = local[..., 0] * sin + local[..., 2] * cos  # [F, J] towards the camera, before the lane scale
    centre_x, centre_y, zoom = views
    px_per_unit = (zoom * height)[:, None]
    lane = scale[:, None]
    px = (posed.root[:, :1] + (local[..., 0] * cos - local[..., 2] * sin) * lane - centre_x[:, None]) * px_per_unit
    px = px + width / 2.0
    py = height / 2.0 - (posed.root[:, 1:] + local[..., 1] * lane - centre_y[:, None]) * px_per_unit
    ia = np.array([index[s.a] for s in specs])
    ib = np.array([index[s.b] for s in specs])
    body_px = character.height * scale * zoom * height  # [F] pixels per body unit
    radius_scale = _radius_scales(specs, posed.joints, local, facing_depth, index)  # [F, P]
    bias = np.array([s.depth_bias for s in specs])[None, :] * character.height
    order = np.argsort((0.5 * (facing_depth[:, ia] + facing_depth[:, ib]) + bias), axis=1, kind="stable")
    keep = np.take_along_axis(radius_scale, order, axis=1) > 0.0
    frame = np.broadcast_to(np.arange(len(order))[:, None], order.shape)[keep]  # [N] per drawn part
    part = order[keep]
    ra = np.array([s.radius_a for s in specs])[part] * body_px[frame] * radius_scale[frame, part]
    rb = np.array([s.radius_b for s in specs])[part] * body_px[frame] * radius_scale[frame, part]
    ends = (px[frame, ia[part]], py[frame, ia[part]], px[frame, ib[part]], py[frame, ib[part]])
    if skeleton:
        bone = np.maximum(SKELETON_BONE_RADIUS * body_px[frame], SKELETON_MIN_PIXELS)
        return _PartStyle.bones(specs, posed.actor.identity).batch(part, frame, *ends, bone, bone, body_px[frame])
    return _PartStyle.of(character, specs, posed.actor.identity).batch(part, frame, *ends, ra, rb, body_px[frame])


def _radius_scales(specs, joints: Joints, local: np.ndarray, depth: np.ndarray, index: dict) -> np.ndarray:
    """[F, P] radius factors: per-frame squash from the pose, and eyes shrinking as they turn away."""
    frames = local.shape[0]
    scales = np.ones((frames, len(specs)))
    for p, spec in enumerate(specs):
        if spec.scale is not None:
            scales[:, p] *= joints[spec.scale]
        if spec.facing is not None:
            a, c = index[spec.a], index[spec.facing]
            reach = np.linalg.norm(local[:, a] - local[:, c], axis=-1)
            towards = (depth[:, a] - depth[:, c]) / np.maximum(reach, 1e-9)
            scales[:, p] *= np.clip(4.0 * towards, 0.0, 1.0)
    return scales


def bone_colour(spec) -> tuple[float, float, float]:
    """A saturated colour fixed by the bone's joint names, so a bone has the same base colour in every video
    (drawn pixels still carry the renderer's rim shading and the scene's lighting tint)."""
    hue = (zlib.crc32(f"{spec.a}>{spec.b}".encode()) % 360) / 360.0
    return tuple(255.0 * c for c in colorsys.hsv_to_rgb(hue, 0.9, 1.0))


@dataclass(frozen=True)
class _PartStyle:
    """Per-part colours and outline settings of one character, ready to slice per frame ([P] arrays)."""

    fill: np.ndarray  # [P, 3]
    pattern: np.ndarray  # [P, 3]
    line: np.ndarray  # [P, 3]
    outlined: np.ndarray  # [P] bool
    patterned: np.ndarray  # [P] bool
    tag: np.ndarray  # [P] uint8
    identity: np.ndarray  # [P] uint8
    outline: float  # outline width in body units
    kind: int  # pattern code
    period: float  # pattern period in body units

    @classmethod
    def of(cls, character: Character, specs, identity: int) -> _PartStyle:
        colours, count = character.colours, len(specs)
        return cls(
            fill=np.array([colours[s.colour] for s in specs], dtype=np.float32),
            pattern=np.array([colours["pattern"]] * count, dtype=np.float32),
            line=np.array([colours["outline"]] * count, dtype=np.float32),
            outlined=np.array([s.outlined for s in specs]),
            patterned=np.array([s.patterned for s in specs]),
            tag=np.array([s.tag for s in specs], dtype=np.uint8),
            identity=np.full(count, identity, dtype=np.uint8),
            outline=character.outline,
            kind=PATTERN_CODES[character.pattern],
            period=character.pattern_scale,
        )

    @classmethod
    def bones(cls, specs, identity: int) -> _PartStyle:
        """Stick-figure style: flat bone colours, no outline or pattern, no detail tags."""
        fill, flags = np.array([bone_colour(s) for s in specs], dtype=np.float32), np.zeros(len(specs), dtype=bool)
        return cls(
            fill=fill,
            pattern=fill,
            line=fill,
            outlined=flags,
            patterned=flags,
            tag=np.zeros(len(specs), dtype=np.uint8),
            identity=np.full(len(specs), identity, dtype=np.uint8),
            outline=0.0,
            kind=PATTERN_FLAT,
            period=1.0,
        )

    def batch(self, part, frame, ax, ay, bx, by, ra, rb, body_px: np.ndarray) -> PartBatch:
        width = np.minimum(self.outline * body_px, 0.4 * np.minimum(ra, rb))
        width = np.where(self.outlined[part] & (width >= 0.6), np.maximum(width, 1.0), 0.0)
        kind = np.where(self.patterned[part], self.kind, PATTERN_FLAT)
        period = np.maximum(self.period * body_px, 2.0)
        return PartBatch(
            ax,
            ay,
            bx,
            by,
            ra,
            rb,
            self.fill[part],
            self.pattern[part],
            self.line[part],
            width,
            kind,
            period,
            self.tag[part],
            self.identity[part],
            frame,
        )


def render_video(
    scene: Scene,
    camera: Camera,
    actors: list[Actor],
    height: int,
    width: int,
    num_frames: int,
    fps: float = 16.0,
    skeleton: bool = False,
) -> Rendered:
    """Film `actors` in `scene` through `camera`: colour frames plus exact identity and detail maps
    (`skeleton`: the actors as stick figures over the same scene, see `actor_batches`)."""
    times = np.arange(num_frames, dtype=np.float64) / fps
    views = camera.views(times)
    backdrop = Backdrop(scene, *views, height, width)
    canvas = Canvas(
        np.empty((num_frames, height, width, 3), dtype=np.float32),
        np.zeros((num_frames, height, width), dtype=np.uint8),
        np.zeros((num_frames, height, width), dtype=np.uint8),
    )
    for f in range(num_frames):
        canvas.rgb[f] = backdrop.frame(f)
    ordered = sorted(actors, key=lambda a: (-a.placement.lane, a.identity))
    if ordered:
        parts = PartBatch.concatenate(
            [actor_batches(pose_actor(a, num_frames), views, height, width, skeleton) for a in ordered]
        )
        for first, stop in _frame_chunks(parts.frame, num_frames):
            draw_parts(canvas, parts.take(np.flatnonzero((parts.frame >= first) & (parts.frame < stop))))
    rgb = canvas.rgb
    rgb *= lighting(scene, height, width)
    rgb += 0.5
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return Rendered(rgb.astype(np.uint8), canvas.ids, canvas.detail)


def _frame_chunks(frame: np.ndarray, num_frames: int, parts_per_call: int = PARTS_PER_DRAW) -> list[tuple]:
    """Runs of consecutive frames holding about `parts_per_call` parts each."""
    counts = np.bincount(frame, minlength=num_frames)
    chunks, first, held = [], 0, 0
    for f, count in enumerate(counts):
        if held and held + count > parts_per_call:
            chunks.append((first, f))
            first, held = f, 0
        held += count
    chunks.append((first, num_frames))
    return chunks
