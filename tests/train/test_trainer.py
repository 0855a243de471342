"""Training end to end through the CLI: cache, train, resume, FSDP2 on two processes, LoRA, export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scail2.cli import main
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.errors import Scail2Error
from scail2.train.config import load_config
from scail2.train.data import BatchPlan
from tests.pipelines.components import tiny_pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
QUIET = ["train.log_every=1", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_dataset(
        ProceduralPairGenerator(SynthConfig(height=64, width=96, frames=9, seed=5)),
        root / "data",
        8,
        shard_size=3,
        progress=False,
    )
    tiny_pipeline(seed=0).save_pretrained(root / "model")
    assert (
        main(
            [
                "cache",
                "--data",
                str(root / "data"),
                "--model",
                str(root / "model"),
                "--out",
                str(root / "cache"),
                "--text-len",
                "7",
                "--quiet",
            ]
        )
        == 0
    )
    return root


def train(setup, out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--config",
            str(CONFIG),
            "--data",
            str(setup / "cache"),
            "--out",
            str(out),
            *extra,
            f"model.components={setup / 'model'}",
            *QUIET,
        ]
    )


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def exported_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next((run / "export" / "model" / "transformer").glob("*.safetensors"))))


def test_resumed_run_equals_an_uninterrupted_one(setup, tmp_path):
    assert (
        train(setup, tmp_path / "whole", "train.max_steps=4", "train.validate_every=4", "train.validation_steps=2") == 0
    )
    video = tmp_path / "whole" / "validation" / "step-00000004.mp4"
    from scail2.preprocess.video_io import probe_video

    info = probe_video(video)
    assert (info.width, info.height, info.declared_frames) == (2 * 96, 64, 9)  # target | generated
    assert train(setup, tmp_path / "split", "--max-steps", "2", "train.max_steps=4") == 0
    assert not (tmp_path / "split" / "export").exists()  # stopped early: no release yet
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["step-00000002"]
    assert train(setup, tmp_path / "split", "--resume", "train.max_steps=4") == 0
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    whole, split = exported_weights(tmp_path / "whole"), exported_weights(tmp_path / "split")
    for key in whole:
        assert torch.equal(whole[key], split[key]), key


def test_two_process_fsdp2_follows_the_single_process_trajectory(setup, tmp_path):
    """Two processes stop at step 2 (a gathered checkpoint) and resume to step 3 (each keeps its shard)."""
    assert train(setup, tmp_path / "one", "train.max_steps=3") == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "scail2.cli",
        "train",
        "--config",
        str(CONFIG),
        "--data",
        str(setup / "cache"),
        "--out",
        str(tmp_path / "two"),
    ]
    overrides = [f"model.components={setup / 'model'}", "train.max_steps=3", *QUIET]
    for flags in (["--max-steps", "2"], ["--resume"]):
        result = subprocess.run([*command, *flags, *overrides], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() == {1, 2, 3}
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    a, b = exported_weights(tmp_path / "one"), exported_weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


def test_loss_falls_on_a_tiny_overfit_set(setup, tmp_path):
    overrides = [
        "train.max_steps=60",
        "train.batch_size=2",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "optim.ema_decay=null",
        "flow.text_dropout=0",
        "flow.history_probability=0",
        "flow.augmentations=[]",
        "train.checkpoint_every=60",
    ]
    assert train(setup, tmp_path / "fit", *overrides) == 0
    curve = losses(tmp_path / "fit")
    first, last = sum(curve[s] for s in range(1, 11)) / 10, sum(curve[s] for s in range(51, 61)) / 10
    assert last < 0.85 * first, (first, last)  # seeded, so this is not a flaky bound


def test_exported_model_and_lora_run_in_animate(setup, tmp_path):
    from tests.pipelines.media import (
        moving_square_frames,
        square_masks,
        write_mask_folder,
        write_reference,
        write_reference_mask,
        write_video,
    )

    assert train(setup, tmp_path / "full", "train.max_steps=2") == 0
    # LoRA fine-tunes a trained base (a from-scratch model's zero output head would give LoRA no gradient)
    assert (
        train(
            setup,
            tmp_path / "lora",
            "train.max_steps=2",
            "lora.rank=4",
            "optim.lr=1e-2",
            f"model.pretrained={setup / 'model'}",
        )
        == 0
    )
    lora_dir = tmp_path / "lora" / "export" / "lora"
    tensors = load_file(str(lora_dir / "adapter_model.safetensors"))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".lora_B." in k)  # trained away from zero init
    checkpoint = next((tmp_path / "lora" / "checkpoints").iterdir())
    base_bytes = sum(f.stat().st_size for f in (tmp_path / "full" / "checkpoints").rglob("*") if f.is_file())
    lora_bytes = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    assert lora_bytes < base_bytes  # LoRA checkpoints leave the frozen base out

    files = {
        "driving": write_video(tmp_path / "d.mp4", moving_square_frames(9, 64, 96)),
        "masks": write_mask_folder(tmp_path / "m", square_masks(9, 64, 96)),
        "ref": write_reference(tmp_path / "r.png", 64, 96),
        "ref_mask": write_reference_mask(tmp_path / "rm.png", 64, 96),
    }
    common = [
        "--ref",
        str(files["ref"]),
        "--ref-mask",
        str(files["ref_mask"]),
        "--driving",
        str(files["driving"]),
        "--driving-mask",
        str(files["masks"]),
        "--height",
        "64",
        "--width",
        "96",
        "--steps",
        "2",
        "--sampler",
        "euler",
    ]
    model = tmp_path / "full" / "export" / "model"
    assert main(["animate", "--model", str(model), "--out", str(tmp_path / "a.mp4"), *common]) == 0
    assert (
        main(
            [
                "animate",
                "--model",
                str(setup / "model"),
                "--lora",
                str(lora_dir),
                "--out",
                str(tmp_path / "b.mp4"),
                *common,
            ]
        )
        == 0
    )


def test_killed_cache_run_resumes_to_identical_shards(setup, tmp_path, monkeypatch):
    import scail2.data.latent_cache as cache_module

    original, calls = cache_module.cache_shard, []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_module, "cache_shard", dies_on_second_shard)
    args = [
        "cache",
        "--data",
        str(setup / "data"),
        "--model",
        str(setup / "model"),
        "--out",
        str(tmp_path / "c"),
        "--text-len",
        "7",
        "--quiet",
    ]
    assert main(args) == 130
    assert not (tmp_path / "c" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "c").glob("cache-*.tar")) == ["cache-00000.tar"]
    monkeypatch.undo()
    assert main(args) == 0
    for shard in sorted((setup / "cache").glob("cache-*.tar")):
        assert (tmp_path / "c" / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_batch_plan_is_independent_of_process_count():
    shapes = [(16, 3, 8, 12)] * 10 + [(16, 5, 8, 8)] * 7
    plan = BatchPlan(shapes, batch_size=4, seed=3)
    assert plan.batches_per_epoch == 2 + 1
    for step in range(7):
        batch = plan.global_batch(step)
        assert len({shapes[i] for i in batch}) == 1  # never mixes latent shapes
        assert plan.local_batch(step, 0, 2) + plan.local_batch(step, 1, 2) == batch
    epoch = [i for s in range(3) for i in plan.global_batch(s)]
    assert len(set(epoch)) == 12  # each sample at most once per epoch
    assert BatchPlan(shapes, 4, 3).global_batch(5) == plan.global_batch(5)


def test_config_errors_and_overrides(tmp_path):
    config = load_config(CONFIG, ["optim.lr=5e-4", "flow.shift=3", "lora.target_modules=[q, v]"])
    assert config.optim.lr == 5e-4 and config.flow.shift == 3 and config.lora.target_modules == ["q", "v"]
    with pytest.raises(Scail2Error, match="unknown config key"):
        load_config(CONFIG, ["optim.learning_rate=1"])
    with pytest.raises(Scail2Error, match="train.stage"):
        load_config(CONFIG, ["train.stage=finetune"])
    with pytest.raises(Scail2Error, match="not found"):
        load_config(tmp_path / "none.yaml")


def test_cache_of_another_model_is_refused(setup, tmp_path, capsys):
    shutil.copytree(setup / "cache", tmp_path / "cache")
    assert (
        main(
            [
                "train",
                "--config",
                str(CONFIG),
                "--data",
                str(tmp_path / "cache"),
                "--out",
                str(tmp_path / "r"),
                "model.overrides={text_dim: 16}",
            ]
        )
        == 2
    )
    assert "text_dim" in capsys.readouterr().err


def test_dpo_stage_trains_a_lora_on_preference_pairs(setup, tmp_path, capsys):
    assert (
        main(
            [
                "prefs",
                "--data",
                str(setup / "data"),
                "--out",
                str(tmp_path / "prefs"),
                "--procedural",
                "--num",
                "4",
                "--seed",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "cache",
                "--data",
                str(tmp_path / "prefs"),
                "--model",
                str(setup / "model"),
                "--out",
                str(tmp_path / "pcache"),
                "--text-len",
                "7",
                "--quiet",
            ]
        )
        == 0
    )
    # the plain cache has no losers: the stage refuses it with one line
    assert (
        main(
            [
                "train",
                "--config",
                str(CONFIG),
                "--data",
                str(setup / "cache"),
                "--out",
                str(tmp_path / "no"),
                "--stage",
                "dpo",
                f"model.pretrained={setup / 'model'}",
            ]
        )
        == 2
    )
    assert "without losers" in capsys.readouterr().err
    args = [
        "train",
        "--config",
        str(CONFIG),
        "--data",
        str(tmp_path / "pcache"),
        "--out",
        str(tmp_path / "dpo"),
        "--stage",
        "dpo",
        f"model.pretrained={setup / 'model'}",
        "dpo.steps=3",
        "dpo.lora_rank=4",
        "dpo.learning_rate=1e-3",
        "train.batch_size=2",
        *QUIET,
    ]
    assert main(args) == 0
    run = tmp_path / "dpo"
    config = json.loads((run / "config.json").read_text())
    assert config["lora"]["rank"] == 4 and config["train"]["max_steps"] == 3 and config["flow"]["text_dropout"] == 0
    curve = losses(run)
    assert set(curve) == {1, 2, 3} and abs(curve[1] - 0.6931) < 0.05  # log 2: the policy starts as the reference
    adapter = json.loads((run / "export" / "lora" / "adapter_config.json").read_text())
    assert adapter["r"] == 4


def test_export_dtype_stores_the_same_weights_in_half_precision(setup, tmp_path):
    assert train(setup, tmp_path / "fp32", "train.max_steps=2") == 0
    assert train(setup, tmp_path / "fp16", "train.max_steps=2", "train.export_dtype=float16") == 0
    full, half = exported_weights(tmp_path / "fp32"), exported_weights(tmp_path / "fp16")
    assert full.keys() == half.keys()
    for key in full:
        assert half[key].dtype == torch.float16 and torch.equal(half[key], full[key].half()), key
    with pytest.raises(Scail2Error, match="export_dtype"):
        load_config(str(CONFIG), ["train.export_dtype=int8"])


def test_cache_holds_character_coverage_and_foreground_weight_raises_the_loss(setup, tmp_path):
    from types import SimpleNamespace

    from scail2.conditioning import mask_to_latent
    from scail2.data.latent_cache import LatentCache
    from scail2.data.shards import MotionPairDataset, read_shard
    from scail2.train.trainer import Trainer

    record = LatentCache(setup / "cache")[0]
    sample = next(iter(read_shard(MotionPairDataset(setup / "data", verify=False).shard_paths[0])))
    assert record.key == sample.key
    coverage = record.tensors["target_masks"]
    latent = record.tensors["target_latents"]
    assert coverage.shape == (1, *latent.shape[1:]) and 0 < coverage.max() <= 1 and coverage.min() >= 0
    torch.testing.assert_close(coverage, mask_to_latent(sample.target_ids, tuple(latent.shape[-2:])))
    # a frame whose left half is character: the latent cells of that half are fully covered, the others empty
    ids = np.zeros((5, 16, 24), np.uint8)
    ids[:, :, :12] = 2
    half = mask_to_latent(ids, (2, 3))
    assert half.shape == (1, 2, 2, 3) and torch.equal(half[..., :1], torch.ones(1, 2, 2, 1))
    assert torch.equal(half[..., 2:], torch.zeros(1, 2, 2, 1))

    assert train(setup, tmp_path / "plain", "train.max_steps=2") == 0
    assert train(setup, tmp_path / "fg", "train.max_steps=2", "flow.foreground_weight=4") == 0
    assert losses(tmp_path / "fg")[1] > losses(tmp_path / "plain")[1]  # same draws, weights >= 1
    fake = SimpleNamespace(config=SimpleNamespace(flow=SimpleNamespace(foreground_weight=4.0)))
    with pytest.raises(Scail2Error, match="target_masks"):
        Trainer._foreground_weights(fake, {"target_latents": latent})
    with pytest.raises(Scail2Error, match="foreground_weight"):
        load_config(str(CONFIG), ["flow.foreground_weight=-1"])


def split_cache(whole: Path, out: Path, shard_names: list[str]) -> Path:
    """A finished cache holding some of `whole`'s shards (copied, with their own manifest)."""
    from scail2.data.latent_cache import LATENT_CACHE

    out.mkdir(parents=True)
    shutil.copy(whole / "meta.json", out / "meta.json")
    records = [r for r in json.loads((whole / "manifest.json").read_text())["shards"] if r["name"] in shard_names]
    for record in records:
        shutil.copy(whole / record["name"], out / record["name"])
    LATENT_CACHE.write_manifest(out, records, num_samples=sum(r["count"] for r in records))
    return out


