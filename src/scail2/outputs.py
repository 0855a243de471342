"""The output-path guard: every command checks where it will write once, before any work starts.

Rules, each a one-line `Scail2Error` naming the flag and the path:
- an output is never one of the command's inputs, nor inside an input folder, nor a folder holding an input
  (compared by real path, so links and `./x` spellings are caught);
- an existing output is replaced only when this command wrote it (an output folder carries a `MARKER` file
  naming the command; other outputs are recognised by a predicate the command gives, such as its manifest);
- the location can be written: its nearest existing ancestor is a folder (not a file) we may write into;
- where the size is predictable, the disk has room for it.

    guard = OutputGuard("animate", inputs={"--driving": args.driving, "--ref": args.ref})
    guard.file("--out", args.out, ours=lambda path: our_manifest_beside(path))
    guard.folder("--frames-dir", args.frames_dir, reuse=True, ours=holds_only_frames)

Run folders also carry a lock (`folder_lock`) while a run writes them, so two runs never share temporary names.

This module depends only on `scail2.errors` and `scail2.data.format`, so every layer may use it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from scail2.data.format import pid_alive, read_json, write_json_atomic
from scail2.errors import Scail2Error

MARKER = ".scail2-output.json"  # inside every output folder: {"command": "train"}


def real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def writer_of(folder: Path) -> str | None:
    """The command whose MARKER the folder holds, or None."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        data = read_json(marker, missing_hint="", corrupt_hint="")
    except Scail2Error:
        return None
    return data.get("command") if isinstance(data, dict) else None


def mark(folder: str | Path, command: str) -> None:
    """Claim `folder` (created if needed) as an output of `command`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MARKER, {"command": command})


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_location(flag: str, path: Path) -> None:
    """`path` can be created: its nearest existing ancestor is a folder we may write into."""
    ancestor = nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise Scail2Error(f"{flag} {path}: {ancestor} is a file, not a folder; choose a path in a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise Scail2Error(f"{flag} {path}: cannot write into {ancestor} (read-only or no permission); choose another")


def check_free_space(flag: str, path: Path, needed_bytes: int) -> None:
    """Refuse before the work when the disk holding `path` has less free space than `needed_bytes`."""
    free = shutil.disk_usage(nearest_existing(path)).free
    if free < needed_bytes:
        raise Scail2Error(
            f"{flag} {path}: about {needed_bytes / 2**30:.1f} GiB are needed but {free / 2**30:.1f} GiB are free "
            "there; free some space or choose another disk"
        )


@dataclass
class OutputGuard:
    """The checks of one command: `inputs` maps each input flag to its path (None: not given)."""

    command: str
    inputs: Mapping[str, str | Path | None] = field(default_factory=dict)

    def check_not_input(self, flag: str, path: Path) -> None:
        target = real(path)
        for input_flag, value in self.inputs.items():
            if value is None or str(value) == "":
                continue
            source = real(value)
            if _overlaps(target, source):
                relation = "is" if target == source else "overlaps"
                raise Scail2Error(
                    f"{flag} {path} {relation} the input {input_flag} {value}; write the output somewhere else"
                )

    def file(self, flag: str, path: str | Path | None, ours: Callable[[Path], bool] | None = None) -> None:
        """An output file: not an input, not a folder, replaced only when `ours(path)` says this command wrote it
        (None: an existing file may be replaced), in a writable folder."""
        if path is None:
            return
        path = Path(path)
        self.check_not_input(flag, path)
        if path.is_dir():
            raise Scail2Error(f"{flag} {path} is a folder; give a file name")
        if path.exists() and ours is not None and not ours(path):
            raise Scail2Error(
                f"{flag} {path} exists and was not written by `scail2 {self.command}`; delete it or choose another"
            )
        check_writable_location(flag, path)

    def folder(
        self,
        flag: str,
        path: str | Path | None,
        *,
        reuse: bool = False,
        ours: Callable[[Path], bool] | None = None,
        hint: str = "delete it, choose another folder, or pass --overwrite to replace it",
    ) -> None:
        """An output folder: not an input, and if it exists and holds anything, written by this command (its
        MARKER, or `ours(path)` for folders older than the marker) and then only reused (replaced or resumed)
        when `reuse` is set; otherwise the error ends with `hint`."""
        if path is None:
            return
        path = Path(path)
        if path.name in ("", ".", "..") or real(path) in (real(Path.cwd()), *real(Path.cwd()).parents):
            raise Scail2Error(f"{flag} {path} names the current or a parent folder; give a new folder's name")
        self.check_not_input(flag, path)
        if path.exists() and not path.is_dir():
            raise Scail2Error(f"{flag} {path} is a file; give a folder name")
        if path.is_dir() and any(path.iterdir()):
            writer = writer_of(path)
            if writer is not None and writer != self.command:
                raise Scail2Error(f"{flag} {path} holds the output of `scail2 {writer}`; choose another folder")
            if writer is None and not (ours is not None and ours(path)):
                raise Scail2Error(
                    f"{flag} {path} holds files `scail2 {self.command}` did not write; choose a new or empty folder"
                )
            if not reuse:
                raise Scail2Error(f"{flag} {path} holds an earlier `scail2 {self.command}` output; {hint}")
        check_writable_location(flag, path)


def start_run_folder(folder: str | Path, command: str, fresh: bool) -> None:
    """Mark `folder` as `command`'s run; with `fresh` (--overwrite, after the guard has checked that this command
    wrote it) delete the earlier run's files first, so no old checkpoint is picked up by a later --resume."""
    folder = Path(folder)
    if fresh and folder.is_dir():
        shutil.rmtree(folder)
    mark(folder, command)


# Run-folder lock ------------------------------------------------------------------------------------------------

LOCK = ".scail2-lock"  # holds the PID of the run writing the folder


def _holder(folder: Path) -> int | None:
    """The PID of a live process holding `folder`'s lock (another one than this), or None."""
    try:
        pid = int((folder / LOCK).read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    return None if pid in (0, os.getpid()) or not pid_alive(pid) else pid


def check_unlocked(flag: str, folder: str | Path) -> None:
    """Refuse, before any work, a folder another live run is writing (its temporary names would collide)."""
    pid = _holder(Path(folder))
    if pid is not None:
        raise Scail2Error(
            f"{flag} {folder} is being written by another scail2 run (process {pid}); wait for it to finish or "
            "choose another folder"
        )


@contextmanager
def folder_lock(flag: str, folder: str | Path) -> Iterator[None]:
    """Hold `folder`'s lock while writing it; a lock left by a dead process is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one of two starting runs wins
        except FileExistsError:
            check_unlocked(flag, folder)
            lock.unlink(missing_ok=True)  # a dead run's lock
            continue
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        break
    else:
        check_unlocked(flag, folder)
    try:
        yield
    finally:
        if lock.is_file() and lock.read_text().strip() == str(os.getpid()):
            lock.unlink()
