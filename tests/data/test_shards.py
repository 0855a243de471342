"""Shards on disk: round trip, resumable and shardable writing, and refusal of bad shards."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from scail2.data.pairs import ModelPairGenerator, ProceduralPairGenerator, SynthConfig, target_plate
from scail2.data.shards import (
    MotionPairDataset,
    decode_sample,
    encode_sample,
    read_shard,
    resolve_sharding,
    webdataset_pipeline,
    write_dataset,
)
from scail2.errors import Scail2Error
from scail2.preprocess.palette import WHITE
from tests.data.helpers import toy_animate, toy_clip

CONFIG = SynthConfig(height=40, width=56, frames=5, seed=9)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _samples_equal(a, b) -> None:
    for name in (
        "reference",
        "reference_ids",
        "reference_detail",
        "driving",
        "driving_ids",
        "driving_detail",
        "target",
        "target_ids",
        "target_detail",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.key, a.task, a.mode, a.metadata) == (b.key, b.task, b.mode, json.loads(json.dumps(b.metadata)))


class _StopAfter:
    """A generator that dies at a given index, as a crash or Ctrl-C would."""

    def __init__(self, inner: ProceduralPairGenerator, stop: int):
        self.inner, self.stop = inner, stop

    def describe(self) -> dict:
        return self.inner.describe()

    def generate(self, index: int):
        if index == self.stop:
            raise KeyboardInterrupt
        return self.inner.generate(index)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted single-process run: 7 pairs in shards of 3."""
    out = tmp_path_factory.mktemp("uninterrupted")
    report = write_dataset(ProceduralPairGenerator(CONFIG), out, 7, shard_size=3, progress=False)
    assert report.complete and report.written_shards == 3
    return out


def test_encode_decode_round_trip_keeps_every_pixel_and_the_mode_palette():
    sample = ProceduralPairGenerator(CONFIG).generate(2)
    record = encode_sample(sample)
    _samples_equal(decode_sample(dict(record), "memory"), sample)
    mask = Image.open(io.BytesIO(record["reference_mask.png"]))
    background = tuple(np.asarray(mask.convert("RGB"))[sample.reference_ids == 0][0])
    assert mask.mode == "P" and background == (WHITE if sample.mode == "animate" else (0, 0, 0))


@pytest.mark.parametrize("stored,mode", [("animation", "animate"), ("replacement", "replace")])
def test_samples_stored_with_the_older_mode_words_read_back_in_the_current_ones(stored, mode):
    sample = ProceduralPairGenerator(SynthConfig(height=32, width=48, frames=5, seed=7, tasks=(mode,))).generate(0)
    record = encode_sample(sample)
    header = json.loads(record["json"])
    header["version"], header["mode"], header["metadata"]["mode"] = 1, stored, stored
    record["json"] = json.dumps(header).encode()
    decoded = decode_sample(record, "memory")
    assert decoded.mode == decoded.metadata["mode"] == mode
    np.testing.assert_array_equal(decoded.reference_mask(), sample.reference_mask())
    assert target_plate(decoded.metadata).shape == sample.target.shape


def test_written_dataset_reads_back(reference_run):
    dataset = MotionPairDataset(reference_run)
    assert len(dataset) == 7 and [p.name for p in dataset.shard_paths] == [f"shard-00000{i}.tar" for i in range(3)]
    generator = ProceduralPairGenerator(CONFIG)
    read = list(dataset)
    assert [s.key for s in read] == [f"{i:09d}" for i in range(7)]
    for sample in read:
        _samples_equal(sample, generator.generate(int(sample.key)))
    assert len(list(webdataset_pipeline(reference_run, shardshuffle=False))) == 7
    meta = json.loads((reference_run / "meta.json").read_text())
    assert meta["version"] == 2 and meta["generator"]["config"]["frames"] == 5


