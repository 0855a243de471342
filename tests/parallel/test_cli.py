"""`scail2 animate` under torchrun's environment (four forked ranks: guidance split over two, the tokens over two)
writes, from rank 0 alone, the video one process writes; flags that cannot run over several ranks are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scail2.cli import main
from scail2.errors import Scail2Error
from scail2.parallel import grid_shape
from tests.parallel.launch import spawn
from tests.pipelines.components import tiny_pipeline
from tests.pipelines.media import (
    moving_square_frames,
    square_masks,
    write_mask_folder,
    write_reference,
    write_reference_mask,
    write_video,
)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parallel_cli")
    model = root / "model"
    tiny_pipeline(seed=2, text=True, image=False).save_pretrained(model)  # a text encoder: guidance applies
    return {
        "model": model,
        "driving": write_video(root / "driving.mp4", moving_square_frames(11, 72, 120), fps=24),
        "masks": write_mask_folder(root / "masks", square_masks(11, 72, 120)),
        "ref": write_reference(root / "ref.png", 90, 140),
        "ref_mask": write_reference_mask(root / "ref_mask.png", 90, 140),
    }


def arguments(job, out: Path, *extra: str) -> list[str]:
    files = ["--ref", job["ref"], "--ref-mask", job["ref_mask"], "--driving", job["driving"]]
    sampling = ["--sampler", "euler", "--steps", "2", "--cfg", "3", "--segment-length", "9", "--overlap", "5"]
    size = ["--height", "32", "--width", "64", "--prompt", "a robot walks"]
    base = ["animate", "--model", job["model"], *files, "--driving-mask", job["masks"], *sampling, *size]
    return [str(a) for a in [*base, "--out", out, "--frames-dir", out.with_suffix(""), *extra]]


def cli_rank(rank: int, world: int, argv: list[str]) -> None:
    status = main(argv)
    if status:
        raise SystemExit(status)


def test_four_ranks_write_what_one_process_writes(job, tmp_path):
    alone, together = tmp_path / "alone" / "o.mp4", tmp_path / "together" / "o.mp4"
    assert main(arguments(job, alone)) == 0
    spawn(cli_rank, 4, arguments(job, together, "--shard-weights"))
    frames = sorted(together.with_suffix("").glob("*.png"))
    assert len(frames) == 11
    # the latents agree within 1e-5 (test_equivalence), so a rare pixel rounds the other way
    ours = np.stack([np.asarray(Image.open(png), dtype=np.float64) for png in frames])
    theirs = np.stack([np.asarray(Image.open(alone.with_suffix("") / png.name), dtype=np.float64) for png in frames])
    assert np.abs(ours - theirs).max() <= 1
    assert 10 * np.log10(255**2 / max(np.mean((ours - theirs) ** 2), 1e-12)) > 60
    assert sorted(p.name for p in together.parent.iterdir()) == [
        "o",
        "o.json",
        "o.mp4",
        "o.qa.json",
        "o.qa.png",
    ]  # one writer
    manifest = json.loads(together.with_suffix(".json").read_text())
    assert manifest["parallel"] == "4 processes, guidance split over 2, sequence parallel over 2"
    assert manifest["request"]["shard_weights"] is True


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cache", "fbc"], "--cache fbc cannot run over 2 processes"),
        (["--compile"], "--compile cannot run over 2 processes"),
        (["--shard-weights", "--offload", "group"], "drop --offload group"),
        (["--shard-weights", "--quantize", "fp8"], "--shard-weights loads plain bf16/fp32 weights, not --quantize fp8"),
        (["--shard-weights", "--lora", "style.safetensors", "--lora-mode", "unfused"], "use --lora-mode fused"),
    ],
)
def test_flags_that_cannot_run_over_several_ranks_are_refused(job, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(arguments(job, tmp_path / "o.mp4", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list(tmp_path.iterdir())


def test_shard_weights_alone_and_heads_that_do_not_split_are_one_line_errors(job, tmp_path, capsys):
    assert main(arguments(job, tmp_path / "o.mp4", "--shard-weights")) == 2
    assert "start the job with torchrun --nproc_per_node N" in capsys.readouterr().err
    with pytest.raises(
        Scail2Error,
        match=r"6 processes \(2 for guidance x 3 for the tokens\): the token share, 3, "
        "must divide the model's 40 attention heads; start one of 1, 2, 4, 5, 8, 10, 16, 20, 40, 80",
    ):
        grid_shape(6, 40, guided=True)
    with pytest.raises(Scail2Error, match="start one of 1, 2, 4, 5, 8, 10, 20, 40 processes"):
        grid_shape(3, 40, guided=False)
    assert grid_shape(8, 40, guided=True) == (2, 4) and grid_shape(8, 40, guided=False) == (1, 8)
    assert grid_shape(3, 3, guided=True) == (1, 3)
