"""Motions described once, independent of body plan.

A motion is a list of keyframes, each a full set of named parameters (speed, gait frequency, limb
amplitudes, lean, crouch, jumps, facing, head turn). Between keyframes the parameters blend with a
smoothstep, so every signal is smooth in time; frequencies and speeds are integrated on a fine fixed time
grid, so the value at frame k depends only on the motion and k (a longer clip starts with the same frames).

`evaluate_motion` turns a motion into a `MotionState`: per-frame arrays that every body plan reads the same
way. The root trajectory, the facing and the phase of each limb group live here, not in the rigs, which is
what makes "the same motion" well defined for a humanoid, a quadruped or a serpent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MOTION_KINDS = ("walk", "run", "jump", "wave", "dance", "spin", "crouch", "idle", "mix")
LIMB_GROUPS = ("legs", "arms", "tail", "head")

# The parameters a keyframe sets (units in brackets; "body" = a fraction of the character's height).
PARAM_NAMES = (
    "speed",  # root speed along the travel direction [world units / s]
    "gait_hz",  # cycles per second of the legs group
    "leg_amp",  # leg swing amplitude [rad]
    "arm_swing",  # arm counter-swing while walking [rad]
    "raise_r",  # right arm / wing / front limb raised: 0 down .. 1 up
    "raise_l",  # the same for the left side
    "wave_amp",  # oscillation of raised limbs [rad]
    "arms_hz",  # cycles per second of the arms group
    "tail_amp",  # tail / secondary wag amplitude [rad]
    "tail_hz",  # cycles per second of the tail group
    "bounce",  # body bob, twice per gait cycle [body]
    "lean",  # forward lean [rad]
    "crouch",  # 0 standing .. 1 fully crouched
    "jump_height",  # height of each hop [world units]
    "jump_hz",  # hops per second
    "yaw",  # turn from profile towards the camera [rad]: 0 profile, pi/2 facing the camera
    "spin_hz",  # full turns per second
    "sway",  # yaw oscillation with the arms group [rad]
    "head_turn",  # head yaw amplitude [rad]
    "head_hz",  # cycles per second of the head group
)

SUBSTEPS = 8  # integration sub-steps per frame; fixed so results never depend on the clip length


@dataclass(frozen=True)
class Keyframe:
    time: float  # seconds from the clip start
    kind: str  # the motion kind these parameters were drawn from (for metadata and mixtures)
    params: dict[str, float]


@dataclass(frozen=True)
class Motion:
    kind: str  # one of MOTION_KINDS
    direction: float  # +1 travels / faces towards +x (screen right), -1 towards -x
    phase0: dict[str, float]  # initial phase of each limb group [rad]
    keyframes: tuple[Keyframe, ...]
    fps: float = 16.0

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "direction": self.direction,
            "phase0": dict(self.phase0),
            "fps": self.fps,
            "keyframes": [{"time": k.time, "kind": k.kind, "params": dict(k.params)} for k in self.keyframes],
        }

    @staticmethod
    def from_json(data: dict) -> Motion:
        keys = tuple(Keyframe(k["time"], k["kind"], dict(k["params"])) for k in data["keyframes"])
        return Motion(data["kind"], data["direction"], dict(data["phase0"]), keys, data["fps"])


@dataclass(frozen=True)
class MotionState:
    """A motion sampled at frame times; every array has shape [F]."""

    times: np.ndarray
    root_x: np.ndarray  # ground-point offset from the start placement [world units]
    root_y: np.ndarray  # height of the ground point above the ground (hops) [world units]
    yaw: np.ndarray  # facing [rad]: 0 faces +x, pi/2 faces the camera, pi faces -x
    phase: dict[str, np.ndarray] = field(default_factory=dict)  # per limb group [rad]
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # the blended keyframe parameters

    @property
    def body_bob(self) -> np.ndarray:
        """Vertical body bob [body], two bumps per gait cycle."""
        return self.signals["bounce"] * (0.5 - 0.5 * np.cos(2.0 * self.phase["legs"]))

    @property
    def head_yaw(self) -> np.ndarray:
        return self.signals["head_turn"] * np.sin(self.phase["head"])


# ---------------------------------------------------------------------------------------------------
# Motion kinds: base parameters and their random ranges
# ---------------------------------------------------------------------------------------------------

_REST = {name: 0.0 for name in PARAM_NAMES} | {"gait_hz": 1.0, "arms_hz": 1.0, "tail_hz": 1.0, "head_hz": 0.4}

# (low, high) uniform ranges over the rest pose; parameters not listed keep their rest value.
_KIND_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "walk": {
        "speed": (0.12, 0.24),
        "gait_hz": (1.2, 1.8),
        "leg_amp": (0.35, 0.55),
        "arm_swing": (0.3, 0.55),
        "bounce": (0.015, 0.03),
        "lean": (0.0, 0.08),
        "yaw": (0.15, 0.6),
        "tail_amp": (0.2, 0.4),
        "tail_hz": (1.2, 1.8),
        "head_turn": (0.0, 0.2),
    },
    "run": {
        "speed": (0.3, 0.5),
        "gait_hz": (2.2, 3.0),
        "leg_amp": (0.6, 0.85),
        "arm_swing": (0.6, 0.9),
        "bounce": (0.03, 0.06),
        "lean": (0.15, 0.3),
        "yaw": (0.05, 0.35),
        "tail_amp": (0.3, 0.5),
        "tail_hz": (2.2, 3.0),
    },
    "jump": {
        "speed": (0.0, 0.12),
        "jump_height": (0.07, 0.16),
        "jump_hz": (1.0, 1.6),
        "leg_amp": (0.05, 0.15),
        "raise_r": (0.3, 0.7),
        "raise_l": (0.3, 0.7),
        "crouch": (0.05, 0.2),
        "yaw": (0.4, 1.4),
        "tail_amp": (0.2, 0.5),
        "tail_hz": (1.0, 2.0),
    },
    "wave": {
        "raise_r": (0.8, 1.0),
        "wave_amp": (0.4, 0.8),
        "arms_hz": (1.5, 2.5),
        "yaw": (1.1, 1.57),
        "head_turn": (0.1, 0.3),
        "head_hz": (0.3, 0.6),
        "tail_amp": (0.1, 0.3),
        "tail_hz": (1.0, 2.0),
    },
    "dance": {
        "gait_hz": (1.4, 2.0),
        "leg_amp": (0.15, 0.3),
        "raise_r": (0.4, 0.9),
        "raise_l": (0.4, 0.9),
        "wave_amp": (0.3, 0.6),
        "arms_hz": (1.0, 2.0),
        "bounce": (0.03, 0.06),
        "sway": (0.3, 0.6),
        "yaw": (1.0, 1.57),
        "head_turn": (0.2, 0.4),
        "head_hz": (0.8, 1.5),
        "tail_amp": (0.3, 0.6),
        "tail_hz": (1.0, 2.0),
    },
    "spin": {
        "spin_hz": (0.5, 1.1),
        "raise_r": (0.3, 0.6),
        "raise_l": (0.3, 0.6),
        "leg_amp": (0.05, 0.15),
        "gait_hz": (1.5, 2.0),
        "yaw": (0.0, 1.57),
        "tail_amp": (0.2, 0.4),
        "tail_hz": (1.0, 2.0),
    },
    "crouch": {
        "crouch": (0.6, 0.9),
        "lean": (0.1, 0.3),
        "yaw": (0.3, 1.4),
        "head_turn": (0.0, 0.3),
        "tail_amp": (0.1, 0.3),
    },
    "idle": {
        "bounce": (0.005, 0.015),
        "gait_hz": (0.3, 0.6),
        "sway": (0.03, 0.1),
        "arms_hz": (0.2, 0.5),
        "head_turn": (0.1, 0.4),
        "head_hz": (0.2, 0.5),
        "yaw": (0.2, 1.5),
        "tail_amp": (0.1, 0.3),
        "tail_hz": (0.5, 1.0),
    },
}


def _draw_params(rng: np.random.Generator, kind: str) -> dict[str, float]:
    params = dict(_REST)
    for name, (low, high) in _KIND_RANGES[kind].items():
        params[name] = float(rng.uniform(low, high))
    return params


def sample_motion(rng: np.random.Generator, duration: float, kind: str | None = None, fps: float = 16.0) -> Motion:
    """A random motion of `kind` (random when None) lasting about `duration` seconds."""
    kind = kind or str(rng.choice(MOTION_KINDS))
    if kind not in MOTION_KINDS:
        raise ValueError(f"unknown motion kind {kind!r}; expected one of {MOTION_KINDS}")
    direction = float(rng.choice([-1.0, 1.0]))
    phase0 = {group: float(rng.uniform(0.0, 2.0 * np.pi)) for group in LIMB_GROUPS}
    if kind == "mix":
        keyframes = _mixture_keyframes(rng, duration)
    elif kind == "crouch":
        keyframes = _crouch_keyframes(rng, duration)
    else:
        keyframes = (Keyframe(0.0, kind, _draw_params(rng, kind)),)
    return Motion(kind, direction, phase0, keyframes, fps)


def _crouch_keyframes(rng: np.random.Generator, duration: float) -> tuple[Keyframe, ...]:
    """Down and up again, a few times: keyframes alternate between standing and a crouch."""
    base = _draw_params(rng, "crouch")
    standing = base | {"crouch": 0.0, "lean": 0.0}
    period = float(rng.uniform(0.35, 0.6))
    start_down = bool(rng.integers(2))
    count = int(np.ceil(duration / period)) + 2
    frames = [base if (i % 2 == 0) == start_down else standing for i in range(count)]
    return tuple(Keyframe(i * period, "crouch", dict(p)) for i, p in enumerate(frames))


def _mixture_keyframes(rng: np.random.Generator, duration: float) -> tuple[Keyframe, ...]:
    """Two to four kinds in sequence; the blend between consecutive keyframes makes the transitions."""
    simple = [k for k in MOTION_KINDS if k != "mix"]
    count = int(rng.integers(2, 5))
    # Evenly spread with jitter, so consecutive kinds are at least half a slot apart (no abrupt switches).
    times = (np.arange(count) + rng.uniform(-0.25, 0.25, size=count)) * max(duration, 1e-3) / count
    times[0] = 0.0
    keyframes = []
    for time in times:
        kind = str(rng.choice(simple))
        params = _draw_params(rng, kind)
        keyframes.append(Keyframe(float(time), kind, params))
    return tuple(keyframes)


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


def _blend_keyframes(motion: Motion, times: np.ndarray) -> dict[str, np.ndarray]:
    """Each parameter at `times`, smoothstep-blended between keyframes and held after the last."""
    key_times = np.array([k.time for k in motion.keyframes], dtype=np.float64)
    table = np.array([[k.params[name] for name in PARAM_NAMES] for k in motion.keyframes], dtype=np.float64)
    if len(key_times) == 1:
        return {name: np.full(times.shape, table[0, i]) for i, name in enumerate(PARAM_NAMES)}
    upper = np.clip(np.searchsorted(key_times, times, side="right"), 1, len(key_times) - 1)
    lower = upper - 1
    span = np.maximum(key_times[upper] - key_times[lower], 1e-9)
    u = np.clip((times - key_times[lower]) / span, 0.0, 1.0)
    s = (u * u * (3.0 - 2.0 * u))[:, None]
    blended = table[lower] * (1.0 - s) + table[upper] * s
    return {name: blended[:, i] for i, name in enumerate(PARAM_NAMES)}


def _integral(values: np.ndarray, dt: float) -> np.ndarray:
    """Cumulative trapezoid integral from time 0 on the fine grid."""
    steps = 0.5 * (values[1:] + values[:-1]) * dt
    return np.concatenate([[0.0], np.cumsum(steps)])


def evaluate_motion(motion: Motion, num_frames: int) -> MotionState:
    """Sample `motion` at frames 0..num_frames-1 (time k / fps)."""
    dt = 1.0 / (motion.fps * SUBSTEPS)
    fine_times = np.arange((num_frames - 1) * SUBSTEPS + 1, dtype=np.float64) * dt
    fine = _blend_keyframes(motion, fine_times)
    at_frames = slice(None, None, SUBSTEPS)
    turns = {
        group: 2.0 * np.pi * _integral(fine[f"{group}_hz" if group != "legs" else "gait_hz"], dt)
        for group in LIMB_GROUPS
    }
    phase = {group: (motion.phase0[group] + turns[group])[at_frames] for group in LIMB_GROUPS}
    jump_phase = 2.0 * np.pi * _integral(fine["jump_hz"], dt)[at_frames]
    signals = {name: values[at_frames] for name, values in fine.items()}
    root_x = motion.direction * _integral(fine["speed"], dt)[at_frames]
    root_y = signals["jump_height"] * np.abs(np.sin(0.5 * jump_phase))
    spin = 2.0 * np.pi * _integral(fine["spin_hz"], dt)[at_frames]
    # Facing: profile towards the travel direction, turned towards the camera by `yaw`.
    toward = signals["yaw"] + spin + signals["sway"] * np.sin(phase["arms"])
    yaw = 0.5 * np.pi * (1.0 - motion.direction) + motion.direction * toward
    times = fine_times[at_frames]
    return MotionState(times, root_x, root_y, yaw, phase, signals)