def test_interrupted_run_resumes_to_identical_bytes_with_any_worker_count(reference_run, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_dataset(_StopAfter(ProceduralPairGenerator(CONFIG), 4), tmp_path, 7, shard_size=3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "shard-000000.tar"]  # nothing half-written
    report = write_dataset(ProceduralPairGenerator(CONFIG), tmp_path, 7, shard_size=3, workers=2, progress=False)
    assert (report.written_shards, report.skipped_shards, report.pairs_written) == (2, 1, 4)
    assert _files(tmp_path) == _files(reference_run)


def test_killed_cli_run_resumes_to_identical_bytes(tmp_path):
    args = ["synth", "--num", "40", "--size", "32x64", "--frames", "9", "--seed", "5", "--shard-size", "2", "--quiet"]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "scail2.cli", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (killed / "shard-000001.tar").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()
    assert not (killed / "manifest.json").exists()
    from scail2.cli import main

    assert main([*args, "--out", str(killed)]) == 0
    assert not any(p.name.endswith(".partial") for p in killed.iterdir())
    whole = tmp_path / "whole"
    assert main([*args, "--out", str(whole), "--workers", "2"]) == 0
    assert _files(killed) == _files(whole)


def test_shards_split_across_machines_combine_into_the_same_dataset(reference_run, tmp_path):
    first = write_dataset(
        ProceduralPairGenerator(CONFIG), tmp_path, 7, shard_size=3, shard_index=0, num_shards=2, progress=False
    )
    assert not first.complete and not (tmp_path / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000000.tar", "shard-000002.tar"]
    second = write_dataset(
        ProceduralPairGenerator(CONFIG), tmp_path, 7, shard_size=3, shard_index=1, num_shards=2, progress=False
    )
    assert second.complete and _files(tmp_path) == _files(reference_run)


def test_sharding_from_the_environment_and_its_errors():
    assert resolve_sharding(None, None, {"RANK": "1", "WORLD_SIZE": "3"}) == (1, 3)
    assert resolve_sharding(None, None, {}) == (0, 1)
    assert resolve_sharding(2, 4, {"RANK": "1", "WORLD_SIZE": "3"}) == (2, 4)
    with pytest.raises(Scail2Error, match="give both"):
        resolve_sharding(1, None, {})
    with pytest.raises(Scail2Error, match="not in 0..1"):
        resolve_sharding(None, None, {"RANK": "2", "WORLD_SIZE": "2"})


def test_resume_with_other_settings_is_refused(reference_run, tmp_path):
    for name in ("meta.json", "shard-000000.tar"):
        (tmp_path / name).write_bytes((reference_run / name).read_bytes())
    other = ProceduralPairGenerator(SynthConfig(height=40, width=56, frames=5, seed=10))
    with pytest.raises(Scail2Error, match=r"meta.json describes a different dataset \(differs in generator\)"):
        write_dataset(other, tmp_path, 7, shard_size=3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "shard-000000.tar"]


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for name, data in _files(source).items():
        (target / name).write_bytes(data)
    return target


def test_unknown_versions_are_refused(reference_run, tmp_path):
    copy = _copy(reference_run, tmp_path / "copy")
    meta = json.loads((copy / "meta.json").read_text())
    meta["version"] = 3
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Scail2Error, match="meta.json has format version 3; this scail2 reads version 1, 2"):
        MotionPairDataset(copy)
    sample = json.loads(dict(encode_sample(ProceduralPairGenerator(CONFIG).generate(0)))["json"])
    sample["version"] = 7
    with pytest.raises(Scail2Error, match="sample 000000000.*format version 7"):
        decode_sample({"__key__": "000000000", "json": json.dumps(sample).encode()}, "x.tar")


def test_corrupt_and_foreign_shards_are_refused(reference_run, tmp_path):
    copy = _copy(reference_run, tmp_path / "copy")
    shard = copy / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.raises(Scail2Error, match="shard-000001.tar does not match its manifest checksum"):
        MotionPairDataset(copy)
    with pytest.raises(Scail2Error, match="shard-000001.tar (holds 1 samples, the manifest says 3|.*corrupt)"):
        list(MotionPairDataset(copy, verify=False))
    foreign = tmp_path / "foreign.tar"
    with open(foreign, "wb") as stream:
        writer = webdataset.TarWriter(stream)
        writer.write({"__key__": "cat01", "txt": "a cat", "jpg": b"\xff\xd8"})
        writer.close()
    with pytest.raises(Scail2Error, match="foreign.tar .sample cat01. has no json member: not a scail2 MotionPair"):
        list(read_shard(foreign))
    other = tmp_path / "other.tar"
    with open(other, "wb") as stream:
        writer = webdataset.TarWriter(stream)
        writer.write({"__key__": "x1", "json": {"format": "laion", "caption": "hi"}})
        writer.close()
    with pytest.raises(Scail2Error, match="is not a scail2 MotionPair sample .format 'laion'"):
        list(read_shard(other))
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(Scail2Error, match="garbage.tar is not a readable tar shard"):
        list(read_shard(garbage))


def test_model_generated_pairs_use_the_same_shards(tmp_path):
    generator = ModelPairGenerator([toy_clip(), toy_clip()], toy_animate, seed=3)
    assert write_dataset(generator, tmp_path, 2, shard_size=2, progress=False).complete
    read = list(MotionPairDataset(tmp_path))
    for index, sample in enumerate(read):
        _samples_equal(sample, generator.generate(index))
    assert json.loads((tmp_path / "meta.json").read_text())["generator"]["generator"] == "model"


def test_unfinished_dataset_is_refused(tmp_path):
    write_dataset(
        ProceduralPairGenerator(CONFIG), tmp_path, 4, shard_size=2, shard_index=0, num_shards=2, progress=False
    )
    with pytest.raises(Scail2Error, match="manifest.json is missing: the synth run is unfinished"):
        MotionPairDataset(tmp_path)


def test_pair_videos_decode_single_members_as_the_dataset_does(reference_run, tmp_path):
    from scail2.data.shards import PairVideos

    videos = PairVideos(reference_run)
    assert len(videos) == 7 and (videos.frames, videos.height, videos.width) == (5, 40, 56)
    for index, sample in enumerate(MotionPairDataset(reference_run)):
        np.testing.assert_array_equal(videos.video(index, "reference"), sample.reference[None])
        for stream in ("driving", "target"):
            np.testing.assert_array_equal(videos.video(index, stream), getattr(sample, stream))
            np.testing.assert_array_equal(videos.character_mask(index, stream), getattr(sample, f"{stream}_ids") > 0)
    copy = _copy(reference_run, tmp_path / "copy")
    records = list(webdataset.WebDataset(str(copy / "shard-000000.tar"), shardshuffle=False, empty_check=False))
    header = json.loads(records[0]["json"])
    records[0]["json"] = json.dumps({**header, "version": 7}).encode()
    with open(copy / "shard-000000.tar", "wb") as stream:
        writer = webdataset.TarWriter(stream, encoder=False)
        for record in records:
            writer.write({k: v for k, v in record.items() if not k.startswith("__") or k == "__key__"})
        writer.close()
    with pytest.raises(Scail2Error, match="shard-000000.tar .pair 0. has format version 7"):
        PairVideos(copy)
    shard = copy / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(Scail2Error, match="shard-000001.tar (holds 1 samples, the manifest says 3|is not a readable)"):
        PairVideos(copy)
