"""World options: the defaults leave pairs as they were; the close-up world frames characters 1.8-2x larger,
follows them, plainer scenes, travel across the frame and in depth, entering or leaving; JSON round trips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scail2.data.pairs import ProceduralPairGenerator, SynthConfig, driving_skeleton, target_plate
from scail2.data.world import WORLD_PRESETS, Camera, Placement, WorldOptions
from scail2.data.world.scene import plain_scene
from scail2.errors import Scail2Error
from scail2.eval.metrics import dilate, identity_tracks

SIZE = dict(height=128, width=128, frames=9)


def _heights(config: SynthConfig, count: int) -> list[float]:
    generator = ProceduralPairGenerator(config)
    samples = [generator.generate(i) for i in range(count)]
    return [float(np.nanmedian(identity_tracks(s.driving_ids, 1)[0, :, 2])) for s in samples], samples


def test_default_options_keep_the_config_json_and_the_pixels():
    plain = SynthConfig(seed=4, **SIZE)
    explicit = SynthConfig(seed=4, world=WorldOptions(), **SIZE)
    assert "world" not in plain.to_json() and plain.to_json() == explicit.to_json()
    a, b = ProceduralPairGenerator(plain).generate(3), ProceduralPairGenerator(explicit).generate(3)
    assert np.array_equal(a.target, b.target) and a.metadata == b.metadata
    assert "track" not in a.metadata["camera"] and "lane_rate" not in a.metadata["characters"][0]["placement"]


def test_closeup_world_frames_characters_larger_and_follows_them():
    wide, _ = _heights(SynthConfig(seed=11, tasks=("animate",), **SIZE), 6)
    closeup = SynthConfig(seed=11, tasks=("animate",), world=WORLD_PRESETS["closeup"], **SIZE)
    near, samples = _heights(closeup, 6)
    assert np.median(near) > 1.5 * np.median(wide)
    assert closeup.to_json()["world"]["framing"] == "closeup"
    for sample in samples:
        camera = Camera.from_json(sample.metadata["camera"])
        assert camera.kind == "closeup" and Camera.from_json(camera.to_json()) == camera
        assert (sample.driving_ids > 0).any() and (sample.reference_ids > 0).any()
        plate = target_plate(sample.metadata)  # the metadata re-renders the same empty scene and skeleton
        outside = ~dilate(sample.target_ids > 0, 2)  # the anti-aliased rim lies just outside the exact mask
        assert np.array_equal(plate[outside], sample.target[outside])
        assert driving_skeleton(sample.metadata).frames.shape == sample.driving.shape


def test_travel_moves_in_depth_and_plain_scenes_have_no_props():
    options = dataclasses.replace(WORLD_PRESETS["closeup"], travel=1.0, enter_leave=0.0, plain_background=1.0)
    sample = ProceduralPairGenerator(SynthConfig(seed=2, tasks=("animate",), world=options, **SIZE)).generate(0)
    placement = Placement.from_json(sample.metadata["characters"][0]["placement"])
    assert placement.moves_in_depth and Placement.from_json(placement.to_json()) == placement
    lanes = placement.lanes(np.linspace(0, 1, 9))
    assert lanes.min() >= 0 and lanes.max() <= 1 and np.ptp(lanes) > 0
    assert sample.metadata["motions"][0] in ("walk", "run")
    assert sample.metadata["driving_scene"]["props"] == [] and sample.metadata["reference_scene"]["props"] == []
    scene = plain_scene(np.random.default_rng(0))
    assert scene.sky_top == scene.sky_bottom and scene.ground_texture == "plain"


def test_entering_characters_start_or_end_outside_the_view():
    options = dataclasses.replace(WORLD_PRESETS["closeup"], travel=1.0, enter_leave=1.0, travel_speed=(3.0, 3.0))
    generator = ProceduralPairGenerator(SynthConfig(seed=5, tasks=("animate",), world=options, **SIZE))
    partial = 0
    for index in range(4):
        ids = generator.generate(index).driving_ids > 0
        area = ids.reshape(ids.shape[0], -1).sum(1)
        partial += min(area[0], area[-1]) < 0.5 * area.max()  # hidden or half out at one end of the clip
    assert partial >= 2


def test_bad_world_options_are_refused():
    with pytest.raises(Scail2Error, match="framing"):
        WorldOptions(framing="tele")
    with pytest.raises(Scail2Error, match="probability"):
        WorldOptions(travel=2.0)
    with pytest.raises(Scail2Error, match="ground textures"):
        WorldOptions(ground_textures=("lava",))
    assert WorldOptions.from_json(WORLD_PRESETS["closeup"].to_json()) == WORLD_PRESETS["closeup"]
