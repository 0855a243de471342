"""Same2X: the S2X loss, the frozen teacher, the stage config, and both stages end to end through the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from scail2.animate import load_pipeline
from scail2.cli import main
from scail2.data.latent_cache import LatentCache
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.errors import Scail2Error
from scail2.pipelines.pipeline_directanimator import DirectAnimatorPipeline
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from scail2.train.config import load_config
from scail2.train.same2x import Same2XConfig, Same2XTrainer, default_s2x_block, s2x_loss
from tests.models.test_transformer_directanimator import cue_inputs, tiny_directanimator
from tests.pipelines.components import tiny_pipeline
from tests.pipelines.pinned.regenerate import pinned_inputs

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "directanimator_tiny.yaml"
FAST = ["train.log_every=1", "train.checkpoint_every=2", "train.batch_size=2", "model.overrides={model_type: t2v}"]

# ---------------------------------------------------------------------------------------------------------
# The loss and the teacher
# ---------------------------------------------------------------------------------------------------------


def test_s2x_is_zero_for_identical_models_and_one_minus_cosine_otherwise():
    student = tiny_directanimator(seed=2)
    teacher = copy.deepcopy(student).requires_grad_(False)
    inputs = cue_inputs(student, seed=1)
    states = student(**inputs, capture_block=1).block_hidden_states
    target = teacher(**inputs, capture_block=1, stop_after_capture=True).block_hidden_states
    assert float(s2x_loss(states, target).detach()) == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    by_hand = 1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    torch.testing.assert_close(s2x_loss(a, b), by_hand.mean())
    assert float(s2x_loss(a, -a)) == pytest.approx(2.0)


def test_the_s2x_gradient_reaches_only_the_student_up_to_block_d():
    student = tiny_directanimator(seed=3).train()
    teacher = copy.deepcopy(tiny_directanimator(seed=4)).eval().requires_grad_(False)
    inputs = cue_inputs(student, seed=2)
    same_id = {**inputs, "pose_cue_latents": inputs["pose_cue_latents"].flip(0)}
    states = student(**inputs, capture_block=1).block_hidden_states
    with torch.no_grad():
        target = teacher(**same_id, capture_block=1, stop_after_capture=True).block_hidden_states
    s2x_loss(states, target).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert student.cue_embedding_pose.weight.grad.abs().sum() > 0
    # block 2 and the head come after D = 1: S2X alone gives them nothing
    assert student.blocks[1].ffn[0].weight.grad is None and student.head.head.weight.grad is None


def test_stage_config_defaults_and_errors():
    config = Same2XConfig.from_dict({"stage2": {"from_model": "x"}})
    assert config.stage2.s2x_weight == 0.5 and config.stage1.s2x_weight == 0
    assert [default_s2x_block(n) for n in (2, 8, 40, 42)] == [1, 2, 10, 10]
    with pytest.raises(Scail2Error, match="from_model is required"):
        Same2XConfig.from_dict({"stage": 2})
    with pytest.raises(Scail2Error, match="directanimator.stage2.lambda"):
        Same2XConfig.from_dict({"stage2": {"lambda": 1}})


# ---------------------------------------------------------------------------------------------------------
# Both stages end to end
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("same2x")
    write_dataset(
        ProceduralPairGenerator(SynthConfig(height=32, width=64, frames=5, tasks=("animate",), seed=5)),
        root / "data",
        4,
        shard_size=2,
        progress=False,
    )
    tiny_pipeline(seed=0, text=False, image=False).save_pretrained(root / "model")
    args = ["cache", "--cues", "--data", root / "data", "--model", root / "model", "--out", root / "cache"]
    assert main([str(a) for a in [*args, "--quiet", "--cue-grid", "8"]]) == 0
    return root


def train(setup, out: Path, *extra: str) -> int:
    args = ["train", "--config", CONFIG, "--data", setup / "cache", "--out", out]
    return main([str(a) for a in [*args, *FAST, f"model.components={setup / 'model'}", *extra]])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_cue_cache_holds_both_triplets(setup):
    cache = LatentCache(setup / "cache")
    tensors = cache[0].tensors
    assert tensors["same_pose_latents"].shape == tensors["target_latents"].shape
    assert tensors["cross_face_masks"].shape == (4, *tensors["target_latents"].shape[1:])
    assert not torch.equal(tensors["same_pose_latents"], tensors["cross_pose_latents"])
    assert cache.meta["encoders"]["cues"]["grid"] == 8


def test_two_stages_end_to_end_then_generation(setup, tmp_path):
    stage1, stage2 = tmp_path / "s1", tmp_path / "s2"
    # a high learning rate, so that two steps move the cue modules off zero and the cues matter
    assert train(setup, stage1, "directanimator.stage1.max_steps=2", "directanimator.stage1.lr=0.05") == 0
    assert "s2x" not in metrics(stage1)[-1]
    exported1 = stage1 / "export" / "model"
    index = json.loads((exported1 / "model_index.json").read_text())
    assert index["_class_name"] == "DirectAnimatorPipeline" and index["cue_settings"]["grid"] == 8

    stage2_args = ["directanimator.stage=2", f"directanimator.stage2.from_model={exported1}"]
    validation = ["train.validate_every=2", "train.validation_steps=1"]  # from the cross-ID cues it trains on
    assert train(setup, stage2, *stage2_args, "directanimator.stage2.max_steps=2", *validation) == 0
    assert (stage2 / "validation" / "step-00000002.mp4").is_file()
    rows = metrics(stage2)
    assert len(rows) == 2 and all(row["s2x"] > 0 for row in rows)
    assert rows[1]["loss"] == pytest.approx(rows[1]["flow_loss"] + 0.5 * rows[1]["s2x"], rel=1e-5)

    pipeline = load_pipeline(stage2 / "export" / "model", torch.device("cpu"))
    assert isinstance(pipeline, DirectAnimatorPipeline)
    settings = SamplingSettings(sampler="euler", steps=1, shift=3.0, guidance_scale=1.0, segment_length=5)
    frames = pipeline(pinned_inputs(5, "animate"), settings, progress=False).frames
    assert frames.shape == (5, 32, 64, 3)


def test_a_validation_video_is_written_at_its_step_from_the_cue_model(setup, tmp_path):
    from scail2.preprocess.video_io import probe_video

    run = tmp_path / "s1"
    every = ["train.validate_every=2", "train.validation_steps=1", "train.checkpoint_every=3"]
    assert train(setup, run, "directanimator.stage1.max_steps=3", *every) == 0
    # written once, at step 2 (not 1 or 3), as one finished file (no partial file left beside it)
    assert [p.name for p in (run / "validation").iterdir()] == ["step-00000002.mp4"]
    info = probe_video(run / "validation" / "step-00000002.mp4")
    assert (info.width, info.height, info.declared_frames) == (2 * 64, 32, 5)  # target | generated


def test_the_teacher_is_frozen_and_outside_the_optimiser(setup, tmp_path):
    assert train(setup, tmp_path / "s1", "directanimator.stage1.max_steps=1") == 0
    overrides = [
        *FAST,
        f"model.components={setup / 'model'}",
        "directanimator.stage=2",
        f"directanimator.stage2.from_model={tmp_path / 's1' / 'export' / 'model'}",
    ]
    trainer = Same2XTrainer(load_config(CONFIG, overrides), setup / "cache", tmp_path / "s2")
    teacher = {id(p) for p in trainer.teacher.parameters()}
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert not teacher & {id(p) for group in trainer.schedule.optimizer.param_groups for p in group["params"]}
    assert trainer.s2x_block == 1 and trainer.config.train.max_steps == 40
    # at the start of stage 2 the student is the teacher: S2X is zero on the teacher's own (same-ID) cues
    batch = trainer.local_batch(0)
    same = {k.removeprefix("teacher_"): v for k, v in batch.items() if k.startswith("teacher_")}
    shared = {k: v for k, v in batch.items() if k not in ("target", "loss_mask") and not k.startswith("teacher_")}
    with torch.no_grad():
        student = trainer.model(**{**shared, **same}, capture_block=1).block_hidden_states
        target = trainer.teacher(**{**shared, **same}, capture_block=1, stop_after_capture=True).block_hidden_states
    assert float(s2x_loss(student, target)) == pytest.approx(0.0, abs=1e-6)


def test_a_cache_without_cues_is_refused(tmp_path):
    root = tmp_path
    write_dataset(
        ProceduralPairGenerator(SynthConfig(height=32, width=64, frames=5, tasks=("animate",), seed=1)),
        root / "data",
        2,
        shard_size=2,
        progress=False,
    )
    tiny_pipeline(seed=0, text=False, image=False).save_pretrained(root / "model")
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
                "--quiet",
            ]
        )
        == 0
    )
    with pytest.raises(Scail2Error, match="scail2 cache --cues"):
        Same2XTrainer(load_config(CONFIG, FAST), root / "cache", root / "run")


def test_two_process_fsdp2_stage_two_follows_the_single_process_run(setup, tmp_path):
    """Student and frozen teacher both sharded per block on two gloo processes: the same losses and S2X."""
    import os
    import subprocess
    import sys

    assert train(setup, tmp_path / "s1", "directanimator.stage1.max_steps=2", "directanimator.stage1.lr=0.05") == 0
    stage2 = [
        "directanimator.stage=2",
        f"directanimator.stage2.from_model={tmp_path / 's1' / 'export' / 'model'}",
        "directanimator.stage2.max_steps=2",
    ]
    assert train(setup, tmp_path / "one", *stage2) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    command += ["scail2.cli", "train", "--config", CONFIG, "--data", setup / "cache", "--out", tmp_path / "two"]
    command += [*FAST, f"model.components={setup / 'model'}", *stage2]
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for one, two in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        for key in ("loss", "flow_loss", "s2x"):
            assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-7), (key, one, two)


def test_a_run_without_the_face_cue_resumes_and_leaves_the_face_embedding_alone(setup, tmp_path):
    run, ablation = tmp_path / "s1", ["directanimator.face_cue=false", "train.checkpoint_every=1"]
    assert train(setup, run, "directanimator.stage1.max_steps=1", *ablation) == 0
    assert train(setup, run, "directanimator.stage1.max_steps=2", *ablation, "--resume") == 0
    assert [row["step"] for row in metrics(run)] == [1, 2]
    trainer = Same2XTrainer(
        load_config(CONFIG, [*FAST, f"model.components={setup / 'model'}", *ablation]),
        setup / "cache",
        tmp_path / "fresh",
    )
    assert not any(p.requires_grad for p in trainer.model.cue_embedding_face.parameters())
