"""`scail2 synth`, `cache`, `convert` and `eval` given bad flags, files and outputs: one line each, nothing written."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from scail2.commands import guards
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.errors import Scail2Error
from tests.commands.corpus import assert_refused


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_dataset(
        ProceduralPairGenerator(SynthConfig(32, 64, 5, seed=1)), root / "data", 2, shard_size=2, progress=False
    )
    (root / "user" / "sub").mkdir(parents=True)
    (root / "user" / "thesis.txt").write_text("years of work")
    (root / "note.txt").write_text("a file")
    shutil.copytree(tiny_model, root / "model")
    no_tokenizer = root / "no_tokenizer"
    shutil.copytree(tiny_model / "vae", no_tokenizer / "vae")
    (no_tokenizer / "text_encoder").mkdir()
    (no_tokenizer / "text_encoder" / "config.json").write_text("{}")
    broken_vae = root / "broken_vae" / "vae"
    broken_vae.mkdir(parents=True)
    (broken_vae / "config.json").write_text("{ not json")
    corrupt = root / "corrupt_meta"
    shutil.copytree(root / "data", corrupt)
    (corrupt / "meta.json").write_text("{ half")
    weights = {"blocks.0.weight": torch.zeros(64, 64)}
    save_file(weights, str(root / "good.safetensors"))
    data = (root / "good.safetensors").read_bytes()
    (root / "zero.safetensors").write_bytes(b"")
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "corrupt.safetensors").write_bytes(b"\xff" * 64)
    return root


def test_synth_corpus(world, capsys):
    out = ["synth", "--out", world / "new", "--num", "2", "--quiet"]
    cases = [
        ([*out, "--frames", "16"], ["--frames", "4n+1"]),
        ([*out, "--frames", "0"], ["--frames"]),
        ([*out, "--size", "40x56"], ["--size", "multiple of 32"]),
        ([*out, "--size", "0"], ["--size"]),
        ([*out, "--workers", "0"], ["--workers"]),
        ([*out, "--shard-size", "0"], ["--shard-size"]),
        ([*out, "--seed", str(2**70)], ["--seed"]),
        (["synth", "--out", world / "new", "--num", "0"], ["--num"]),
        (["synth", "--out", world / "note.txt", "--num", "2"], ["--out", "is a file"]),
        (["synth", "--out", world / "user", "--num", "2"], ["--out", "did not write"]),
        (["synth", "--out", world / "note.txt" / "pairs", "--num", "2"], ["--out", "is a file"]),
        (["synth", "--preview", world / "note.txt" / "sheet.png", "--num", "2"], ["--preview", "is a file"]),
        (["synth", "--preview", world / "user", "--num", "2"], ["--preview", "is a folder"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_cache_corpus(world, capsys):
    def cache(data, model, out="new_cache", *extra):
        return ["cache", "--data", world / data, "--model", world / model, "--out", world / out, "--quiet", *extra]

    cases = [
        (cache("note.txt", "model"), ["--data", "note.txt", "is a file"]),
        (cache("data", "note.txt"), ["--model", "not a folder"]),
        (cache("data", "no_tokenizer"), ["--model", "tokenizer/"]),
        (cache("data", "broken_vae"), ["--model", "broken_vae"]),
        (cache("corrupt_meta", "model"), ["meta.json", "not valid JSON"]),
        (cache("data", "model", "user"), ["--out", "did not write"]),
        (cache("data", "model", "data"), ["--out", "--data"]),
        (cache("data", "model", "new_cache", "--text-len", "0"), ["--text-len"]),
        (cache("data", "model", "new_cache", "--device", "quantum"), ["--device", "quantum"]),
        (cache("data", "model", "new_cache", "--num-shards", "0"), ["--num-shards"]),
        (cache("data", "model", "new_cache", "--cue-grid", "4"), ["--cue-grid", "only work with --cues"]),
        (cache("data", "model", "new_cache", "--cues", "--cue-cutoff", "0"), ["--cue-cutoff"]),
        (cache("data", "model", "new_cache", "--cues", "--cue-filter", "median"), ["--cue-filter", "median"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_convert_corpus(world, capsys):
    def convert(source, *extra):
        return [
            "convert",
            "transformer",
            "--input",
            world / source,
            "--config",
            "tiny",
            "--out",
            world / "conv",
            *extra,
        ]

    cases = [
        (convert("zero.safetensors"), ["--input", "zero.safetensors"]),
        (convert("truncated.safetensors"), ["--input", "truncated.safetensors"]),
        (convert("corrupt.safetensors"), ["--input", "corrupt.safetensors"]),
        (convert("good.safetensors", "--max-shard-size", "0"), ["--max-shard-size"]),
        (convert("good.safetensors", "--max-shard-size", "nan"), ["--max-shard-size"]),
        (
            ["convert", "all", "--official-dir", world / "user", "--out", world / "conv", "--clip-heads", "0"],
            ["--clip-heads"],
        ),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_eval_corpus(world, capsys):
    (world / "user" / "scores.json").write_text('{"mine": 1}')
    (world / "my_table").mkdir(exist_ok=True)
    (world / "my_table" / "table.md").write_text("results of my own method")
    (world / "my_plot").mkdir(exist_ok=True)
    (world / "my_plot" / "plot.png").write_bytes(b"\x89PNG")
    cases = [
        (["eval", "--json", world / "note.txt" / "s.json"], ["--json", "is a file"]),
        (["eval", "--json", world / "user"], ["--json", "is a folder"]),
        (["eval", "--json", world / "user" / "scores.json"], ["--json", "not written by"]),
        (["eval", "--report-dir", world / "note.txt"], ["--report-dir", "is a file"]),
        (["eval", "--report-dir", world / "my_table"], ["--report-dir", "did not write"]),
        (["eval", "--report-dir", world / "my_plot"], ["--report-dir", "did not write"]),
        (["eval", "--pairs", "0"], ["--pairs"]),
        (["eval", "--steps", "-2"], ["--steps"]),
        (["eval", "--shift", "inf"], ["--shift"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_convert_refuses_a_disk_without_room(world, capsys, monkeypatch):
    from collections import namedtuple

    from scail2 import outputs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10, 10, 0))
    args = ["convert", "transformer", "--input", world / "good.safetensors", "--config", "tiny", "--out", world / "c"]
    assert_refused(capsys, args, ["--out", "GiB are free"], world)


def test_eval_report_dir_may_hold_pages_written_by_hand(tmp_path):
    """docs/benchmark holds hand-written pages beside the report; only table.md and plot.png are replaced, and
    only when they are a report's own."""
    folder = tmp_path / "benchmark"
    folder.mkdir()
    (folder / "closeup.md").write_text("measurements written by hand")
    (folder / "results.json").write_text('{"summary": {}}')
    args = argparse.Namespace(model=None, skeleton_model="none", json=None, report_dir=folder, readme=None)
    guards.eval_guard(args)  # no report yet
    (folder / "table.md").write_text("64 held-out pairs. Regenerate with `scail2 eval --split test`.\n\n| table |\n")
    (folder / "plot.png").write_bytes(b"\x89PNG")
    guards.eval_guard(args)  # its own report is replaced
    (folder / "table.md").write_text("| my table |\n\nRegenerate with `scail2 eval --split test`.\n")
    with pytest.raises(Scail2Error, match="--report-dir .* did not write"):
        guards.eval_guard(args)
    (folder / "table.md").unlink()
    (folder / "plot.png").unlink()
    (folder / "plot.png").mkdir()  # a report could not replace it: refused before the run, not after
    with pytest.raises(Scail2Error, match="--report-dir .* did not write"):
        guards.eval_guard(args)
