"""Bias-aware preference pairs: the builder, its shards, the preference latent cache, and resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scail2.conditioning import encode_video
from scail2.data.latent_cache import CacheEncoder, LatentCache
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.preference import (
    LOSER_FIELD,
    DriftSettings,
    PipelineAnimator,
    PreferenceDataset,
    PreferencePairBuilder,
    ProceduralAnimator,
    build_preference_cache,
    call_seed,
    check_preference_cache,
    encode_preference_sample,
    read_preference_shard,
    write_preference_dataset,
)
from scail2.data.shards import MotionPairDataset, write_dataset
from scail2.errors import Scail2Error

# 32x48 pixels, 5 frames: latents [16, 2, 4, 6], driving latents [16, 2, 2, 3]; 3 pairs in shards of 2 + 1.
SOURCE = SynthConfig(height=32, width=48, frames=5, seed=4)
NUM_PAIRS, SHARD_SIZE = 3, 2


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source")
    assert write_dataset(ProceduralPairGenerator(SOURCE), out, NUM_PAIRS, shard_size=2, progress=False).complete
    return out


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preference")
    report = write_preference_dataset(source, out, ProceduralAnimator(seed=1), shard_size=SHARD_SIZE, progress=False)
    assert (report.written_shards, report.pairs_written, report.complete) == (2, NUM_PAIRS, True)
    return out


@pytest.fixture(scope="module")
def encoder() -> CacheEncoder:
    from tests.pipelines.components import tiny_vae

    torch.manual_seed(0)
    return CacheEncoder(tiny_vae())


@pytest.fixture(scope="module")
def cache(built, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    assert build_preference_cache(built, out, encoder, progress=False)
    return out


# ------------------------------------------------------------------------------------------------------------
# Pairs
# ------------------------------------------------------------------------------------------------------------


def test_builder_is_deterministic_per_seed(source, built, tmp_path):
    again = write_preference_dataset(
        source, tmp_path / "again", ProceduralAnimator(seed=1), shard_size=SHARD_SIZE, progress=False
    )
    assert again.complete and _files(tmp_path / "again") == _files(built)
    other = tmp_path / "other"
    write_preference_dataset(source, other, ProceduralAnimator(seed=2), shard_size=SHARD_SIZE, progress=False)
    for a, b in zip(PreferenceDataset(built), PreferenceDataset(other)):
        assert not np.array_equal(a.loser, b.loser) and not np.array_equal(a.pair.target, b.pair.target)
        np.testing.assert_array_equal(a.pair.driving, b.pair.driving)


def test_losers_differ_from_winners_and_drift_further_from_the_drift_free_result(source, built):
    drift_free = ProceduralAnimator(seed=1, drift=DriftSettings(displacement=0, blur=0, colour=0))
    winner_errors, loser_errors = [], []
    for pair, original in zip(PreferenceDataset(built), MotionPairDataset(source)):
        sample, winner = pair.pair, pair.pair.target
        for name in ("reference", "reference_ids", "driving", "driving_ids", "target_ids", "target_detail"):
            np.testing.assert_array_equal(getattr(sample, name), getattr(original, name), err_msg=name)
        assert pair.loser.shape == winner.shape == original.target.shape and pair.loser.dtype == np.uint8
        # The drift acts on the characters: measured where they are, so small characters meet the same bar.
        character = sample.target_ids > 0
        assert _mean_abs(pair.loser[character], winner[character]) > 3.0
        assert pair.info["source_key"] == original.key and pair.info["driving_drift"] > 0.3
        ideal = drift_free(
            original.reference, original.reference_mask(), original.driving, original.driving_mask(), original.mode
        )
        winner_errors.append(_mean_abs(winner[character], ideal[character]))
        loser_errors.append(_mean_abs(pair.loser[character], ideal[character]))
    pairs = list(zip(winner_errors, loser_errors))
    assert all(loser > winner + 0.5 for winner, loser in pairs), pairs


def test_the_loser_comes_from_a_twice_synthesised_driving_video():
    sample = ProceduralPairGenerator(SOURCE).generate(0)
    calls = []

    def recording(reference, reference_mask, driving, driving_masks, mode):
        calls.append((reference, driving, mode))
        return ProceduralAnimator(seed=3)(reference, reference_mask, driving, driving_masks, mode)

    pair = PreferencePairBuilder(recording).build(sample)
    (own, drive0, mode0), (ref1, drive1, mode1), (ref2, drive2, mode2) = calls
    frame = pair.info["resynthesis_frame"]
    np.testing.assert_array_equal(own, sample.driving[frame])  # the driving character's own appearance
    assert mode0 == "replace" and mode1 == mode2 == sample.mode
    assert drive0 is sample.driving and drive1 is sample.driving
    np.testing.assert_array_equal(ref1, sample.reference)
    np.testing.assert_array_equal(ref2, sample.reference)
    assert not np.array_equal(drive2, sample.driving)  # the re-synthesised driving video
    np.testing.assert_array_equal(
        pair.pair.target,
        ProceduralAnimator(seed=3)(
            sample.reference, sample.reference_mask(), sample.driving, sample.driving_mask(), sample.mode
        ),
    )


def test_the_procedural_animator_reads_the_older_mode_words_alike():
    sample = ProceduralPairGenerator(SynthConfig(height=32, width=48, frames=5, seed=6)).generate(0)
    animate = ProceduralAnimator(seed=2)
    args = (sample.reference, sample.reference_mask(), sample.driving, sample.driving_mask())
    np.testing.assert_array_equal(animate(*args, "animation"), animate(*args, "animate"))
    np.testing.assert_array_equal(animate(*args, "replacement"), animate(*args, "replace"))


def test_a_pipeline_works_as_the_animator():
    from scail2.conditioning import AnimationInputs
    from scail2.pipelines.pipeline_scail2 import SamplingSettings
    from scail2.preprocess.resize import image_to_model
    from tests.pipelines.components import tiny_pipeline

    # One frame at 32x32 keeps the tiny VAE (slow on CPU) to a second per call.
    sample = ProceduralPairGenerator(SynthConfig(height=32, width=32, frames=1, seed=6, tasks=("replace",))).generate(1)
    pipeline = tiny_pipeline(seed=0, text=False, image=False)
    settings = SamplingSettings(sampler="euler", steps=1, guidance_scale=1.0)
    animate = PipelineAnimator(pipeline, settings, seed=7)
    frames = animate(sample.reference, sample.reference_mask(), sample.driving, sample.driving_mask(), sample.mode)
    assert frames.shape == sample.driving.shape and frames.dtype == np.uint8
    inputs = AnimationInputs(
        image_to_model(sample.reference, (32, 32)),
        image_to_model(sample.reference_mask(), (32, 32)),
        torch.from_numpy(sample.driving),
        torch.from_numpy(sample.driving_mask()),
        mode="replace",
    )
    seed = call_seed(7, sample.reference, sample.reference_mask(), "replace")
    np.testing.assert_array_equal(frames, pipeline(inputs, settings, seed=seed, progress=False).frames.numpy())
    assert animate.describe()["settings"]["steps"] == 1 and animate.describe()["animator"] == "pipeline"


# ------------------------------------------------------------------------------------------------------------
# The preference latent cache
# ------------------------------------------------------------------------------------------------------------


def test_preference_cache_reads_back_through_latent_cache(built, cache, encoder):
    latents = LatentCache(cache)
    check_preference_cache(latents)
    pairs = list(PreferenceDataset(built))
    assert len(latents) == NUM_PAIRS
    for index, pair in enumerate(pairs):
        record = latents[index]
        assert record.key == pair.pair.key and record.mode == pair.pair.mode
        assert record.tensors[LOSER_FIELD].shape == record.tensors["target_latents"].shape == (16, 2, 4, 6)
        assert record.tensors["detail_masks"].shape == (2, 2, 4, 6)
    loser = encode_video(encoder.codec, torch.from_numpy(pairs[-1].loser.copy()))[0]
    torch.testing.assert_close(latents[NUM_PAIRS - 1].tensors[LOSER_FIELD], loser, rtol=0, atol=0)
    winner = encode_video(encoder.codec, torch.from_numpy(pairs[-1].pair.target.copy()))[0]
    torch.testing.assert_close(latents[NUM_PAIRS - 1].tensors["target_latents"], winner, rtol=0, atol=0)


def test_preference_caches_are_latent_caches_of_the_current_version(cache, tmp_path):
    latents = LatentCache(cache)
    assert latents.version == 2 and json.loads((cache / "manifest.json").read_text())["version"] == 2
    assert latents.meta["preference"] == {"format": "scail2-preference", "version": 1, "loser_field": LOSER_FIELD}
    assert all("target_masks" in latents[i].tensors for i in range(len(latents)))
    newer = tmp_path / "newer"
    shutil.copytree(cache, newer)
    meta = json.loads((newer / "meta.json").read_text())
    (newer / "meta.json").write_text(json.dumps({**meta, "preference": {**meta["preference"], "version": 5}}))
    with pytest.raises(Scail2Error, match=r"\(its preference entry\) has preference format version 5; this scail2 "):
        check_preference_cache(LatentCache(newer))


def test_a_plain_cache_is_refused_by_the_dpo_check(cache, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(cache, plain)
    meta = json.loads((plain / "meta.json").read_text())
    del meta["preference"]
    (plain / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Scail2Error, match="latent cache without losers"):
        check_preference_cache(LatentCache(plain))


# ------------------------------------------------------------------------------------------------------------
# Resuming and bad input
# ------------------------------------------------------------------------------------------------------------


class _DiesAfter:
    """Wraps a callable and raises KeyboardInterrupt (a crash or Ctrl-C) on call number `calls` + 1."""

    def __init__(self, inner, calls: int):
        self.inner, self.calls = inner, calls

    def describe(self) -> dict:
        return self.inner.describe()

    def __call__(self, *args):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.inner(*args)


def test_a_killed_preference_build_resumes_to_identical_bytes(source, built, tmp_path):
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # 3 calls per pair: dies on the second shard's only pair
        write_preference_dataset(
            source, out, _DiesAfter(ProceduralAnimator(seed=1), 7), shard_size=SHARD_SIZE, progress=False
        )
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "shard-000000.tar"]
    (out / "shard-000001.tar.partial").write_bytes(b"left by a SIGKILL")
    report = write_preference_dataset(source, out, ProceduralAnimator(seed=1), shard_size=SHARD_SIZE, progress=False)
    assert (report.written_shards, report.skipped_shards, report.pairs_written, report.complete) == (1, 1, 1, True)
    assert _files(out) == _files(built)


class _EncoderDiesAfter:
    def __init__(self, inner: CacheEncoder, samples: int):
        self.inner, self.samples = inner, samples
        self.codec, self.dtype, self.text_encoder = inner.codec, inner.dtype, inner.text_encoder

    def describe(self) -> dict:
        return self.inner.describe()

    def encode(self, sample):
        if self.samples == 0:
            raise KeyboardInterrupt
        self.samples -= 1
        return self.inner.encode(sample)


def test_a_killed_cache_build_resumes(built, cache, encoder, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_preference_cache(built, out, _EncoderDiesAfter(encoder, 2), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["cache-00000.json", "cache-00000.tar", "meta.json"]
    assert build_preference_cache(built, out, encoder, progress=False)
    assert _files(out) == _files(cache)


def test_bad_input_is_refused_and_leaves_nothing_half_written(source, built, tmp_path):
    with pytest.raises(Scail2Error, match=r"differs in animator"):
        write_preference_dataset(source, built, ProceduralAnimator(seed=5), shard_size=SHARD_SIZE, progress=False)

    def short(reference, reference_mask, driving, driving_masks, mode):
        return driving[:-1]

    out = tmp_path / "short"
    with pytest.raises(Scail2Error, match=r"sample 000000000: the animator returned uint8\[4, 32, 48, 3\]"):
        write_preference_dataset(source, out, short, shard_size=SHARD_SIZE, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"]
    with pytest.raises(Scail2Error, match="is not a scail2 preference dataset"):
        build_preference_cache(source, tmp_path / "cache", CacheEncoder.__new__(CacheEncoder), progress=False)
    with pytest.raises(Scail2Error, match="animation mode must be one of animate, replace, got 'dance'"):
        sample = ProceduralPairGenerator(SOURCE).generate(0)
        ProceduralAnimator()(sample.reference, sample.reference_mask(), sample.driving, sample.driving_mask(), "dance")


def test_unknown_sample_versions_are_refused(built, tmp_path):
    pair = next(iter(PreferenceDataset(built)))
    pair.info["version"] = 99
    import webdataset

    shard = tmp_path / "shard.tar"
    with webdataset.TarWriter(str(shard), encoder=False) as writer:
        writer.write(encode_preference_sample(pair))
    with pytest.raises(Scail2Error, match="has preference format version 99"):
        list(read_preference_shard(shard))
