"""`scail2 cache` and `scail2 train` with a driving_scale 1 model: the cache takes the scale from the model folder
(or --driving-scale), records it in meta.json, and training refuses a model of the other scale in one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from scail2.cli import main
from scail2.data.latent_cache import LatentCache, check_cache_driving_scale
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.errors import Scail2Error
from tests.pipelines.components import tiny_pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
DIRECTANIMATOR_CONFIG = CONFIG.with_name("directanimator_tiny.yaml")
SYNTH = SynthConfig(height=32, width=64, frames=5, seed=7)  # latent 4x8: half resolution would be 2x4


def cache(root: Path, out: str, *extra: str) -> Path:
    args = ["cache", "--data", str(root / "data"), "--model", str(root / "model"), "--out", str(root / out)]
    assert main([*args, "--quiet", *extra]) == 0
    return root / out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A 4-pair dataset and a text- and image-free model folder whose transformer has driving_scale 1."""
    root = tmp_path_factory.mktemp("scale")
    assert write_dataset(ProceduralPairGenerator(SYNTH), root / "data", 4, shard_size=4, progress=False).complete
    tiny_pipeline(seed=0, text=False, image=False, driving_scale=1).save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def full_cache(root) -> Path:
    return cache(root, "cache-full")  # no flag: the model folder's scale


def train(root: Path, data: Path, out: str, scale: int, *extra: str) -> int:
    overrides = f"model.overrides={{model_type: t2v, driving_scale: {scale}}}"
    args = ["train", "--config", str(CONFIG), "--data", str(data), "--out", str(root / out), overrides]
    return main([*args, "train.max_steps=2", "train.log_every=1", "train.checkpoint_every=2", *extra])


def test_cache_takes_the_model_folders_scale_and_trains_at_it(root, full_cache):
    full = full_cache
    assert json.loads((full / "meta.json").read_text())["encoders"]["driving_scale"] == 1
    record = LatentCache(full)[0].tensors
    assert record["pose_latents"].shape == (16, 2, 4, 8) == record["target_latents"].shape
    assert record["driving_masks"].shape == (28, 2, 4, 8)
    assert train(root, full, "run", 1, "train.dependence_every=2", "train.dependence_samples=2") == 0
    assert (root / "run" / "checkpoints").is_dir()


def test_a_cache_of_the_other_scale_is_refused_in_one_line(root, full_cache, capsys):
    half = cache(root, "cache-half", "--driving-scale", "2")
    assert "driving_scale" not in json.loads((half / "meta.json").read_text())["encoders"]  # as before the field
    assert LatentCache(half)[0].tensors["pose_latents"].shape == (16, 2, 2, 4)
    capsys.readouterr()
    assert train(root, half, "refused", 1) != 0
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "2x4 for a 4x8 video latent (driving_scale 2, meta.json" in message
    assert "--driving-scale 1" in message and "model.overrides.driving_scale=2" in message
    assert not (root / "refused" / "checkpoints").exists()
    assert LatentCache(half).driving_scale == 2 and LatentCache(full_cache).driving_scale == 1
    with pytest.raises(Scail2Error, match="driving_scale 1, meta.json .* the model's driving_scale is 2"):
        check_cache_driving_scale(LatentCache(full_cache)[0].tensors, 2)
    with pytest.raises(Scail2Error) as refused:  # an added stream exists only at scale 1: re-caching is the fix
        check_cache_driving_scale(LatentCache(half)[0].tensors, 1, "add")
    assert "--driving-scale 1`" in str(refused.value) and "model.overrides" not in str(refused.value)


def test_a_bad_driving_scale_override_is_one_line(root, full_cache, capsys):
    capsys.readouterr()
    assert train(root, full_cache, "bad", 3) == 2
    message = capsys.readouterr().err.strip()
    assert (
        "\n" not in message and "model.overrides" in message and "driving_scale must be one of (1, 2), got 3" in message
    )


def test_directanimator_trains_on_a_cue_cache_made_with_a_scale_1_folder(root):
    # its student never reads the driving stream, so the stream's scale is not checked against it
    animation = dataclasses.replace(SYNTH, tasks=("animate",))
    write_dataset(ProceduralPairGenerator(animation), root / "animation", 2, shard_size=2, progress=False)
    args = ["cache", "--cues", "--cue-grid", "8", "--data", str(root / "animation"), "--model", str(root / "model")]
    assert main([*args, "--out", str(root / "cues"), "--quiet"]) == 0
    assert LatentCache(root / "cues")[0].tensors["pose_latents"].shape == (16, 2, 4, 8)
    args = ["train", "--config", str(DIRECTANIMATOR_CONFIG), "--data", str(root / "cues"), "--out", str(root / "da")]
    fast = ["directanimator.stage1.max_steps=1", "train.batch_size=2", "model.overrides={model_type: t2v}"]
    assert main([*args, *fast, f"model.components={root / 'model'}"]) == 0


