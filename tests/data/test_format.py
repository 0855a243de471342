"""The helpers every on-disk format shares: atomic writes, JSON errors, checksums, headers and manifests."""

from __future__ import annotations

import hashlib
import json

import pytest

from scail2.data.format import (
    FormatSpec,
    atomic_path,
    atomic_write_bytes,
    file_sha256,
    read_json,
    replace_folder,
    shard_record,
    write_json_atomic,
)
from scail2.errors import Scail2Error

SPEC = FormatSpec(
    "scail2-toy",
    version=2,
    supported=(1, 2),
    description="a scail2 toy folder",
    command="toy",
    settings="toy settings",
    kind="toy",
)


def test_atomic_writes_leave_only_the_final_file(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"abc")
    write_json_atomic(tmp_path / "b.json", {"z": 1, "a": [1.5, None]})
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "b.json").read_text() == '{\n "a": [\n  1.5,\n  null\n ],\n "z": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is renamed
        write_json_atomic(path, {"loss": float("nan")})
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_a_fixed_temporary_name_is_overwritten_by_the_next_run(tmp_path):
    path, partial = tmp_path / "shard.tar", tmp_path / "shard.tar.partial"
    partial.write_bytes(b"left by a killed run")
    with atomic_path(path, partial=partial) as tmp:
        tmp.write_bytes(b"whole")
    assert path.read_bytes() == b"whole" and not partial.exists()


def test_replace_folder_swaps_a_whole_folder(tmp_path):
    target, new = tmp_path / "model", tmp_path / ".model.partial"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    assert replace_folder(new, target) == target
    assert [p.name for p in target.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_read_json_errors_name_the_file_and_the_fix(tmp_path):
    hints = {"missing_hint": "run the writer", "corrupt_hint": "write it again"}
    with pytest.raises(Scail2Error, match=r"none.json is missing: run the writer$"):
        read_json(tmp_path / "none.json", **hints)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Scail2Error, match=r"bad.json is not valid JSON \(.*\); write it again$"):
        read_json(tmp_path / "bad.json", **hints)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(Scail2Error, match=r"folder.json cannot be read .*; write it again$"):
        read_json(tmp_path / "folder.json", **hints)


def test_shard_records_carry_size_and_checksum(tmp_path):
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(b"x" * (3 << 20))
    assert file_sha256(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    record = shard_record(path, count=2)
    assert record == {"name": path.name, "count": 2, "bytes": 3 << 20, "sha256": file_sha256(path)}
    SPEC.check_shard(path, record)
    path.write_bytes(b"y" * (3 << 20))
    with pytest.raises(Scail2Error, match=r"shard-000000.tar does not match its manifest checksum; .*`scail2 toy`"):
        SPEC.check_shard(path, record)
    SPEC.check_shard(path, record, checksum=False)
    path.unlink()
    with pytest.raises(Scail2Error, match="listed in the manifest but missing"):
        SPEC.check_shard(path, record, checksum=False)


def test_headers_of_other_formats_and_versions_are_refused():
    assert SPEC.header(n=3) == {"format": "scail2-toy", "version": 2, "n": 3}
    assert SPEC.check_header({"format": "scail2-toy", "version": 1}, "x") == 1
    with pytest.raises(
        Scail2Error,
        match=r"^x is not a scail2 toy folder \(format 'laion' instead of 'scail2-toy'\)"
        r"; point it at a folder written by `scail2 toy`$",
    ):
        SPEC.check_header({"format": "laion"}, "x")
    with pytest.raises(Scail2Error, match="format None"):
        SPEC.check_header(["not", "a", "header"], "x")
    with pytest.raises(
        Scail2Error,
        match=r"^x has toy format version 3; this scail2 reads version 1, 2: upgrade "
        r"scail2 or write it again with `scail2 toy`$",
    ):
        SPEC.check_header({"format": "scail2-toy", "version": 3}, "x")


def test_a_resumed_run_must_describe_the_same_data(tmp_path):
    SPEC.claim_folder(tmp_path, SPEC.header(size=(2, 3)))
    SPEC.claim_folder(tmp_path, SPEC.header(size=(2, 3)))  # tuples come back as lists: still the same
    SPEC.claim_folder(tmp_path, SPEC.header(size=(5, 3)))  # nothing but meta.json yet: a failed first run
    SPEC.claim_folder(tmp_path, SPEC.header(size=(2, 3)))
    (tmp_path / "shard-000000.tar").write_bytes(b"work of the first run")
    with pytest.raises(Scail2Error, match=r"differs in size\): other toy settings than this run's"):
        SPEC.claim_folder(tmp_path, SPEC.header(size=(4, 3)))
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(Scail2Error, match="is not a scail2 toy folder"):
        SPEC.claim_folder(tmp_path, SPEC.header(size=(2, 3)))


def test_a_finished_folder_needs_its_manifest(tmp_path):
    SPEC.claim_folder(tmp_path, SPEC.header())
    with pytest.raises(Scail2Error, match="manifest.json is missing: the toy run is unfinished; re-run the same"):
        SPEC.open_finished(tmp_path)
    shard = tmp_path / "s.tar"
    shard.write_bytes(b"data")
    SPEC.write_manifest(tmp_path, [shard_record(shard, count=1)], num_pairs=1)
    meta, manifest = SPEC.open_finished(tmp_path)
    assert meta == SPEC.header() and manifest["num_pairs"] == 1 and manifest["shards"][0]["name"] == "s.tar"
