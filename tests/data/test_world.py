"""The procedural world: motions, retargeting across body plans, and the rasteriser's exact masks."""

from __future__ import annotations

import numpy as np
import pytest

from scail2.data.world import (
    BODY_PLANS,
    PLAN_NAMES,
    Actor,
    Camera,
    Placement,
    actor_batches,
    evaluate_motion,
    pose_actor,
    render_video,
    sample_character,
    sample_motion,
    sample_scene,
)
from scail2.data.world.plans import probe_angle
from scail2.data.world.raster import Canvas, PartBatch, draw_parts
from scail2.data.world.scene import Backdrop
from tests.data.reference_raster import paint

HEIGHT, WIDTH, FRAMES = 40, 56, 5  # unequal on purpose


# ---------------------------------------------------------------------------------------------------
# Motions
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["walk", "jump", "crouch", "mix"])
def test_motion_frames_do_not_depend_on_clip_length_and_are_smooth(kind):
    motion = sample_motion(np.random.default_rng(7), 2.0, kind)
    short, long = evaluate_motion(motion, 9), evaluate_motion(motion, 33)
    np.testing.assert_array_equal(short.root_x, long.root_x[:9])
    np.testing.assert_array_equal(short.phase["legs"], long.phase["legs"][:9])
    # Smooth in time: no signal jumps by more than a small step between frames at 16 fps.
    for name in ("leg_amp", "crouch", "raise_r", "speed"):
        assert np.abs(np.diff(long.signals[name])).max() < 0.35
    assert np.abs(np.diff(long.root_x)).max() < 0.06


def test_motion_json_round_trip():
    motion = sample_motion(np.random.default_rng(1), 1.5, "mix")
    again = type(motion).from_json(motion.to_json())
    np.testing.assert_array_equal(evaluate_motion(motion, 17).yaw, evaluate_motion(again, 17).yaw)


@pytest.mark.parametrize("group,kind", [("legs", "walk"), ("arms", "wave")])
def test_same_motion_gives_same_root_and_limb_phases_on_every_body_plan(group, kind):
    motion = sample_motion(np.random.default_rng(3), 2.0, kind)
    placement = Placement(0.1, 0.3)
    roots, phases = [], []
    for i, plan in enumerate(PLAN_NAMES):
        posed = pose_actor(Actor(sample_character(np.random.default_rng(i), plan), motion, placement), 33)
        roots.append(posed.root)
        phases.append(posed.state.phase[group])
        # The plan's probe limb really moves with that phase (measured from the joints, not reported).
        a, b, plane, offset = BODY_PLANS[plan].probes[group]
        angle = np.unwrap(probe_angle(posed.joints, a, b, plane))
        correlation = np.corrcoef(angle - angle.mean(), np.sin(posed.state.phase[group] + offset))[0, 1]
        assert correlation > 0.95, (plan, correlation)
    for root, phase in zip(roots[1:], phases[1:]):
        np.testing.assert_array_equal(root, roots[0])
        np.testing.assert_array_equal(phase, phases[0])
    if kind == "walk":
        assert abs(roots[0][-1, 0] - roots[0][0, 0]) > 0.1  # it does travel


# ---------------------------------------------------------------------------------------------------
# Rasteriser: masks exactly where characters are drawn, in depth order
# ---------------------------------------------------------------------------------------------------


def _crowd(seed: int, lanes=(0.7, 0.0, 0.35)) -> list[Actor]:
    """Three overlapping characters (different plans) close together in different lanes."""
    rng = np.random.default_rng(seed)
    plans = ["quadruped", "humanoid", "multileg"]
    return [
        Actor(sample_character(rng, plan), sample_motion(rng, 1.0, "walk"), Placement(0.05 * k, lane), k + 1)
        for k, (plan, lane) in enumerate(zip(plans, lanes))
    ]


