"""Stick-figure re-renders of procedural pairs (the skeleton-driven baseline), target plates, and the latent cache
conditioned on skeletons instead of driving frames."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from scail2.data.latent_cache import CacheEncoder, LatentCache, build_cache
from scail2.data.pairs import (
    ModelPairGenerator,
    ProceduralPairGenerator,
    SynthConfig,
    driving_skeleton,
    target_plate,
)
from scail2.data.shards import write_dataset
from scail2.data.world import (
    BODY_PLANS,
    Actor,
    Camera,
    Placement,
    render_video,
    sample_character,
    sample_motion,
    sample_scene,
)
from scail2.data.world.render import bone_colour
from scail2.errors import Scail2Error
from tests.data.helpers import toy_animate, toy_clip

CONFIG = SynthConfig(height=40, width=56, frames=5, seed=3)  # index 3 is a three-character pair


def _near(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    """`mask` [..., H, W] grown by `pixels` in all eight directions (pixels within that Chebyshev distance)."""
    out = mask.copy()
    for _ in range(pixels):
        padded = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(1, 1), (1, 1)])
        height, width = out.shape[-2:]
        out = np.stack([padded[..., r : r + height, c : c + width] for r in range(3) for c in range(3)]).any(0)
    return out


def _samples(config: SynthConfig = CONFIG, count: int = 6) -> list:
    generator = ProceduralPairGenerator(config)
    return [generator.generate(index) for index in range(count)]


def _first(config: SynthConfig, predicate, limit: int = 40):
    generator = ProceduralPairGenerator(config)
    return next(s for s in map(generator.generate, range(limit)) if predicate(s))


# ------------------------------------------------------------------------------------------------------------
# Stick figures
# ------------------------------------------------------------------------------------------------------------


def test_skeleton_marks_every_driving_character_on_its_own_body():
    samples = _samples()
    assert max(len(s.metadata["characters"]) for s in samples) == 3
    for sample in samples:
        skeleton = driving_skeleton(sample.metadata)
        assert skeleton.frames.shape == sample.driving.shape and skeleton.ids.shape == sample.driving_ids.shape
        assert set(np.unique(skeleton.ids[0])) == set(np.unique(sample.driving_ids[0]))
        for identity in np.unique(sample.driving_ids[0])[1:]:
            bones = skeleton.ids == identity
            inside = bones & _near(sample.driving_ids == identity, 2)
            assert inside.sum() >= 0.9 * bones.sum(), (sample.key, identity)


def test_stick_figures_are_thinner_than_the_bodies():
    """At 128 px bones are 3 pixels across (the floor); at 40x56 that floor makes them wider than the bodies."""
    for sample in _samples(SynthConfig(height=128, width=96, frames=2, seed=3), count=4):
        skeleton = driving_skeleton(sample.metadata)
        assert 0 < (skeleton.ids > 0).mean() < 0.9 * (sample.driving_ids > 0).mean(), sample.key


def test_skeleton_keeps_the_driving_background():
    for sample in _samples():
        skeleton = driving_skeleton(sample.metadata)
        background = ~_near((sample.driving_ids > 0) | (skeleton.ids > 0), 1)  # off anti-aliased edges
        assert background.mean() > 0.5
        np.testing.assert_array_equal(skeleton.frames[background], sample.driving[background])
        assert not np.array_equal(skeleton.frames, sample.driving)


def test_bone_colours_depend_on_the_bone_not_the_character():
    rng = np.random.default_rng(0)
    for plan in ("humanoid", "quadruped"):
        first, second = sample_character(rng, plan), sample_character(rng, plan)
        colours = [{(s.a, s.b): bone_colour(s) for s in BODY_PLANS[plan].parts(c)} for c in (first, second)]
        shared = colours[0].keys() & colours[1].keys()
        assert shared and all(colours[0][bone] == colours[1][bone] for bone in shared)
        assert len(set(colours[0].values())) > len(colours[0]) // 2  # bones are told apart by colour
    # the same skeleton in other looks renders to the same pixels; the characters themselves do not
    body = sample_character(rng, "humanoid")
    other = sample_character(rng, "humanoid")
    restyled = dataclasses.replace(body, colours=other.colours, pattern=other.pattern, outline=other.outline + 0.01)
    scene, motion = sample_scene(rng), sample_motion(rng, 0.25, fps=16.0)
    film = lambda character, skeleton: render_video(  # noqa: E731
        scene, Camera(0.0, 1.0, 0.0, 0.0), [Actor(character, motion, Placement(0.0), 2)], 40, 56, 4, skeleton=skeleton
    )
    renders = {
        (look, skeleton): film(character, skeleton)
        for look, character in (("own", body), ("other", restyled))
        for skeleton in (False, True)
    }
    assert not np.array_equal(renders["own", False].frames, renders["other", False].frames)
    np.testing.assert_array_equal(renders["own", True].frames, renders["other", True].frames)
    np.testing.assert_array_equal(renders["own", True].ids, renders["other", True].ids)
    assert set(np.unique(renders["own", True].ids)) == {0, 2}


# ------------------------------------------------------------------------------------------------------------
# Target plates
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["animate", "replace"])
def test_plate_is_the_target_scene_without_characters(task):
    sample = _first(
        SynthConfig(height=40, width=56, frames=5, seed=1, tasks=(task,), same_identity=0.0), lambda s: True
    )
    plate = target_plate(sample.metadata)
    assert plate.shape == sample.target.shape and plate.dtype == np.uint8
    background = ~_near(sample.target_ids > 0, 1)
    np.testing.assert_array_equal(plate[background], sample.target[background])
    assert not np.array_equal(plate, sample.target)  # the characters are gone
    driving_background = ~_near(sample.driving_ids > 0, 1)
    difference = np.abs(plate.astype(int) - sample.driving.astype(int))[driving_background].mean()
    if task == "animate":  # the reference's scene, filmed with the driving camera
        assert difference > 10
    else:  # the driving scene
        assert difference == 0


# ------------------------------------------------------------------------------------------------------------
# Latent cache on skeletons
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    from tests.pipelines.components import tiny_vae

    torch.manual_seed(0)
    return tiny_vae()


def test_skeleton_cache_changes_only_the_driving_stream(vae):
    sample = ProceduralPairGenerator(SynthConfig(height=32, width=48, frames=5, seed=4)).generate(0)
    frames = CacheEncoder(vae).encode(sample)
    skeleton_encoder = CacheEncoder(vae, driving="skeleton")
    skeleton = skeleton_encoder.encode(sample)
    assert frames.keys() == skeleton.keys()
    for name in ("target_latents", "ref_latents", "ref_masks", "detail_masks"):
        torch.testing.assert_close(skeleton[name], frames[name], rtol=0, atol=0)
    for name in ("pose_latents", "driving_masks"):
        assert skeleton[name].shape == frames[name].shape and not torch.equal(skeleton[name], frames[name])
    assert "driving" not in CacheEncoder(vae).describe() and skeleton_encoder.describe()["driving"] == "skeleton"


def test_skeleton_cache_records_its_driving_source_and_is_not_mixed_with_frames(vae, tmp_path):
    data = tmp_path / "synth"
    config = SynthConfig(height=32, width=48, frames=5, seed=4)
    assert write_dataset(ProceduralPairGenerator(config), data, 2, shard_size=2, progress=False).complete
    out = tmp_path / "cache"
    assert build_cache(data, out, CacheEncoder(vae, driving="skeleton"), progress=False)
    assert json.loads((out / "meta.json").read_text())["encoders"]["driving"] == "skeleton"
    cached = LatentCache(out)[0]
    direct = CacheEncoder(vae, driving="skeleton").encode(ProceduralPairGenerator(config).generate(0))
    torch.testing.assert_close(cached.tensors["pose_latents"], direct["pose_latents"])
    with pytest.raises(Scail2Error, match="other data or encoders"):
        build_cache(data, out, CacheEncoder(vae), progress=False)


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------


def test_unknown_driving_source_is_refused(vae):
    with pytest.raises(Scail2Error, match="'pose'.*frames, skeleton"):
        CacheEncoder(vae, driving="pose")


def test_metadata_that_cannot_be_re_rendered_is_refused():
    metadata = ProceduralPairGenerator(CONFIG).generate(0).metadata
    without = {k: v for k, v in metadata.items() if k != "characters"}
    with pytest.raises(Scail2Error, match="sample 0: metadata lacks 'characters'.*procedural pairs"):
        driving_skeleton(without)
    with pytest.raises(Scail2Error, match="sample 0: metadata lists no characters"):
        driving_skeleton({**metadata, "characters": []})
    assert target_plate(without).shape == (CONFIG.frames, CONFIG.height, CONFIG.width, 3)  # needs no characters
    model_pair = ModelPairGenerator([toy_clip()], toy_animate).generate(0).metadata  # a real clip: no world
    for render in (driving_skeleton, target_plate):
        with pytest.raises(Scail2Error, match="procedural pairs"):
            render(model_pair)


@pytest.mark.parametrize("key", ["height", "mode"])
def test_metadata_without_size_or_mode_is_a_clear_error(key):
    metadata = ProceduralPairGenerator(CONFIG).generate(0).metadata
    with pytest.raises(Scail2Error):
        target_plate({k: v for k, v in metadata.items() if k != key})