def test_a_pose_cue_cache_trains_an_added_pose_cue_model_and_refuses_a_frames_one(root, full_cache, capsys):
    cues = cache(root, "cache-cue", "--driving-signal", "pose_cue")
    encoders = json.loads((cues / "meta.json").read_text())["encoders"]
    assert (encoders["driving_scale"], encoders["driving_signal"]) == (1, "pose_cue")
    assert "driving_signal" not in json.loads((full_cache / "meta.json").read_text())["encoders"]  # as before
    assert LatentCache(cues).driving_signal == "pose_cue" and LatentCache(full_cache).driving_signal == "frames"
    record, frames_record = LatentCache(cues)[0].tensors, LatentCache(full_cache)[0].tensors
    assert record["pose_latents"].shape == frames_record["pose_latents"].shape
    assert not torch.equal(record["pose_latents"], frames_record["pose_latents"])
    assert torch.equal(record["driving_masks"], frames_record["driving_masks"])
    added = "model.overrides={model_type: t2v, driving_scale: 1, driving_injection: add, driving_signal: pose_cue}"
    args = ["train", "--config", str(CONFIG), "--data", str(cues), "--out", str(root / "added")]
    assert main([*args, added, "train.max_steps=1", "train.log_every=1", "train.checkpoint_every=1"]) == 0
    saved = json.loads((root / "added" / "export" / "model" / "transformer" / "config.json").read_text())
    assert (saved["driving_injection"], saved["driving_signal"]) == ("add", "pose_cue")
    capsys.readouterr()
    assert train(root, cues, "refused-signal", 1) != 0
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "'pose_cue' signal (meta.json encoders.driving_signal)" in message
    assert "--driving-signal frames" in message and "model.overrides.driving_signal=pose_cue" in message


def test_the_cache_takes_the_model_folders_signal(tmp_path, root):
    folder = tmp_path / "model"
    tiny_pipeline(seed=0, text=False, image=False, driving_scale=1, driving_signal="pose_cue").save_pretrained(folder)
    args = ["cache", "--data", str(root / "data"), "--model", str(folder), "--out", str(tmp_path / "cache")]
    assert main([*args, "--quiet"]) == 0
    assert LatentCache(tmp_path / "cache").driving_signal == "pose_cue"


def test_a_pretrained_model_fine_tunes_into_the_added_pose_cue_layout(root, full_cache, capsys):
    cues = (
        root / "cache-cue"
        if (root / "cache-cue").is_dir()
        else cache(root, "cache-cue", "--driving-signal", "pose_cue")
    )
    layout = "model.overrides={driving_injection: add, driving_signal: pose_cue}"
    args = ["train", "--config", str(CONFIG), "--data", str(cues), f"model.pretrained={root / 'model'}"]
    fast = ["train.max_steps=1", "train.log_every=1", "train.checkpoint_every=1"]
    assert main([*args[:5], "--out", str(root / "tuned"), *args[5:], layout, *fast]) == 0
    saved = json.loads((root / "tuned" / "export" / "model" / "transformer" / "config.json").read_text())
    assert (saved["driving_scale"], saved["driving_injection"], saved["driving_signal"]) == (1, "add", "pose_cue")
    capsys.readouterr()
    refusals = {
        "wider": (["model.overrides={dim: 64, driving_injection: add}"], "would change dim of model.pretrained"),
        "shallower": (["model.overrides={num_layers: 1}"], "would change num_layers of model.pretrained"),
        "misspelt": (["model.overrides={driving_scal: 1}"], "would change driving_scal of model.pretrained"),
        "lora": (["model.overrides={driving_injection: add}", "lora.rank=4"], "saved without its base's layout"),
    }
    for out, (overrides, expected) in refusals.items():
        assert main([*args[:5], "--out", str(root / out), *args[5:], *overrides, *fast]) == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and expected in message, message
        assert not (root / out / "checkpoints").exists()
    same = "model.overrides={model_type: t2v, driving_scale: 1}"  # the folder's own values: nothing changes
    args[4] = str(full_cache)
    assert main([*args[:5], "--out", str(root / "same"), *args[5:], same, "lora.rank=4", *fast]) == 0
