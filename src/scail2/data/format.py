"""What the on-disk formats share: atomic writes, JSON with one-line errors, checksums, headers and manifests.

The folder formats (MotionPair shards, preference pairs, the latent cache) each have a `meta.json` and, once
every shard is written, a `manifest.json`; both start with a header `{"format": name, "version": n}`, and so
do the per-sample headers inside the shards. A `FormatSpec` names one format and gives the one-line
`Scail2Error`s readers raise: foreign or unknown-version files, missing or damaged shards, a resumed run with
other settings. Every file is written under a temporary name and renamed into place, so a killed run never
leaves a half-written file under its final name. Every package layer may import this module: it depends on
nothing of the package but `scail2.errors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scail2.errors import Scail2Error

META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
STALE_SECONDS = 600  # a temporary file of a process not running here is removed once untouched this long


# 1. Atomic writes --------------------------------------------------------------------------------------------


def partial_path(path: Path) -> Path:
    """The temporary sibling `path` is written under: hidden, and unique per process because several machines
    may write the same file (meta.json, the manifest); the suffix stays for tools that go by it."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path, partial: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` when the block succeeds and is deleted otherwise.

    `partial` fixes the temporary name, for files only one process writes: a run killed outright (SIGKILL)
    leaves it behind, and the next run overwrites it instead of leaving another one.
    """
    path = Path(path)
    tmp = partial or partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder to fill; it replaces `folder` (by `replace_folder`) when the block
    succeeds and is deleted otherwise."""
    folder = Path(folder)
    tmp = partial_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


PARTIAL_NAME = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>\d+)(?P<suffix>\.[^.]*)?")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Delete `partial_path` temporaries in `folder` whose writing process is gone (a killed run's leftovers; a
    live process's files are kept, so two runs on one machine never remove each other's work). On a shared disk
    a PID of another machine may look dead here: only files untouched for STALE_SECONDS are removed for that."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = PARTIAL_NAME.fullmatch(entry.name)
        if match is None or int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        try:
            if time.time() - entry.lstat().st_mtime < STALE_SECONDS:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except FileNotFoundError:  # another run removed it first
            continue
    return removed


