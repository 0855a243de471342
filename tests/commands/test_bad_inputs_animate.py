"""`scail2 animate` and `scail2 masks` given bad flags and outputs the way a careless user would: each is refused in
one line before any work (no model load, no mask extraction), and nothing on disk changes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from tests.commands.corpus import assert_refused
from tests.pipelines.media import (
    moving_square_frames,
    square_masks,
    write_mask_folder,
    write_reference,
    write_video,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Inputs and a user's own files: a folder holding a document and a subfolder, a video, a text file."""
    root = tmp_path_factory.mktemp("user")
    write_video(root / "driving.mp4", moving_square_frames(9, 64, 96), fps=16)
    write_video(root / "masks.mp4", square_masks(9, 64, 96), fps=16)
    write_reference(root / "ref.png", 64, 96)
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "thesis.txt").write_text("years of work")
    write_video(root / "mine.mp4", moving_square_frames(5, 32, 32), fps=16)
    (root / "note.txt").write_text("not a folder")
    (root / "out").mkdir()
    write_video(root / "square_masks.mp4", square_masks(9, 64, 64), fps=16)
    write_mask_folder(root / "mask_frames", square_masks(9, 64, 96))
    (root / "bomb.png").write_bytes(png_header(100_000, 100_000))
    (root / "big.png").write_bytes(png_header(9000, 9000))
    return root


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels in a few bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def animate_args(world: Path, **flags) -> list[str]:
    """`animate` with the world's inputs; `flags` (underscores for dashes) replace or add flags; None drops one."""
    base = {"ref": world / "ref.png", "driving": world / "driving.mp4", "out": world / "out" / "o.mp4"}
    base.update(flags)
    args = ["animate"]
    for name, value in base.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def animate_cases(w: Path) -> list[tuple[dict, list[str]]]:
    """(flags, names the error must contain)."""
    return [
        # outputs that would destroy the user's data
        (dict(frames_dir=w / "docs"), ["--frames-dir", "docs"]),
        (dict(frames_dir=w / "masks.mp4"), ["--frames-dir", "is a file"]),
        (dict(frames_dir=w / "note.txt"), ["--frames-dir", "note.txt"]),
        (dict(out=w / "driving.mp4"), ["--out", "--driving"]),
        (dict(out=w / "masks.mp4", driving_mask=w / "masks.mp4"), ["--out", "--driving-mask"]),
        (dict(out=w / "mine.mp4"), ["--out", "mine.mp4", "not written by"]),
        (dict(out=w / "note.txt" / "o.mp4"), ["--out", "is a file"]),
        (dict(out=w / "out" / "o.png"), ["--out", ".mp4"]),
        (dict(out=w / "docs"), ["--out"]),
        (dict(frames_dir=w / "out"), ["--out", "inside --frames-dir"]),
        (dict(frames_dir=w / "mask_frames", driving_mask=w / "mask_frames"), ["--frames-dir", "--driving-mask"]),
        (dict(driving_mask=w / "square_masks.mp4"), ["--driving-mask", "64x64", "96x64", "aspect ratio"]),
        (dict(ref=w / "bomb.png"), ["--ref", "bomb.png", "more pixels"]),
        (dict(ref=w / "big.png"), ["--ref", "big.png", "9000x9000"]),
        (dict(ref_mask=w / "bomb.png"), ["--ref-mask", "bomb.png"]),
        # flags out of range, checked before anything is read
        (dict(max_frames=0), ["--max-frames"]),
        (dict(max_frames=-3), ["--max-frames"]),
        (dict(seed=2**64), ["--seed"]),
        (dict(seed=-1), ["--seed"]),
        (dict(device="gpu"), ["--device", "gpu"]),
        (dict(device="cuda:99"), ["--device"]),
        (dict(cfg="nan"), ["--cfg", "nan"]),
        (dict(shift="inf"), ["--shift", "inf"]),
        (dict(shift=0), ["--shift"]),
        (dict(steps=0), ["--steps"]),
        (dict(steps=10**6), ["--steps"]),
        (dict(height=33, width=96), ["--height", "32"]),
        (dict(height=64, width=10**5), ["--width"]),
        (dict(width="wide"), ["--width", "wide"]),
        (dict(segment_length=16), ["--segment-length", "4n+1"]),
        (dict(overlap=4), ["--overlap", "4n+1"]),
        (dict(segment_length=9, overlap=9), ["--overlap 9", "--segment-length 9"]),
    ]


def test_animate_corpus(world, capsys, tiny_model, monkeypatch):
    from scail2 import bundled

    monkeypatch.setattr(bundled, "BUNDLED_MODEL", tiny_model)  # a model load, if one happened, would be quick
    for flags, names in animate_cases(world):
        assert_refused(capsys, animate_args(world, **flags), names, world)


def test_animate_on_a_cpu_only_build_refuses_cuda(world, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = assert_refused(capsys, animate_args(world, device="cuda"), ["--device", "no CUDA"], world)
    assert "use cpu" in line


def test_frames_dir_dot_is_refused(world, capsys, monkeypatch):
    monkeypatch.chdir(world / "docs")
    assert_refused(capsys, animate_args(world, frames_dir="."), ["--frames-dir", "current"], world)


def test_masks_corpus(world, capsys):
    base = ["masks", "--driving", world / "driving.mp4"]
    cases = [
        (["--out", world / "docs"], ["--out", "did not write"]),
        (["--out", world / "docs", "--overwrite"], ["--out", "did not write"]),
        (["--out", world / "note.txt"], ["--out", "is a file"]),
        (["--out", world / "new", "--max-frames", "0"], ["--max-frames"]),
        (["--out", world / "new", "--max-characters", "0"], ["--max-characters"]),
        (["--out", world / "new", "--min-track-fraction", "nan"], ["--min-track-fraction"]),
        (["--out", world / "new", "--device", "tpu"], ["--device"]),
        (["--out", world / "new", "--work-size", "-5"], ["--work-size"]),
        (["--out", world / "new", "--ref", world / "bomb.png"], ["--ref", "bomb.png"]),
    ]
    for extra, names in cases:
        assert_refused(capsys, [*base, *extra], names, world)
