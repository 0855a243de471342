"""`scail2 train` given bad configs, run folders and checkpoints: one line each, nothing written, and a planted
pickle payload in a run folder never runs (checkpoints are safetensors + JSON)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from scail2.cli import main
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.outputs import LOCK
from tests.commands.corpus import assert_refused, run
from tests.pipelines.components import tiny_pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
FAST = ["train.log_every=1", "train.checkpoint_every=1", "train.max_steps=1", "train.batch_size=2"]


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    generator = ProceduralPairGenerator(SynthConfig(height=32, width=64, frames=5, seed=5))
    write_dataset(generator, root / "data", 2, shard_size=2, progress=False)
    tiny_pipeline(seed=0, text=False, image=False).save_pretrained(root / "model")
    cache = ["cache", "--data", root / "data", "--model", root / "model", "--out", root / "cache", "--quiet"]
    assert main([str(a) for a in cache]) == 0
    assert train(root, root / "run", MODEL, *FAST) == 0  # one finished step to resume from
    (root / "user").mkdir()
    (root / "user" / "thesis.txt").write_text("years of work")
    return root


def train(world: Path, out: Path, *extra: str) -> int:
    return main(["train", "--config", str(CONFIG), "--data", str(world / "cache"), "--out", str(out), *extra])


MODEL = "model.overrides={model_type: t2v, text_dim: 20}"  # the cache of a model without encoders


def train_args(world: Path, out: Path, *flags, model: str = MODEL, overrides=()) -> list:
    return ["train", "--config", CONFIG, "--data", world / "cache", "--out", out, *flags, model, *FAST, *overrides]


def test_config_corpus(world, tmp_path, capsys):
    bad_utf8, top_list = tmp_path / "latin1.yaml", tmp_path / "list.yaml"
    bad_utf8.write_bytes("optim:\n  lr: 1.0e-4  # r\xe9glage\n".encode("latin-1"))
    top_list.write_text("- optim\n- train\n")
    new = world / "new-run"
    cases = [
        (["optim.lr=fast"], ["optim.lr", "fast"]),
        (["optim.lr=abc"], ["optim.lr", "abc"]),
        (["train.batch_size=four"], ["train.batch_size", "four"]),
        (["optim.betas=0.9"], ["optim.betas", "0.9"]),
        (["train.log_every=0"], ["train.log_every", "at least 1"]),
        (["train.checkpoint_every=0"], ["train.checkpoint_every", "at least 1"]),
        (["flow.augmentations=[{name: blur}]"], ["flow.augmentations[0].name", "blur", "latent_noise"]),
        (["optim.learning_rate=1"], ["optim.learning_rate", "known"]),
        (["train.seed=1.5"], ["train.seed", "1.5"]),
        (["lora.dropout=2"], ["lora.dropout"]),
        (["nonsense"], ["nonsense", "section.key=value"]),
    ]
    for extra, names in cases:
        assert_refused(capsys, train_args(world, new, overrides=extra), names, world)
    for config, names in ((bad_utf8, ["latin1.yaml", "UTF-8"]), (top_list, ["list.yaml", "mapping"])):
        args = ["train", "--config", config, "--data", world / "cache", "--out", new]
        assert_refused(capsys, args, names, world)
    assert_refused(
        capsys, ["train", "--data", world / "cache", "--out", new, "--max-steps", "-1"], ["--max-steps"], world
    )


def test_run_folder_corpus(world, capsys):
    run_folder = world / "run"
    cases = [
        (train_args(world, run_folder), ["--out", "--resume", "--overwrite"]),  # a second run would clobber it
        (train_args(world, world / "user"), ["--out", "did not write"]),
        (train_args(world, world / "user", "--overwrite"), ["--out", "did not write"]),
        (train_args(world, world / "user" / "thesis.txt"), ["--out", "is a file"]),
        (train_args(world, world / "cache"), ["--out", "--data"]),
        (train_args(world, run_folder, "--resume", "--overwrite"), ["--overwrite", "--resume"]),
        (
            train_args(world, run_folder, "--resume", model="model.overrides={model_type: t2v, text_dim: 20, dim: 48}"),
            ["another architecture", "dim"],
        ),
        (["train", "--data", world / "cache" / "meta.json", "--out", world / "new"], ["--data"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_crafted_member_names_are_refused(world, tmp_path, capsys):
    crafted = tmp_path / "cache"
    shutil.copytree(world / "cache", crafted)
    manifest = json.loads((crafted / "manifest.json").read_text())
    for name in ("../../outside.tar", "/etc/passwd", ""):
        manifest["shards"][0]["name"] = name
        (crafted / "manifest.json").write_text(json.dumps(manifest))
        args = ["train", "--config", CONFIG, "--data", crafted, "--out", tmp_path / "run", MODEL, *FAST]
        assert_refused(capsys, args, ["manifest.json", "not a plain file name"], tmp_path)


def test_overwrite_starts_a_run_again_without_old_checkpoints(world, tmp_path, capsys):
    run_folder = tmp_path / "run"
    shutil.copytree(world / "run", run_folder)
    (run_folder / "checkpoints" / "step-00000009").mkdir()  # a later checkpoint a restart must not leave behind
    (run_folder / LOCK).write_text("1")  # a live process (init) writes the folder: wait for it
    assert_refused(capsys, train_args(world, run_folder, "--overwrite"), ["--out", "another scail2 run"], tmp_path)
    (run_folder / LOCK).write_text("999999999")  # a killed run's lock is taken over
    code, _, err = run(capsys, *train_args(world, run_folder, "--overwrite"))
    assert code == 0, err
    assert sorted(p.name for p in (run_folder / "checkpoints").iterdir()) == ["step-00000001"]
    assert not (run_folder / LOCK).exists()


def test_a_planted_pickle_never_runs(world, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(Payload(marker))
    run_folder = tmp_path / "run"
    shutil.copytree(world / "run", run_folder)
    checkpoint = run_folder / "checkpoints" / "step-00000001"
    # 1. the older torch.distributed.checkpoint layout: a pickled .metadata where the safetensors were
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        (checkpoint / name).unlink()
    (checkpoint / ".metadata").write_bytes(payload)
    (checkpoint / "__0_0.distcp").write_bytes(payload)
    for flag in ("--resume", "--export-only"):
        assert_refused(capsys, train_args(world, run_folder, flag), ["unpickling", "not read"], tmp_path)
    # 2. a crafted checkpoint: pickle bytes under the safetensors names
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        (checkpoint / name).write_bytes(payload)
    for flag in ("--resume", "--export-only"):
        assert_refused(capsys, train_args(world, run_folder, flag), ["model.safetensors", "safetensors"], tmp_path)
    assert not marker.exists()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 1 and "architecture" in state
    (checkpoint / "trainer_state.json").write_text("[1]")  # 3. a damaged trainer state
    assert_refused(capsys, train_args(world, run_folder, "--resume"), ["trainer_state.json", "damaged"], tmp_path)


def test_a_disk_without_room_for_a_checkpoint_is_refused_before_training(world, tmp_path, capsys, monkeypatch):
    from collections import namedtuple

    from scail2 import outputs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    assert_refused(capsys, train_args(world, tmp_path / "run"), ["--out", "GiB are free"], tmp_path)