def test_a_mixture_of_caches_trains_like_the_cache_they_came_from(setup, tmp_path):
    from scail2.data.latent_cache import LatentCache, LatentCacheMixture, open_latent_caches

    names = [r["name"] for r in json.loads((setup / "cache" / "manifest.json").read_text())["shards"]]
    assert len(names) == 3  # 8 pairs in shards of 3, 3, 2
    first = split_cache(setup / "cache", tmp_path / "first", names[:2])
    last = split_cache(setup / "cache", tmp_path / "last", names[2:])
    mixture, whole = open_latent_caches([first, last]), LatentCache(setup / "cache")
    assert isinstance(mixture, LatentCacheMixture) and (len(mixture), len(whole)) == (8, 8)
    assert [mixture[i].key for i in range(8)] == [whole[i].key for i in range(8)]
    assert mixture.shapes == whole.shapes and mixture.driving_signal == whole.driving_signal
    assert isinstance(open_latent_caches([first]), LatentCache)
    # Same samples in the same order: the same trajectory, step for step (to the last bits: two runs of one cache
    # in one process already differ there, by 1e-8 in the weights, from the CPU kernels' summation order).
    steps = ["train.max_steps=3"]
    assert train(setup, tmp_path / "whole", *steps) == 0
    mixed = ["--data", str(first), "--data", str(last)]
    assert main(["train", "--config", str(CONFIG), *mixed, "--out", str(tmp_path / "mixed"), *steps,
                 f"model.components={setup / 'model'}", *QUIET]) == 0  # fmt: skip
    whole_losses, mixed_losses = losses(tmp_path / "whole"), losses(tmp_path / "mixed")
    assert sorted(mixed_losses) == [1, 2, 3]
    assert all(abs(mixed_losses[s] - whole_losses[s]) < 1e-5 * whole_losses[s] for s in whole_losses)
    whole_weights, mixed_weights = exported_weights(tmp_path / "whole"), exported_weights(tmp_path / "mixed")
    for name in whole_weights:
        torch.testing.assert_close(mixed_weights[name], whole_weights[name], rtol=0, atol=1e-6, msg=name)
    # A different mixture (the last shard twice, the first two left out) trains on other samples.
    assert main(["train", "--config", str(CONFIG), "--data", str(last), "--data", str(last), "--out",
                 str(tmp_path / "other"), *steps, f"model.components={setup / 'model'}", *QUIET]) == 0  # fmt: skip
    assert abs(losses(tmp_path / "other")[1] - whole_losses[1]) > 1e-3


