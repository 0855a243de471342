"""Body plans: the parts of each kind of character and how a `MotionState` poses its joints.

Joints live in the character's local frame: x forward, y up, z to the character's right, in world units,
with the origin at the ground point under the body (the root). Every plan reads the same motion signals:
the legs group drives locomotion (legs, a serpent's travelling wave, a blob's stubby feet), the arms
group drives raised limbs (arms, wings, a lifted paw, claws, a serpent's head sway), the tail group
wags tails and feathers, and the head group turns the head. That shared reading is the retargeting.

Each plan declares `probes`: for a limb group, two joints whose direction angle in a plane follows
`sin(group phase + offset)` (tests check that the same motion gives the same phases on every plan).
`probe_angle` measures it: in plane "xy" the angle from straight down towards forward, in "zy" from
straight down towards the right, in "xz" from the right towards forward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from scail2.data.world.character import (
    TAG_FACE,
    TAG_LIMB_END,
    Character,
    PartSpec,
    sample_colours,
    sample_looks,
)
from scail2.data.world.motion import MotionState

Joints = dict[str, np.ndarray]  # name -> [F, 3] positions, or [F] per-frame radius scales

# ---------------------------------------------------------------------------------------------------
# Kinematics helpers (vectorised over frames)
# ---------------------------------------------------------------------------------------------------


def _xyz(x, y, z, frames: int) -> np.ndarray:
    """[F, 3] from scalars or [F] arrays."""
    out = np.empty((frames, 3))
    out[:, 0], out[:, 1], out[:, 2] = x, y, z
    return out


def _limb_dir(swing, spread, side: float) -> np.ndarray:
    """Unit vector of a limb hanging down, spread outwards (towards `side` z) then swung forwards."""
    swing, spread = np.broadcast_arrays(np.asarray(swing, dtype=np.float64), np.asarray(spread, dtype=np.float64))
    cos_spread = np.cos(spread)
    return np.stack([cos_spread * np.sin(swing), -cos_spread * np.cos(swing), side * np.sin(spread)], axis=-1)


def _pitch(vector, angle: np.ndarray) -> np.ndarray:
    """Rotate about z so that +y tips towards +x by `angle` (a forward lean)."""
    v = np.broadcast_to(np.asarray(vector, dtype=np.float64), (len(angle), 3))
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([v[:, 0] * c + v[:, 1] * s, -v[:, 0] * s + v[:, 1] * c, v[:, 2]], axis=-1)


def _direction(azimuth, elevation) -> np.ndarray:
    """Unit vector turned `azimuth` from forward towards the right and raised by `elevation`."""
    azimuth, elevation = np.broadcast_arrays(np.asarray(azimuth, float), np.asarray(elevation, float))
    ce = np.cos(elevation)
    return np.stack([ce * np.cos(azimuth), np.sin(elevation), ce * np.sin(azimuth)], axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _face(joints: Joints, head: str, radius: float, head_yaw: np.ndarray, features: dict) -> None:
    """Place facial features on the head sphere: name -> (azimuth, elevation, distance in radii)."""
    for name, (azimuth, elevation, distance) in features.items():
        joints[name] = joints[head] + distance * radius * _direction(head_yaw + azimuth, elevation)


def _eye_parts(pairs: list[tuple[str, float]], eye: float, head: str) -> list[PartSpec]:
    """Eye whites and pupils for (side suffix, eye radius [body]) pairs, facing the camera from `head`."""
    parts = []
    for suffix, radius in pairs:
        parts.append(
            PartSpec(
                f"eye{suffix}",
                f"eye{suffix}",
                radius,
                radius,
                "eye",
                TAG_FACE,
                outlined=True,
                depth_bias=0.002,
                facing=head,
            )
        )
        parts.append(
            PartSpec(
                f"pupil{suffix}",
                f"pupil{suffix}",
                radius * eye,
                radius * eye,
                "pupil",
                TAG_FACE,
                outlined=False,
                depth_bias=0.004,
                facing=head,
            )
        )
    return parts


def _eye_features(spread: float, elevation: float, gaze: float = 0.08) -> dict:
    return {
        "eye_r": (spread, elevation, 0.78),
        "eye_l": (-spread, elevation, 0.78),
        "pupil_r": (spread - gaze, elevation - 0.03, 0.86),
        "pupil_l": (-spread + gaze, elevation - 0.03, 0.86),
    }


def probe_angle(joints: Joints, a: str, b: str, plane: str) -> np.ndarray:
    """[F] angle of the direction from joint `a` to joint `b` in `plane` (see the module docstring)."""
    d = joints[b] - joints[a]
    if plane == "xy":
        return np.arctan2(d[:, 0], -d[:, 1])
    if plane == "zy":
        return np.arctan2(d[:, 2], -d[:, 1])
    if plane == "xz":
        return np.arctan2(d[:, 0], d[:, 2])
    raise ValueError(f"unknown probe plane {plane!r}")


def _stance_height(extents: list[np.ndarray]) -> np.ndarray:
    """How high a body must be for its lowest foot to touch the ground."""
    return np.max(np.stack(extents), axis=0)


def _uniform(rng: np.random.Generator, ranges: dict[str, tuple[float, float]]) -> dict[str, float]:
    return {name: float(rng.uniform(low, high)) for name, (low, high) in ranges.items()}


class BodyPlan(ABC):
    """A kind of character: its proportions, parts, pose and accessories."""

    name = ""
    size_range = (0.3, 0.5)  # [world units] height of the character at the front lane
    accessories: tuple[str, ...] = ()
    probes: dict[str, tuple[str, str, str, float]] = {}  # group -> (joint a, joint b, plane, phase offset)

    @abstractmethod
    def proportions(self, rng: np.random.Generator) -> dict[str, float]: ...

    @abstractmethod
    def parts(self, character: Character) -> list[PartSpec]: ...

    @abstractmethod
    def pose(self, character: Character, state: MotionState) -> Joints: ...


# ---------------------------------------------------------------------------------------------------
# Humanoid biped
# ---------------------------------------------------------------------------------------------------


class Humanoid(BodyPlan):
    name = "humanoid"
    size_range = (0.45, 0.65)
    accessories = ("hair", "hat", "ears", "scarf", "backpack", "tail")
    probes = {"legs": ("hip_r", "knee_r", "xy", 0.0), "arms": ("elbow_r", "wrist_r", "zy", 0.0)}

    def proportions(self, rng):
        p = _uniform(
            rng,
            {
                "leg": (0.36, 0.46),
                "torso": (0.22, 0.3),
                "head_r": (0.075, 0.105),
                "shoulder": (0.07, 0.1),
                "hip": (0.04, 0.06),
                "arm": (0.28, 0.36),
                "limb_r": (0.028, 0.042),
                "waist_r": (0.045, 0.075),
                "chest_r": (0.06, 0.095),
            },
        )
        total = p["leg"] + 0.02 + p["torso"] + 0.03 + 2.0 * p["head_r"]
        return {k: v / total for k, v in p.items()} | {"neck": 0.03 / total, "foot_r": 0.02 / total}

    def parts(self, ch):
        p, acc = ch.proportions, ch.accessories
        r, head = p["limb_r"], p["head_r"]
        parts = [
            PartSpec("pelvis", "chest", p["waist_r"], p["chest_r"], "body", patterned=True),
            PartSpec("chest", "neck_top", r * 1.1, r * 1.1, "skin", depth_bias=-0.01),
            PartSpec("head", "head", head, head, "skin", TAG_FACE, depth_bias=0.01),
        ]
        for s in ("_r", "_l"):
            parts += [
                PartSpec(f"hip{s}", f"knee{s}", r * 1.2, r * 1.05, "limb", depth_bias=-0.012),
                PartSpec(f"knee{s}", f"ankle{s}", r * 1.05, r * 0.9, "limb", depth_bias=-0.012),
                PartSpec(f"ankle{s}", f"toe{s}", r * 1.0, r * 0.9, "shoe", TAG_LIMB_END, depth_bias=-0.011),
                PartSpec(f"shoulder{s}", f"elbow{s}", r * 1.05, r * 0.9, "body"),
                PartSpec(f"elbow{s}", f"wrist{s}", r * 0.9, r * 0.8, "skin"),
                PartSpec(f"wrist{s}", f"hand{s}", r * 1.2, r * 1.1, "skin", TAG_LIMB_END),
            ]
        parts += _eye_parts([("_r", 0.22 * head), ("_l", 0.22 * head)], 0.5, "head")
        parts.append(
            PartSpec(
                "mouth_r",
                "mouth_l",
                0.05 * head,
                0.05 * head,
                "mouth",
                TAG_FACE,
                outlined=False,
                depth_bias=0.003,
                facing="head",
            )
        )
        if "hair" in acc:
            parts.append(PartSpec("hair", "hair", head * 1.08, head * 1.08, "dark", TAG_FACE, depth_bias=-0.03))
        if "hat" in acc:
            parts.append(PartSpec("hat_base", "hat_tip", head * 0.8, head * 0.1, "accessory", depth_bias=0.02))
        if "ears" in acc:
            parts += [
                PartSpec(f"ear{s}", f"ear_tip{s}", head * 0.3, head * 0.08, "skin", TAG_FACE, depth_bias=-0.005)
                for s in ("_r", "_l")
            ]
        if "scarf" in acc:
            parts += [
                PartSpec("chest", "chest", r * 2.0, r * 2.0, "accessory", depth_bias=0.005),
                PartSpec("chest", "scarf_end", r * 1.2, r * 1.0, "accessory", depth_bias=-0.02),
            ]
        if "backpack" in acc:
            parts.append(PartSpec("pack_top", "pack_bottom", p["chest_r"] * 0.8, p["chest_r"] * 0.7, "accessory"))
        if "tail" in acc:
            parts.append(PartSpec("tail_base", "tail_tip", r * 0.9, r * 0.5, "body", depth_bias=-0.02))
        return parts

    def pose(self, ch, st):
        p = {k: v * ch.height for k, v in ch.proportions.items()}
        frames, sig, phase = len(st.times), st.signals, st.phase
        joints: Joints = {}
        extents = []
        for s, side, offset in (("_r", 1.0, 0.0), ("_l", -1.0, np.pi)):
            legs_phase = phase["legs"] + offset
            swing = sig["leg_amp"] * np.sin(legs_phase) + 1.1 * sig["crouch"]
            bend = 0.1 + 1.2 * sig["leg_amp"] * np.maximum(0.0, np.cos(legs_phase)) + 2.0 * sig["crouch"]
            joints[f"hip{s}"] = _xyz(0.0, 0.0, side * p["hip"], frames)
            joints[f"knee{s}"] = joints[f"hip{s}"] + 0.5 * p["leg"] * _limb_dir(swing, 0.04, side)
            joints[f"ankle{s}"] = joints[f"knee{s}"] + 0.5 * p["leg"] * _limb_dir(swing - bend, 0.04, side)
            joints[f"toe{s}"] = joints[f"ankle{s}"] + _xyz(1.6 * p["limb_r"], -0.2 * p["limb_r"], 0.0, frames)
            extents.append(-joints[f"ankle{s}"][:, 1])
        pelvis_y = _stance_height(extents) + p["foot_r"] + st.body_bob * ch.height
        for name in list(joints):
            joints[name] = joints[name] + _xyz(0.0, pelvis_y, 0.0, frames)
        lean = sig["lean"] + 0.35 * sig["crouch"]
        joints["pelvis"] = _xyz(0.0, pelvis_y, 0.0, frames)
        joints["chest"] = joints["pelvis"] + _pitch((0.0, p["torso"], 0.0), lean)
        joints["neck_top"] = joints["chest"] + _pitch((0.0, p["neck"], 0.0), lean)
        joints["head"] = joints["chest"] + _pitch((0.0, p["neck"] + p["head_r"], 0.0), lean)
        self._arms(joints, p, st, lean)
        self._head(joints, p, st, lean)
        return joints

    @staticmethod
    def _arms(joints: Joints, p: dict, st: MotionState, lean: np.ndarray) -> None:
        sig, phase = st.signals, st.phase
        for s, side, offset in (("_r", 1.0, 0.0), ("_l", -1.0, np.pi)):
            lift = sig[f"raise{s}"]
            swing = -sig["arm_swing"] * np.sin(phase["legs"] + offset)
            spread = 0.12 + 2.5 * lift
            wave = sig["wave_amp"] * lift * np.sin(phase["arms"] + offset)
            shoulder = joints["chest"] + _pitch((0.0, -0.25 * p["chest_r"], side * p["shoulder"]), lean)
            joints[f"shoulder{s}"] = shoulder
            joints[f"elbow{s}"] = shoulder + 0.5 * p["arm"] * _limb_dir(swing, spread, side)
            fore = _limb_dir(swing + 0.25, spread + 0.35 * lift + wave, side)
            joints[f"wrist{s}"] = joints[f"elbow{s}"] + 0.5 * p["arm"] * fore
            joints[f"hand{s}"] = joints[f"wrist{s}"] + 0.9 * p["limb_r"] * fore

    @staticmethod
    def _head(joints: Joints, p: dict, st: MotionState, lean: np.ndarray) -> None:
        frames, head_r, yaw = len(st.times), p["head_r"], st.head_yaw
        features = _eye_features(0.42, 0.12) | {"mouth_r": (0.22, -0.45, 0.86), "mouth_l": (-0.22, -0.45, 0.86)}
        _face(joints, "head", head_r, yaw, features)
        head = joints["head"]
        back = _direction(yaw, 0.0)
        joints["hair"] = head - 0.18 * head_r * back + _xyz(0.0, 0.14 * head_r, 0.0, frames)
        joints["hat_base"] = head + _pitch((0.0, 0.72 * head_r, 0.0), lean)
        joints["hat_tip"] = head + _pitch((0.0, 2.3 * head_r, 0.0), lean + 0.15)
        for s, side in (("_r", 1.0), ("_l", -1.0)):
            base = _direction(yaw + side * 1.3, 0.9)
            joints[f"ear{s}"] = head + 0.85 * head_r * base
            joints[f"ear_tip{s}"] = head + 1.8 * head_r * _direction(yaw + side * 1.2, 1.1)
        joints["scarf_end"] = joints["chest"] + _xyz(-0.15 * p["torso"], -0.3 * p["torso"], 0.1 * p["torso"], frames)
        joints["pack_top"] = joints["chest"] + _pitch((-1.0 * p["chest_r"], -0.2 * p["torso"], 0.0), lean)
        joints["pack_bottom"] = joints["chest"] + _pitch((-1.0 * p["chest_r"], -0.7 * p["torso"], 0.0), lean)
        wag = 0.6 * np.sin(st.phase["tail"]) * (0.3 + st.signals["tail_amp"])
        joints["tail_base"] = joints["pelvis"] + _xyz(-0.8 * p["waist_r"], 0.0, 0.0, frames)
        joints["tail_tip"] = joints["tail_base"] + 0.35 * p["leg"] * _unit(_xyz(-1.0, 0.4 + wag, 0.3 * wag, frames))


# ---------------------------------------------------------------------------------------------------
# Quadruped
# ---------------------------------------------------------------------------------------------------


class Quadruped(BodyPlan):
    name = "quadruped"
    size_range = (0.3, 0.45)
    accessories = ("collar", "horns", "saddle", "mane")
    probes = {"legs": ("hip_fr", "knee_fr", "xy", 0.0), "arms": ("hip_fr", "knee_fr", "xy", 0.0)}
    # Trot: diagonal pairs move together.
    LEGS = (("_fr", 1.0, 1.0, 0.0), ("_bl", -1.0, -1.0, 0.0), ("_fl", 1.0, -1.0, np.pi), ("_br", -1.0, 1.0, np.pi))

    def proportions(self, rng):
        p = _uniform(
            rng,
            {
                "leg": (0.3, 0.42),
                "body_len": (0.45, 0.7),
                "body_r": (0.1, 0.15),
                "neck": (0.14, 0.22),
                "head_r": (0.085, 0.11),
                "snout": (0.06, 0.12),
                "tail": (0.2, 0.35),
                "leg_r": (0.03, 0.045),
                "ear": (0.05, 0.12),
            },
        )
        total = p["leg"] + p["body_r"] + 0.8 * p["neck"] + p["head_r"]
        return {k: v / total for k, v in p.items()}

    def parts(self, ch):
        p, acc = ch.proportions, ch.accessories
        r, head = p["leg_r"], p["head_r"]
        parts = [
            PartSpec("rump", "withers", p["body_r"], p["body_r"] * 1.05, "body", patterned=True),
            PartSpec("withers", "head", p["body_r"] * 0.55, head * 0.7, "body", patterned=True, depth_bias=0.01),
            PartSpec("head", "head", head, head, "skin", TAG_FACE, depth_bias=0.02),
            PartSpec("snout_base", "snout_tip", head * 0.6, head * 0.42, "skin", TAG_FACE, depth_bias=0.025),
            PartSpec(
                "nose", "nose", head * 0.2, head * 0.2, "dark", TAG_FACE, outlined=False, depth_bias=0.03, facing="head"
            ),
        ]
        for s, *_ in self.LEGS:
            parts += [
                PartSpec(f"hip{s}", f"knee{s}", r * 1.3, r * 1.0, "body", depth_bias=-0.01),
                PartSpec(f"knee{s}", f"ankle{s}", r * 1.0, r * 0.85, "body", depth_bias=-0.01),
                PartSpec(f"ankle{s}", f"ankle{s}", r * 1.15, r * 1.15, "dark", TAG_LIMB_END, depth_bias=-0.009),
            ]
        parts += [
            PartSpec(f"ear{s}", f"ear_tip{s}", head * 0.35, head * 0.06, "body", TAG_FACE, depth_bias=0.015)
            for s in ("_r", "_l")
        ]
        parts += [
            PartSpec(f"tail_{i}", f"tail_{i + 1}", r * (1.0 - 0.25 * i), r * (0.75 - 0.25 * i), "body")
            for i in range(3)
        ]
        parts += _eye_parts([("_r", 0.2 * head), ("_l", 0.2 * head)], 0.55, "head")
        if "collar" in acc:
            parts.append(
                PartSpec("collar", "collar", p["body_r"] * 0.62, p["body_r"] * 0.62, "accessory", depth_bias=0.012)
            )
        if "horns" in acc:
            parts += [
                PartSpec(f"horn{s}", f"horn_tip{s}", head * 0.25, head * 0.05, "eye", TAG_FACE, depth_bias=0.01)
                for s in ("_r", "_l")
            ]
        if "saddle" in acc:
            parts.append(
                PartSpec("saddle_a", "saddle_b", p["body_r"] * 0.5, p["body_r"] * 0.5, "accessory", depth_bias=0.02)
            )
        if "mane" in acc:
            parts.append(PartSpec("withers", "mane_top", p["body_r"] * 0.5, head * 0.5, "dark", depth_bias=-0.02))
        return parts

    def pose(self, ch, st):
        p = {k: v * ch.height for k, v in ch.proportions.items()}
        frames, sig, phase = len(st.times), st.signals, st.phase
        joints: Joints = {}
        extents = []
        for s, front, side, offset in self.LEGS:
            legs_phase = phase["legs"] + offset
            swing = sig["leg_amp"] * np.sin(legs_phase) + 0.5 * sig["crouch"] * front
            if s in ("_fr", "_fl"):
                lift = sig["raise_r" if s == "_fr" else "raise_l"]
                wave_offset = 0.0 if s == "_fr" else np.pi
                swing = swing + 1.4 * lift + sig["wave_amp"] * lift * np.sin(phase["arms"] + wave_offset)
            bend = 0.1 + 1.1 * sig["leg_amp"] * np.maximum(0.0, np.cos(legs_phase)) + 1.6 * sig["crouch"]
            hip = _xyz(0.42 * front * p["body_len"], 0.0, side * 0.5 * p["body_r"], frames)
            knee = hip + 0.5 * p["leg"] * _limb_dir(swing, 0.03, side)
            ankle = knee + 0.5 * p["leg"] * _limb_dir(swing - front * bend, 0.03, side)
            joints[f"hip{s}"], joints[f"knee{s}"], joints[f"ankle{s}"] = hip, knee, ankle
            extents.append(-ankle[:, 1])
        body_y = _stance_height(extents) + 1.1 * p["leg_r"] + st.body_bob * ch.height
        for name in list(joints):
            joints[name] = joints[name] + _xyz(0.0, body_y, 0.0, frames)
        joints["rump"] = _xyz(-0.5 * p["body_len"], body_y + 0.3 * p["body_r"], 0.0, frames)
        joints["withers"] = _xyz(0.5 * p["body_len"], body_y + 0.4 * p["body_r"], 0.0, frames)
        self._head(joints, p, st)
        self._tail(joints, p, st)
        return joints

    @staticmethod
    def _head(joints: Joints, p: dict, st: MotionState) -> None:
        frames, head_r, yaw = len(st.times), p["head_r"], st.head_yaw
        tilt = 0.55 + 2.2 * st.signals["lean"] + 0.15 * st.signals["leg_amp"] * np.sin(2.0 * st.phase["legs"])
        neck = p["neck"] * np.stack([np.sin(tilt), np.cos(tilt), np.zeros(frames)], axis=-1)
        joints["head"] = joints["withers"] + neck
        snout = _direction(yaw, -0.35 - 0.5 * st.signals["lean"])
        joints["snout_base"] = joints["head"] + 0.3 * head_r * snout
        joints["snout_tip"] = joints["head"] + (head_r + p["snout"]) * snout
        joints["nose"] = joints["head"] + (head_r + p["snout"] + 0.3 * head_r) * snout
        _face(joints, "head", head_r, yaw, _eye_features(0.55, 0.35, gaze=-0.05))
        for s, side in (("_r", 1.0), ("_l", -1.0)):
            joints[f"ear{s}"] = joints["head"] + 0.8 * head_r * _direction(yaw + side * 1.25, 1.0)
            joints[f"ear_tip{s}"] = joints[f"ear{s}"] + p["ear"] * _direction(yaw + side * 1.6, 1.2)
            joints[f"horn{s}"] = joints["head"] + 0.8 * head_r * _direction(yaw + side * 0.6, 1.1)
            joints[f"horn_tip{s}"] = joints[f"horn{s}"] + 1.5 * head_r * _direction(yaw + side * 0.5, 0.6)
        joints["collar"] = joints["withers"] + 0.35 * neck
        joints["mane_top"] = joints["withers"] + 0.8 * neck + _xyz(-0.4 * head_r, 0.2 * head_r, 0.0, frames)
        joints["saddle_a"] = joints["rump"] * 0.35 + joints["withers"] * 0.65 + _xyz(0, 0.9 * p["body_r"], 0, frames)
        joints["saddle_b"] = joints["rump"] * 0.65 + joints["withers"] * 0.35 + _xyz(0, 0.9 * p["body_r"], 0, frames)

    @staticmethod
    def _tail(joints: Joints, p: dict, st: MotionState) -> None:
        frames = len(st.times)
        wag = (0.2 + st.signals["tail_amp"]) * np.sin(st.phase["tail"])
        joints["tail_0"] = joints["rump"] + _xyz(-0.8 * p["body_r"], 0.3 * p["body_r"], 0.0, frames)
        for i in range(3):
            elevation = 0.6 - 0.5 * i + wag * (1.0 + 0.5 * i)
            step = _unit(_xyz(-np.cos(elevation), np.sin(elevation), 0.5 * wag, frames))
            joints[f"tail_{i + 1}"] = joints[f"tail_{i}"] + p["tail"] / 3.0 * step


# ---------------------------------------------------------------------------------------------------
# Bird
# ---------------------------------------------------------------------------------------------------


class Bird(BodyPlan):
    name = "bird"
    size_range = (0.28, 0.42)
    accessories = ("crest", "scarf")
    probes = {"legs": ("hip_r", "knee_r", "xy", 0.0), "arms": ("shoulder_r", "elbow_r", "zy", 0.0)}

    def proportions(self, rng):
        p = _uniform(
            rng,
            {
                "leg": (0.22, 0.32),
                "body_len": (0.3, 0.42),
                "body_r": (0.13, 0.17),
                "head_r": (0.09, 0.12),
                "neck": (0.06, 0.11),
                "beak": (0.08, 0.16),
                "wing": (0.32, 0.46),
                "tail": (0.15, 0.26),
                "leg_r": (0.014, 0.02),
            },
        )
        total = p["leg"] + p["body_r"] + p["neck"] + 2.0 * p["head_r"]
        return {k: v / total for k, v in p.items()}

    def parts(self, ch):
        p, head, r = ch.proportions, ch.proportions["head_r"], ch.proportions["leg_r"]
        parts = [
            PartSpec("rump", "breast", p["body_r"] * 0.8, p["body_r"], "body", patterned=True),
            PartSpec("breast", "head", p["body_r"] * 0.6, head * 0.7, "body", depth_bias=0.005),
            PartSpec("head", "head", head, head, "body", TAG_FACE, depth_bias=0.01),
            PartSpec("beak_base", "beak_tip", head * 0.45, head * 0.06, "beak", TAG_FACE, depth_bias=0.02),
        ]
        for s in ("_r", "_l"):
            parts += [
                PartSpec(f"hip{s}", f"knee{s}", r * 1.6, r * 1.1, "beak", depth_bias=-0.02),
                PartSpec(f"knee{s}", f"ankle{s}", r * 1.1, r * 1.0, "beak", depth_bias=-0.02),
                PartSpec(f"ankle{s}", f"toe{s}", r * 1.0, r * 0.7, "beak", TAG_LIMB_END, depth_bias=-0.019),
                PartSpec(f"ankle{s}", f"heel{s}", r * 0.9, r * 0.6, "beak", TAG_LIMB_END, depth_bias=-0.019),
                PartSpec(f"shoulder{s}", f"elbow{s}", p["body_r"] * 0.45, p["body_r"] * 0.35, "limb", patterned=True),
                PartSpec(f"elbow{s}", f"wing_tip{s}", p["body_r"] * 0.35, p["body_r"] * 0.08, "limb", TAG_LIMB_END),
            ]
        parts += [
            PartSpec("rump", f"feather_{i}", p["body_r"] * 0.35, p["body_r"] * 0.15, "limb", depth_bias=-0.005)
            for i in range(3)
        ]
        parts += _eye_parts([("_r", 0.24 * head), ("_l", 0.24 * head)], 0.55, "head")
        if "crest" in ch.accessories:
            parts += [
                PartSpec("head", f"crest_{i}", head * 0.3, head * 0.06, "accessory", TAG_FACE, depth_bias=-0.01)
                for i in range(3)
            ]
        if "scarf" in ch.accessories:
            parts.append(PartSpec("neck_mid", "neck_mid", head * 0.85, head * 0.85, "accessory", depth_bias=0.008))
        return parts

    def pose(self, ch, st):
        p = {k: v * ch.height for k, v in ch.proportions.items()}
        frames, sig, phase = len(st.times), st.signals, st.phase
        joints: Joints = {}
        extents = []
        for s, side, offset in (("_r", 1.0, 0.0), ("_l", -1.0, np.pi)):
            legs_phase = phase["legs"] + offset
            swing = sig["leg_amp"] * np.sin(legs_phase) + 0.6 * sig["crouch"]
            bend = 0.5 + 1.0 * sig["leg_amp"] * np.maximum(0.0, np.cos(legs_phase)) + 1.3 * sig["crouch"]
            hip = _xyz(0.0, 0.0, side * 0.35 * p["body_r"], frames)
            knee = hip + 0.45 * p["leg"] * _limb_dir(swing, 0.05, side)
            ankle = knee + 0.55 * p["leg"] * _limb_dir(swing - bend, 0.05, side)
            joints[f"hip{s}"], joints[f"knee{s}"], joints[f"ankle{s}"] = hip, knee, ankle
            extents.append(-ankle[:, 1])
        hip_y = _stance_height(extents) + p["leg_r"] + st.body_bob * ch.height
        for name in list(joints):
            joints[name] = joints[name] + _xyz(0.0, hip_y, 0.0, frames)
        for s in ("_r", "_l"):
            joints[f"toe{s}"] = joints[f"ankle{s}"] + _xyz(0.55 * p["head_r"], -0.3 * p["leg_r"], 0.0, frames)
            joints[f"heel{s}"] = joints[f"ankle{s}"] + _xyz(-0.3 * p["head_r"], -0.3 * p["leg_r"], 0.0, frames)
        tilt = 0.35 - sig["lean"]
        centre = _xyz(0.0, hip_y + 0.75 * p["body_r"], 0.0, frames)
        axis = np.stack([np.cos(tilt), np.sin(tilt), np.zeros(frames)], axis=-1)
        joints["rump"] = centre - 0.5 * p["body_len"] * axis
        joints["breast"] = centre + 0.4 * p["body_len"] * axis
        bob = 0.3 * p["head_r"] * sig["leg_amp"] * np.sin(2.0 * phase["legs"])
        joints["head"] = joints["breast"] + _xyz(0.2 * p["head_r"] + bob, p["neck"] + 0.8 * p["head_r"], 0.0, frames)
        joints["neck_mid"] = 0.5 * (joints["breast"] + joints["head"])
        self._head(joints, p, st)
        self._wings(joints, p, st, axis)
        return joints

    @staticmethod
    def _head(joints: Joints, p: dict, st: MotionState) -> None:
        head_r, yaw = p["head_r"], st.head_yaw
        beak = _direction(yaw, -0.15)
        joints["beak_base"] = joints["head"] + 0.6 * head_r * beak
        joints["beak_tip"] = joints["head"] + (head_r + p["beak"]) * beak
        _face(joints, "head", head_r, yaw, _eye_features(0.75, 0.3, gaze=-0.06))
        for i in range(3):
            joints[f"crest_{i}"] = joints["head"] + 2.0 * head_r * _direction(yaw + np.pi, 1.1 - 0.35 * i)

    @staticmethod
    def _wings(joints: Joints, p: dict, st: MotionState, axis: np.ndarray) -> None:
        frames, sig, phase = len(st.times), st.signals, st.phase
        flap = (1.1 * sig["wave_amp"] + 0.5 * sig["arm_swing"]) * np.sin(phase["arms"])
        for s, side in (("_r", 1.0), ("_l", -1.0)):
            opening = np.clip(sig[f"raise{s}"] + 1.5 * sig["wave_amp"] + 0.6 * sig["arm_swing"], 0.0, 1.0)[:, None]
            shoulder = joints["breast"] + _xyz(-0.1 * p["body_r"], 0.3 * p["body_r"], side * 0.45 * p["body_r"], frames)
            folded = _unit(-axis + _xyz(0.0, -0.25, 0.3 * side, frames))
            elevation = 0.35 + flap
            spread = _unit(_xyz(-0.2, np.sin(elevation), side * np.cos(elevation), frames))
            upper = _unit(folded * (1.0 - opening) + spread * opening)
            outer = _unit(upper + _xyz(-0.35, 0.25 * flap - 0.1, 0.0, frames))
            joints[f"shoulder{s}"] = shoulder
            joints[f"elbow{s}"] = shoulder + 0.45 * p["wing"] * upper
            joints[f"wing_tip{s}"] = joints[f"elbow{s}"] + 0.55 * p["wing"] * outer
        wag = (0.15 + sig["tail_amp"]) * np.sin(phase["tail"])
        for i, fan in enumerate((-0.35, 0.0, 0.35)):
            direction = _unit(-axis + _xyz(0.0, 0.3 + 0.6 * wag, fan, frames))
            joints[f"feather_{i}"] = joints["rump"] + p["tail"] * direction


# ---------------------------------------------------------------------------------------------------
# Serpent: a chain of segments with a travelling wave
# ---------------------------------------------------------------------------------------------------


class Serpent(BodyPlan):
    name = "serpent"
    size_range = (0.5, 0.8)
    accessories = ("tongue", "crown", "horns")
    SEGMENTS = 10
    WAVE_NUMBER = 0.9  # radians of wave phase per segment
    probes = {
        "legs": ("spine_4", "spine_5", "xy", 0.5 * np.pi - 0.9 * 4.5),
        "arms": ("spine_1", "spine_0", "xz", np.pi),
    }

    def proportions(self, rng):
        return _uniform(
            rng,
            {
                "length": (0.9, 1.1),
                "radius": (0.055, 0.075),
                "head_r": (0.085, 0.11),
                "rise": (0.2, 0.35),
                "wave": (0.03, 0.06),
                "slither": (0.04, 0.08),
            },
        )

    def parts(self, ch):
        p, head = ch.proportions, ch.proportions["head_r"]
        count = self.SEGMENTS
        parts = []
        for i in range(count - 1):
            taper = 1.0 - 0.8 * (i / (count - 1)) ** 1.5
            taper_next = 1.0 - 0.8 * ((i + 1) / (count - 1)) ** 1.5
            tag = TAG_LIMB_END if i == count - 2 else 0
            parts.append(
                PartSpec(
                    f"spine_{i}",
                    f"spine_{i + 1}",
                    p["radius"] * taper,
                    p["radius"] * taper_next,
                    "body",
                    tag,
                    patterned=True,
                    depth_bias=-0.001 * i,
                )
            )
        parts += [PartSpec("head", "jaw", head, head * 0.75, "body", TAG_FACE, patterned=True, depth_bias=0.01)]
        parts += _eye_parts([("_r", 0.25 * head), ("_l", 0.25 * head)], 0.5, "head")
        if "tongue" in ch.accessories:
            parts.append(
                PartSpec(
                    "jaw", "tongue_tip", head * 0.12, head * 0.06, "mouth", TAG_FACE, outlined=False, depth_bias=-0.005
                )
            )
        if "crown" in ch.accessories:
            parts += [
                PartSpec("crown_base", f"crown_{i}", head * 0.25, head * 0.06, "beak", TAG_FACE, depth_bias=0.012)
                for i in range(3)
            ]
        if "horns" in ch.accessories:
            parts += [
                PartSpec(f"horn{s}", f"horn_tip{s}", head * 0.25, head * 0.05, "eye", TAG_FACE, depth_bias=0.005)
                for s in ("_r", "_l")
            ]
        return parts

    def pose(self, ch, st):
        p = {k: v * ch.height for k, v in ch.proportions.items()}
        frames, sig, phase = len(st.times), st.signals, st.phase
        joints: Joints = {}
        travel = np.clip(2.0 * sig["leg_amp"], 0.0, 1.0) * (1.0 - sig["crouch"])
        rise = p["rise"] * (1.0 + 0.8 * sig["raise_r"] + 0.4 * sig["raise_l"] - 0.7 * sig["crouch"])
        sway = 0.6 * sig["wave_amp"] * np.sin(phase["arms"])
        for i in range(self.SEGMENTS):
            wave_phase = phase["legs"] - self.WAVE_NUMBER * i
            x = p["length"] * (0.35 - i / (self.SEGMENTS - 1))
            y = p["radius"] + p["wave"] * travel * 0.5 * (1.0 + np.sin(wave_phase))
            z = p["slither"] * travel * np.cos(wave_phase)
            neck = max(0.0, 1.0 - i / 3.0)
            y = y + rise * neck**2 + st.body_bob * ch.height
            z = z + p["length"] * 0.25 * sway * neck**2
            joints[f"spine_{i}"] = _xyz(x, y, z, frames)
        yaw = st.head_yaw
        forward = _direction(yaw, -0.2 + 0.3 * sig["lean"])
        joints["head"] = joints["spine_0"] + 0.4 * p["head_r"] * forward
        joints["jaw"] = joints["head"] + 0.9 * p["head_r"] * forward
        _face(joints, "head", p["head_r"], yaw, _eye_features(0.5, 0.45, gaze=-0.05))
        flick = 0.5 + 0.5 * np.sin(3.0 * phase["arms"])
        joints["tongue_tip"] = joints["jaw"] + (0.4 + 0.6 * flick)[:, None] * p["head_r"] * forward
        joints["crown_base"] = joints["head"] + 0.7 * p["head_r"] * _direction(yaw, 1.2)
        for i in range(3):
            joints[f"crown_{i}"] = joints["crown_base"] + 0.9 * p["head_r"] * _direction(yaw + (i - 1) * 0.9, 1.3)
        for s, side in (("_r", 1.0), ("_l", -1.0)):
            joints[f"horn{s}"] = joints["head"] + 0.75 * p["head_r"] * _direction(yaw + side * 0.9, 0.9)
            joints[f"horn_tip{s}"] = joints[f"horn{s}"] + 1.2 * p["head_r"] * _direction(yaw + side * 1.3 + np.pi, 0.8)
        return joints


# ---------------------------------------------------------------------------------------------------
# Blob
# ---------------------------------------------------------------------------------------------------


class Blob(BodyPlan):
    name = "blob"
    size_range = (0.26, 0.4)
    accessories = ("antenna", "hat", "bow")
    probes = {"legs": ("hip_r", "foot_r", "xy", 0.0), "arms": ("shoulder_r", "hand_r", "zy", 0.0)}

    def proportions(self, rng):
        p = _uniform(
            rng,
            {
                "body_r": (0.3, 0.38),
                "body_len": (0.05, 0.25),
                "eye": (0.2, 0.27),
                "nub": (0.18, 0.28),
                "foot_r": (0.06, 0.09),
                "foot_len": (0.06, 0.1),
            },
        )
        total = 2.0 * p["body_r"] + p["body_len"] + p["foot_len"] + p["foot_r"]
        return {k: v / total for k, v in p.items()}

    def parts(self, ch):
        p = ch.proportions
        body, eye = p["body_r"], p["eye"] * p["body_r"]
        parts = [PartSpec("bottom", "top", body, body * 0.95, "body", patterned=True, scale="_scale_body")]
        for s in ("_r", "_l"):
            parts += [
                PartSpec(f"hip{s}", f"foot{s}", p["foot_r"] * 0.8, p["foot_r"], "dark", TAG_LIMB_END, depth_bias=-0.05),
                PartSpec(f"shoulder{s}", f"hand{s}", body * 0.2, body * 0.16, "skin", TAG_LIMB_END, depth_bias=-0.01),
            ]
        parts += _eye_parts([("_r", eye), ("_l", eye)], 0.5, "face")
        parts.append(
            PartSpec(
                "mouth_r",
                "mouth_l",
                body * 0.05,
                body * 0.05,
                "mouth",
                TAG_FACE,
                outlined=False,
                depth_bias=0.003,
                facing="face",
            )
        )
        if "antenna" in ch.accessories:
            parts += [
                PartSpec("top_point", "antenna_tip", body * 0.05, body * 0.04, "dark", depth_bias=-0.02),
                PartSpec("antenna_tip", "antenna_tip", body * 0.12, body * 0.12, "accessory", depth_bias=-0.02),
            ]
        if "hat" in ch.accessories:
            parts.append(PartSpec("top_point", "hat_tip", body * 0.55, body * 0.08, "accessory", depth_bias=0.02))
        if "bow" in ch.accessories:
            parts += [
                PartSpec("bow", f"bow{s}", body * 0.08, body * 0.2, "accessory", depth_bias=0.02) for s in ("_r", "_l")
            ]
        return parts

    def pose(self, ch, st):
        p = {k: v * ch.height for k, v in ch.proportions.items()}
        frames, sig, phase = len(st.times), st.signals, st.phase
        joints: Joints = {}
        extents = []
        for s, side, offset in (("_r", 1.0, 0.0), ("_l", -1.0, np.pi)):
            swing = 1.3 * sig["leg_amp"] * np.sin(phase["legs"] + offset)
            joints[f"hip{s}"] = _xyz(0.0, 0.0, side * 0.45 * p["body_r"], frames)
            joints[f"foot{s}"] = joints[f"hip{s}"] + p["foot_len"] * _limb_dir(swing, 0.15, side)
            extents.append(-joints[f"foot{s}"][:, 1])
        base = _stance_height(extents) + p["foot_r"]
        for name in list(joints):
            joints[name] = joints[name] + _xyz(0.0, base, 0.0, frames)
        stretch = 1.0 + 0.5 * np.minimum(1.0, 2.0 * sig["leg_amp"]) * 0.25 * np.sin(2.0 * phase["legs"])
        stretch = stretch - 0.35 * sig["crouch"] + 3.0 * st.body_bob
        joints["_scale_body"] = 1.0 / np.sqrt(np.maximum(stretch, 0.3))
        width = p["body_r"] * joints["_scale_body"]
        tilt = sig["lean"]
        joints["bottom"] = _xyz(0.0, base + 0.8 * width, 0.0, frames)
        joints["top"] = joints["bottom"] + _pitch((0.0, p["body_len"], 0.0), tilt) * stretch[:, None]
        joints["face"] = joints["top"] - 0.05 * width[:, None] * _xyz(0.0, 1.0, 0.0, frames)
        self._features(joints, p, st, width)
        return joints

    @staticmethod
    def _features(joints: Joints, p: dict, st: MotionState, width: np.ndarray) -> None:
        frames, sig, phase, yaw = len(st.times), st.signals, st.phase, st.head_yaw
        features = _eye_features(0.38, 0.2, gaze=0.06) | {"mouth_r": (0.2, -0.3, 0.92), "mouth_l": (-0.2, -0.3, 0.92)}
        for name, (azimuth, elevation, distance) in features.items():
            joints[name] = joints["face"] + distance * width[:, None] * _direction(yaw + azimuth, elevation)
        mid = 0.5 * (joints["bottom"] + joints["top"])
        for s, side, offset in (("_r", 1.0, 0.0), ("_l", -1.0, np.pi)):
            lift = sig[f"raise{s}"]
            spread = 0.7 + 1.8 * lift + sig["wave_amp"] * lift * np.sin(phase["arms"] + offset)
            swing = -sig["arm_swing"] * np.sin(phase["legs"] + offset)
            joints[f"shoulder{s}"] = mid + width[:, None] * _xyz(0.0, 0.0, side * 0.85, frames)
            joints[f"hand{s}"] = joints[f"shoulder{s}"] + p["nub"] * _limb_dir(swing, spread, side)
        top_point = joints["top"] + width[:, None] * _xyz(0.0, 0.9, 0.0, frames)
        joints["top_point"] = top_point
        bend = 0.15 * np.sin(st.phase["tail"]) * (0.3 + sig["tail_amp"])
        joints["antenna_tip"] = top_point + p["body_r"] * _unit(_xyz(bend, 1.0, 0.0, frames)) * 0.6
        joints["hat_tip"] = top_point + _xyz(0.1 * p["body_r"], 0.9 * p["body_r"], 0.0, frames)
        joints["bow"] = joints["top"] + width[:, None] * _direction(yaw + 0.7, 0.8) * 0.95
        for s, side in (("_r", 1.0), ("_l", -1.0)):
            joints[f"bow{s}"] = joints["bow"] + 0.3 * p["body_r"] * _direction(yaw + 0.7 + side * 1.4, 0.7)


# ---------------------------------------------------------------------------------------------------
# Many-limbed creature (spider-like walker with two claws)
# ---------------------------------------------------------------------------------------------------


class ManyLimbed(BodyPlan):
    name = "multileg"
    size_range = (0.24, 0.36)
    accessories = ("antennae", "shell_spots", "bow")
    probes = {"legs": ("coxa_r0", "foot_r0", "xz", 0.0), "arms": ("claw_base_r", "claw_mid_r", "xy", 0.0)}

    def proportions(self, rng):
        p = _uniform(
            rng,
            {
                "body_r": (0.14, 0.18),
                "head_r": (0.1, 0.13),
                "femur": (0.14, 0.2),
                "reach": (0.26, 0.34),
                "height": (0.18, 0.26),
                "leg_r": (0.022, 0.03),
                "claw": (0.16, 0.24),
            },
        )
        p["legs"] = float(rng.choice([3, 4]))  # legs per side
        p["eyes"] = float(rng.choice([2, 4]))
        total = p["height"] + p["body_r"] * 1.2 + 0.2 * p["femur"]
        return {k: (v / total if k not in ("legs", "eyes") else v) for k, v in p.items()}

    def _legs(self, ch: Character) -> list[tuple[str, float, float, float]]:
        """(suffix, side, sweep angle from the side axis towards forward, gait offset) per walking leg."""
        per_side = int(ch.proportions["legs"])
        sweeps = np.linspace(0.6, -0.8, per_side)
        legs = []
        for i, sweep in enumerate(sweeps):
            for s, side in (("_r", 1.0), ("_l", -1.0)):
                legs.append((f"{s}{i}", side, float(sweep), np.pi * ((i + (side < 0)) % 2)))
        return legs

    def parts(self, ch):
        p = ch.proportions
        r, head = p["leg_r"], p["head_r"]
        parts = [
            PartSpec("abdomen", "abdomen", p["body_r"], p["body_r"], "body", patterned=True),
            PartSpec("thorax", "thorax", head, head, "skin", TAG_FACE, depth_bias=0.01),
        ]
        for s, *_ in self._legs(ch):
            parts += [
                PartSpec(f"coxa{s}", f"knee{s}", r * 1.3, r * 1.1, "limb", depth_bias=-0.02),
                PartSpec(f"knee{s}", f"foot{s}", r * 1.1, r * 0.7, "limb", TAG_LIMB_END, depth_bias=-0.02),
            ]
        for s in ("_r", "_l"):
            parts += [
                PartSpec(f"claw_base{s}", f"claw_mid{s}", r * 1.4, r * 1.3, "limb"),
                PartSpec(f"claw_mid{s}", f"claw_tip{s}", r * 1.3, r * 1.1, "limb"),
                PartSpec(f"claw_tip{s}", f"claw_pincer{s}", r * 1.8, r * 0.6, "dark", TAG_LIMB_END),
            ]
        eyes = [("_r", 0.26 * head), ("_l", 0.26 * head)]
        if p["eyes"] > 2:
            eyes += [("_r2", 0.17 * head), ("_l2", 0.17 * head)]
        parts += _eye_parts(eyes, 0.55, "thorax")
        if "antennae" in ch.accessories:
            parts += [
                PartSpec(f"antenna{s}", f"antenna_tip{s}", r * 0.8, r * 0.5, "dark", TAG_FACE, depth_bias=-0.005)
                for s in ("_r", "_l")
            ]
        if "shell_spots" in ch.accessories:
            parts.append(
                PartSpec(
                    "shell",
                    "shell",
                    p["body_r"] * 0.45,
                    p["body_r"] * 0.45,
                    "accessory",
                    depth_bias=0.003,
                    facing="abdomen",
                )
            )
        if "bow" in ch.accessories:
            parts.append(PartSpec("bow_r", "bow_l", head * 0.35, head * 0.35, "accessory", depth_bias=0.02))
        return parts

    def pose(self, ch, st):
        p = {k: (v * ch.height if k not in ("legs", "eyes") else v) for k, v in ch.proportions.items()}
        frames, sig, phase = len(st.times), st.signals, st.phase
        joints: Joints = {}
        body_y = p["height"] * (1.0 - 0.45 * sig["crouch"]) + st.body_bob * ch.height
        wiggle = 0.1 * np.sin(phase["tail"]) * (0.3 + sig["tail_amp"])
        joints["thorax"] = _xyz(0.35 * p["body_r"], body_y, 0.0, frames)
        joints["abdomen"] = joints["thorax"] + p["body_r"] * _unit(_xyz(-1.2, 0.35 + wiggle, 0.0, frames)) * 1.1
        joints["shell"] = joints["abdomen"] + 0.55 * p["body_r"] * _direction(0.0, 0.9)
        for s, side, sweep, offset in self._legs(ch):
            legs_phase = phase["legs"] + offset
            turn = sweep + 0.5 * sig["leg_amp"] * np.sin(legs_phase)
            outward = np.stack([np.sin(turn), np.zeros(frames), side * np.cos(turn)], axis=-1)
            lift = 0.5 * p["femur"] * sig["leg_amp"] * np.maximum(0.0, np.cos(legs_phase))
            coxa = joints["thorax"] + 0.6 * p["head_r"] * outward
            joints[f"coxa{s}"] = coxa
            joints[f"knee{s}"] = coxa + p["femur"] * (0.55 * outward + _xyz(0.0, 0.83, 0.0, frames))
            joints[f"foot{s}"] = coxa + p["reach"] * outward + _xyz(0.0, lift - coxa[:, 1], 0.0, frames)
        self._head(joints, p, st)
        return joints

    @staticmethod
    def _head(joints: Joints, p: dict, st: MotionState) -> None:
        sig, phase, yaw = st.signals, st.phase, st.head_yaw
        features = _eye_features(0.45, 0.35, gaze=-0.05)
        features |= {
            "eye_r2": (0.85, 0.15, 0.8),
            "eye_l2": (-0.85, 0.15, 0.8),
            "pupil_r2": (0.8, 0.12, 0.87),
            "pupil_l2": (-0.8, 0.12, 0.87),
        }
        _face(joints, "thorax", p["head_r"], yaw, features)
        for s, side, offset in (("_r", 1.0, 0.0), ("_l", -1.0, np.pi)):
            lift = sig[f"raise{s}"]
            swing = 1.2 + 0.9 * lift + sig["wave_amp"] * (0.3 + lift) * np.sin(phase["arms"] + offset)
            base = joints["thorax"] + p["head_r"] * _direction(yaw + side * 0.6, -0.2) * 0.8
            joints[f"claw_base{s}"] = base
            joints[f"claw_mid{s}"] = base + 0.5 * p["claw"] * _limb_dir(swing, 0.35, side)
            joints[f"claw_tip{s}"] = joints[f"claw_mid{s}"] + 0.5 * p["claw"] * _limb_dir(swing + 0.7, 0.2, side)
            joints[f"claw_pincer{s}"] = joints[f"claw_tip{s}"] + 0.3 * p["claw"] * _limb_dir(swing + 1.6, 0.2, side)
            joints[f"antenna{s}"] = joints["thorax"] + 0.85 * p["head_r"] * _direction(yaw + side * 0.35, 0.8)
            joints[f"antenna_tip{s}"] = joints[f"antenna{s}"] + 1.8 * p["head_r"] * _direction(yaw + side * 0.5, 1.0)
        joints["bow_r"] = joints["thorax"] + p["head_r"] * _direction(yaw + 0.5, 1.1)
        joints["bow_l"] = joints["thorax"] + p["head_r"] * _direction(yaw - 0.5, 1.1)


# ---------------------------------------------------------------------------------------------------
# Registry and sampling
# ---------------------------------------------------------------------------------------------------

BODY_PLANS: dict[str, BodyPlan] = {
    plan.name: plan for plan in (Humanoid(), Quadruped(), Bird(), Serpent(), Blob(), ManyLimbed())
}
PLAN_NAMES = tuple(BODY_PLANS)


def sample_character(rng: np.random.Generator, plan: str | None = None) -> Character:
    """A random character of `plan` (random when None)."""
    plan = plan or str(rng.choice(PLAN_NAMES))
    body = BODY_PLANS[plan]
    height = float(rng.uniform(*body.size_range))
    proportions = body.proportions(rng)
    colours = sample_colours(rng, plan)
    pattern, scale, outline = sample_looks(rng)
    count = int(rng.integers(0, min(2, len(body.accessories)) + 1))
    chosen = rng.choice(len(body.accessories), size=count, replace=False) if count else []
    accessories = tuple(sorted(body.accessories[int(i)] for i in chosen))
    if plan == "humanoid" and "hat" not in accessories and rng.uniform() < 0.6:
        accessories = tuple(sorted(accessories + ("hair",))) if "hair" not in accessories else accessories
    return Character(plan, height, proportions, colours, pattern, scale, outline, accessories)