def _frame_batches(actors: list[Actor], camera: Camera, frame: int) -> PartBatch:
    """The parts of one frame, back to front, as a single-frame batch."""
    views = camera.views(np.arange(FRAMES) / 16.0)
    ordered = sorted(actors, key=lambda a: (-a.placement.lane, a.identity))
    video = PartBatch.concatenate([actor_batches(pose_actor(a, FRAMES), views, HEIGHT, WIDTH) for a in ordered])
    parts = video.take(np.flatnonzero(video.frame == frame))
    parts.frame = np.zeros_like(parts.frame)
    return parts


@pytest.mark.parametrize("frame", [0, 4])
def test_rasteriser_matches_an_independent_painter(frame):
    camera = Camera(0.0, 1.3, 0.1, 0.2)
    parts = _frame_batches(_crowd(11), camera, frame)
    background = np.random.default_rng(0).uniform(0, 255, (HEIGHT, WIDTH, 3)).astype(np.float32)
    canvas = Canvas(background.copy(), np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH), np.uint8))
    draw_parts(canvas, parts)
    expected_rgb, expected_ids, expected_detail, touched = paint(background, parts)
    np.testing.assert_array_equal(canvas.ids, expected_ids)
    np.testing.assert_array_equal(canvas.detail, expected_detail)
    np.testing.assert_allclose(canvas.rgb, expected_rgb, atol=2e-3)
    # Every identity is drawn, and colour changed only where some part covers the pixel.
    assert set(np.unique(canvas.ids)) == {0, 1, 2, 3}
    assert not (canvas.rgb != background)[~touched].any()
    assert (canvas.ids > 0).sum() < touched.sum()  # anti-aliased fringes are outside the mask


def test_nearer_lane_wins_where_characters_overlap():
    scene = sample_scene(np.random.default_rng(2))
    camera = Camera(0.0, 1.2, 0.0, 0.0)
    for lanes, front in (((0.7, 0.0), 2), ((0.0, 0.7), 1)):
        actors = _crowd(11, lanes)  # quadruped (identity 1) and humanoid (identity 2)
        together = render_video(scene, camera, actors, HEIGHT, WIDTH, 1).ids[0]
        alone = [render_video(scene, camera, [actor], HEIGHT, WIDTH, 1).ids[0] > 0 for actor in actors]
        overlap = alone[0] & alone[1]
        assert overlap.sum() > 10
        assert (together[overlap] == front).all()
        np.testing.assert_array_equal(together[alone[0] & ~alone[1]], 1)
        np.testing.assert_array_equal(together[alone[1] & ~alone[0]], 2)
        np.testing.assert_array_equal(together[~alone[0] & ~alone[1]], 0)


def test_static_camera_background_is_an_exact_crop_and_zoom_stays_close():
    scene = sample_scene(np.random.default_rng(4))
    times = np.arange(3) / 16.0
    static = Backdrop(scene, *Camera(0.2, 1.0, 0.0, 0.0).views(times), HEIGHT, WIDTH)
    np.testing.assert_array_equal(static.frame(0), static.frame(2))
    moving = Backdrop(scene, *Camera(0.2, 1.0, 0.0, 0.001).views(times), HEIGHT, WIDTH)
    assert np.abs(moving.frame(0) - static.frame(0)).mean() < 2.0


def test_every_body_plan_renders_visible_and_deterministic():
    scene = sample_scene(np.random.default_rng(5))
    for i, plan in enumerate(PLAN_NAMES):
        rng = np.random.default_rng(100 + i)
        actor = Actor(sample_character(rng, plan), sample_motion(rng, 0.5, "dance"), Placement(0.0, 0.0))
        first = render_video(scene, Camera(0.0, 1.0, 0.0, 0.0), [actor], HEIGHT, WIDTH, 3)
        again = render_video(scene, Camera(0.0, 1.0, 0.0, 0.0), [actor], HEIGHT, WIDTH, 3)
        assert first.frames.tobytes() == again.frames.tobytes() and first.ids.tobytes() == again.ids.tobytes()
        coverage = (first.ids > 0).mean()
        assert 0.01 < coverage < 0.6, (plan, coverage)
        assert (first.detail[first.ids == 0] == 0).all()
        assert (first.detail == 2).any(), plan  # every plan has a face/head region