def _only_meta(folder: Path) -> bool:
    return all(entry.name == META_FILE or PARTIAL_NAME.fullmatch(entry.name) for entry in folder.iterdir())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = True) -> Path:
    """Strict JSON (no NaN), one key per line; sorted keys keep the bytes reproducible across runs."""
    text = json.dumps(data, indent=1, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_folder(finished: Path, target: Path) -> Path:
    """Move the complete folder `finished` to `target`. An existing `target` is renamed aside first and deleted
    after, so `target` is at every moment either the old folder or the new one."""
    if not target.exists():
        os.replace(finished, target)
        return target
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(finished, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


# 2. Reading and checksums ------------------------------------------------------------------------------------


def read_json(path: str | Path, *, missing_hint: str, corrupt_hint: str) -> Any:
    """Parsed JSON, or a one-line Scail2Error: "<path> is missing: <missing_hint>" or "... not valid JSON"."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Scail2Error(f"{path} is missing: {missing_hint}") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise Scail2Error(f"{path} is not valid JSON ({error}); {corrupt_hint}") from None
    except OSError as error:  # a folder in its place, no permission
        raise Scail2Error(f"{path} cannot be read ({error.strerror or error}); {corrupt_hint}") from None


def check_member_name(name: Any, source: str | Path) -> str:
    """A file name a manifest or shard lists: one plain name inside its folder, never a path that climbs out of
    it (`../x`), an absolute path or an empty name; anything else is a one-line Scail2Error naming `source`."""
    plain = isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
    if not plain:
        raise Scail2Error(
            f"{source} lists the member name {name!r}, which is not a plain file name; it is corrupt or crafted"
        )
    return name


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_record(path: Path, **fields) -> dict:
    """The manifest record of a finished shard: its name, `fields` (count, first index, ...), bytes, sha256."""
    return {"name": path.name, **fields, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


# 3. Format specs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormatSpec:
    name: str  # the `format` field of every header
    version: int  # the version this scail2 writes
    supported: tuple[int, ...]  # the versions this scail2 reads
    description: str  # what a header of this format belongs to, in words: "a scail2 latent cache"
    command: str  # the `scail2` verb that writes it: "cache"
    settings: str  # what a resumed run must repeat, in words: "data or encoders"
    kind: str = ""  # qualifies "format version" where one file holds headers of several formats: "preference"

    @property
    def cli(self) -> str:
        return f"`scail2 {self.command}`"

    def header(self, **fields) -> dict:
        return {"format": self.name, "version": self.version, **fields}

    def check_header(self, header: Any, source: str | Path) -> int:
        """The header's version, or a one-line Scail2Error naming `source` when the format or version is foreign."""
        found = header.get("format") if isinstance(header, dict) else None
        if found != self.name:
            raise Scail2Error(
                f"{source} is not {self.description} (format {found!r} instead of {self.name!r}); point "
                f"it at a folder written by {self.cli}"
            )
        version = header.get("version")
        if version not in self.supported:
            kind = f"{self.kind} " if self.kind else ""
            readable = ", ".join(map(str, self.supported))
            raise Scail2Error(
                f"{source} has {kind}format version {version}; this scail2 reads version {readable}: "
                f"upgrade scail2 or write it again with {self.cli}"
            )
        return version

    def read_json(self, path: Path) -> Any:
        return read_json(
            path,
            missing_hint=f"is this a folder written by {self.cli}?",
            corrupt_hint=f"it is corrupt: write it again with {self.cli}",
        )

    def claim_folder(self, out: Path, meta: dict) -> None:
        """Write `out`/meta.json, or, resuming, check that the one there describes the same run. A folder that
        holds nothing but a meta.json (a first run that failed before its first shard) is claimed afresh, so the
        corrected command is not refused; this process's stale temporary files from dead runs are removed."""
        path = out / META_FILE
        remove_stale_partials(out)
        if not path.exists():
            write_json_atomic(path, meta)
            return
        existing = self.read_json(path)
        self.check_header(existing, path)
        wanted = json.loads(json.dumps(meta))
        if existing != wanted and _only_meta(out):
            write_json_atomic(path, meta)
        elif existing != wanted:
            differing = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            raise Scail2Error(
                f"{path} describes a different dataset (differs in {', '.join(differing)}): other "
                f"{self.settings} than this run's; resume with the same ones or choose another output "
                f"folder"
            )

    def write_manifest(self, out: Path, shards: list[dict], **fields) -> None:
        write_json_atomic(out / MANIFEST_FILE, self.header(**fields, shards=shards))

    def open_finished(self, directory: Path, verify: bool = True) -> tuple[dict, dict]:
        """(meta, manifest) of a finished folder; every listed shard must exist and, with `verify`, match its
        size and checksum."""
        meta = self.read_json(directory / META_FILE)
        self.check_header(meta, directory / META_FILE)
        manifest = read_json(
            directory / MANIFEST_FILE,
            corrupt_hint=f"it is corrupt: write it again with {self.cli}",
            missing_hint=f"the {self.command} run is unfinished; re-run the same {self.cli} command to finish it",
        )
        self.check_header(manifest, directory / MANIFEST_FILE)
        shards = manifest.get("shards")
        if not isinstance(shards, list) or not all(isinstance(record, dict) for record in shards):
            raise Scail2Error(
                f"{directory / MANIFEST_FILE} has no list of shard records; write it again with {self.cli}"
            )
        for record in shards:
            name = check_member_name(record.get("name"), directory / MANIFEST_FILE)
            self.check_shard(directory / name, record, verify)
        return meta, manifest

    def check_shard(self, path: Path, record: dict, checksum: bool = True) -> None:
        if not path.is_file():
            raise Scail2Error(f"{path} is listed in the manifest but missing; re-run {self.cli} to write it again")
        if checksum and (path.stat().st_size != record["bytes"] or file_sha256(path) != record["sha256"]):
            raise Scail2Error(
                f"{path} does not match its manifest checksum; it is corrupt or foreign: delete it and "
                f"re-run {self.cli} to write it again"
            )