def test_caches_encoded_unlike_are_not_mixed(setup, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(setup / "cache", other)
    meta = json.loads((other / "meta.json").read_text())
    meta["encoders"]["driving_scale"] = 1
    (other / "meta.json").write_text(json.dumps(meta))
    code = main(["train", "--config", str(CONFIG), "--data", str(setup / "cache"), "--data", str(other),
                 "--out", str(tmp_path / "r"), f"model.components={setup / 'model'}"])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert f"--data {other}" in error and "driving_scale" in error and str(setup / "cache") in error
    out_inside = main(["train", "--config", str(CONFIG), "--data", str(setup / "cache"), "--data", str(other),
                       "--out", str(other / "run")])  # fmt: skip
    assert out_inside == 2 and "--data[2]" in capsys.readouterr().err


def test_caches_of_another_vae_are_not_mixed(setup, tmp_path):
    """Encoders described alike in meta.json, but records of another latent width: refused before training."""
    from scail2.data.latent_cache import LATENT_CACHE, LatentCache, cache_shard, open_latent_caches

    whole = LatentCache(setup / "cache")
    recorded = {whole[i].key: whole[i].tensors for i in range(len(whole))}

    class NarrowerVae:  # stands in for a cache encoder whose VAE has one latent channel fewer
        def encode(self, sample):
            tensors = dict(recorded[sample.key])
            tensors["target_latents"] = tensors["target_latents"][:-1].contiguous()
            return tensors

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(setup / "cache" / "meta.json", other / "meta.json")
    source = sorted((setup / "data").glob("*.tar"))[0]
    record = cache_shard(NarrowerVae(), source, other / "cache-00000.tar")
    LATENT_CACHE.write_manifest(other, [record], num_samples=record["count"])
    assert len(LatentCache(other)) == 3
    with pytest.raises(Scail2Error, match=r"--data .*other holds other tensors .*target_latents differ"):
        open_latent_caches([setup / "cache", other])
