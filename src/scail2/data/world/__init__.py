"""A procedural 2D character world: body plans, motions, scenes, and an anti-aliased renderer with exact masks.

Everything is plain numpy and deterministic given a `numpy.random.Generator`; see `scail2.data.pairs` for how
pairs of videos are built from it.
"""

from scail2.data.world.character import TAG_BODY, TAG_FACE, TAG_LIMB_END, Character, PartSpec
from scail2.data.world.framing import WORLD_PRESETS, WorldOptions, closeup_camera, travelling, world_scene
from scail2.data.world.motion import LIMB_GROUPS, MOTION_KINDS, Motion, MotionState, evaluate_motion, sample_motion
from scail2.data.world.plans import BODY_PLANS, PLAN_NAMES, sample_character
from scail2.data.world.render import Actor, Placement, Rendered, actor_batches, pose_actor, render_video
from scail2.data.world.scene import Camera, Scene, sample_camera, sample_scene

__all__ = [
    "BODY_PLANS",
    "LIMB_GROUPS",
    "MOTION_KINDS",
    "PLAN_NAMES",
    "WORLD_PRESETS",
    "TAG_BODY",
    "TAG_FACE",
    "TAG_LIMB_END",
    "Actor",
    "Camera",
    "Character",
    "Motion",
    "MotionState",
    "PartSpec",
    "Placement",
    "Rendered",
    "Scene",
    "actor_batches",
    "evaluate_motion",
    "pose_actor",
    "render_video",
    "sample_camera",
    "sample_character",
    "sample_motion",
    "sample_scene",
    "WorldOptions",
    "closeup_camera",
    "travelling",
    "world_scene",
]
