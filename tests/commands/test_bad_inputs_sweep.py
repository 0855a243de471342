"""`scail2 demo`, `eval`, `prefs` and `train-vae` flags tried the way a careless user would: each is refused in
one line naming the flag, before any model loads, and nothing on disk changes (no output folder appears)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from tests.commands.corpus import assert_refused


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    generator = ProceduralPairGenerator(SynthConfig(32, 64, 9, seed=1))
    write_dataset(generator, root / "pairs", 2, shard_size=2, progress=False)
    (root / "user" / "sub").mkdir(parents=True)
    (root / "user" / "thesis.txt").write_text("years of work")
    (root / "note.txt").write_text("a file")
    (root / "bad.yaml").write_text("lr: [1\n")
    return root


def test_demo_corpus(world, capsys):
    cases = [
        (["demo", "--out", world / "d", "--model", world / "nowhere"], ["--model", "does not exist"]),
        (["demo", "--out", world / "d", "--model", world / "user"], ["--model", "model_index.json"]),
        (["demo", "--out", world / "d", "--model", world / "note.txt"], ["--model", "is a file"]),
        (["demo", "--out", world / "user"], ["--out", "did not write"]),
        (["demo", "--out", world / "note.txt"], ["--out", "is a file"]),
        (["demo", "--out", world / "note.txt" / "d"], ["--out", "is a file"]),
        (["demo", "--out", world / "d", "--steps", "0"], ["--steps"]),
        (["demo", "--out", world / "d", "--seed", "x"], ["--seed", "x"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_eval_sweep(world, capsys):
    cases = [
        (["eval", "--model", world / "nowhere", "--pairs", "1"], ["--model", "does not exist"]),
        (["eval", "--model", world / "note.txt", "--pairs", "1"], ["--model", "is a file"]),
        (["eval", "--skeleton-model", world / "nowhere", "--pairs", "1"], ["--skeleton-model"]),
        (["eval", "--directanimator-model", world / "nowhere", "--pairs", "1"], ["--directanimator-model", "does not"]),
        (["eval", "--split", "train"], ["--split", "train"]),
        (["eval", "--readme", world / "user"], ["--readme", "is a folder"]),
        (["eval", "--readme", world / "note.txt" / "r.md"], ["--readme", "is a file"]),
        (["eval", "--pairs", "many"], ["--pairs", "many"]),
        (["eval", "--seed", "-1"], ["--seed"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_prefs_corpus(world, capsys):
    def prefs(*extra, out="p"):
        return ["prefs", "--data", world / "pairs", "--out", world / out, *extra]

    cases = [
        (prefs("--model", world / "nowhere"), ["--model", "does not exist"]),
        (prefs("--model", world / "user"), ["--model", "model_index.json"]),
        (prefs("--procedural", out="user"), ["--out", "did not write"]),
        (prefs("--procedural", out="pairs"), ["--out", "--data"]),
        (prefs("--procedural", out="note.txt"), ["--out", "is a file"]),
        (prefs("--procedural", "--shard-index", "3", "--num-shards", "2"), ["--shard-index"]),
        (prefs("--procedural", "--num", "0"), ["--num"]),
        (prefs("--procedural", "--num", "1000"), ["--num 1000", "2 pairs"]),
        (prefs("--procedural", "--steps", "0"), ["--steps"]),
        (prefs("--procedural", "--seed", "-1"), ["--seed"]),
        (prefs("--procedural", "--num-shards", "0"), ["--num-shards"]),
        (prefs("--procedural", "--device", "tpu"), ["--device", "tpu"]),
        (prefs("--procedural", "--model", world / "model"), ["--model", "--procedural"]),
        (prefs(), ["--model", "--procedural"]),
        (["prefs", "--data", world / "note.txt", "--out", world / "p", "--procedural"], ["--data", "is a file"]),
        (["prefs", "--data", world / "user", "--out", world / "p", "--procedural"], ["meta.json"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_train_vae_corpus(world, capsys):
    def vae(*extra, out="v"):
        return ["train-vae", "--data", world / "pairs", "--out", world / out, "--max-steps", "0", *extra]

    cases = [
        (vae("--eval", world / "nowhere"), ["--eval", "does not exist"]),
        (vae("--eval", world / "note.txt"), ["--eval", "is a file"]),
        (vae("--eval", world / "user"), ["--eval", "meta.json"]),
        (vae("--resume"), ["--resume", "--out", "no checkpoint"]),
        (vae("--export-only"), ["--export-only", "--out", "no checkpoint"]),
        (vae("--overwrite", "--resume"), ["--overwrite", "--resume"]),
        (vae(out="pairs"), ["--out", "--data"]),
        (vae(out="user"), ["--out", "did not write"]),
        (vae(out="note.txt"), ["--out", "is a file"]),
        (vae("--config", world / "user"), ["--config", "is a folder"]),
        (vae("--config", world / "bad.yaml"), ["bad.yaml", "not valid YAML"]),
        (vae("--config", world / "nowhere.yaml"), ["nowhere.yaml", "not found"]),
        (vae("--eval-pairs", "0"), ["--eval-pairs"]),
        (vae("--max-steps", "-1"), ["--max-steps"]),
        (["train-vae", "--data", world / "note.txt", "--out", world / "v"], ["--data", "is a file"]),
        (["train-vae", "--data", world / "user", "--out", world / "v"], ["meta.json"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)
