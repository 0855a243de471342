"""The schedule both trainers share: the optimiser config and its errors, learning rate, EMA, checkpoint folders,
the run log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scail2.errors import Scail2Error
from scail2.train.config import load_config
from scail2.train.schedule import CheckpointFolders, OptimConfig, RunLog, TrainingSchedule, learning_rate
from scail2.train.vae import load_vae_config, vae_optim_defaults

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_each_trainer_keeps_its_own_optimiser_defaults():
    assert load_config(None).optim == OptimConfig()
    vae = load_vae_config(None, ["optim.lr=3e-4"]).optim
    assert vae == OptimConfig(
        lr=3e-4, betas=(0.9, 0.99), warmup_steps=50, min_lr_ratio=0.05, ema_decay=0.995, ema_warmup=True
    )
    assert load_vae_config(CONFIGS / "demo_vae.yaml").optim == vae_optim_defaults()
    assert load_config(CONFIGS / "tiny.yaml").optim.betas == (0.9, 0.95)  # a YAML list becomes a tuple


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=0", "optim.lr must be a positive number, got 0"),
        ("optim.lr=fast", "optim.lr must be a positive number, got 'fast'"),
        ("optim.betas=[0.9]", "optim.betas must be two numbers in \\[0, 1\\)"),
        ("optim.betas=[0.9, 1.5]", "optim.betas must be two numbers"),
        ("optim.eps=-1", "optim.eps must be a positive number"),
        ("optim.weight_decay=-0.1", "optim.weight_decay must be a number >= 0"),
        ("optim.warmup_steps=2.5", "optim.warmup_steps must be an integer >= 0, got 2.5"),
        ("optim.min_lr_ratio=2", "optim.min_lr_ratio must lie in \\[0, 1\\]"),
        ("optim.grad_clip=0", "optim.grad_clip must be a positive number"),
        ("optim.ema_decay=1", "optim.ema_decay must lie in \\[0, 1\\)"),
        ("optim.ema_warmup=maybe", "optim.ema_warmup must be true or false"),
    ],
)
def test_bad_optimiser_values_are_one_line_errors(override, message):
    for load, path in ((load_config, "tiny.yaml"), (load_vae_config, "demo_vae.yaml")):
        with pytest.raises(Scail2Error, match=message) as error:
            load(CONFIGS / path, [override])
        assert "\n" not in str(error.value)


def test_the_vae_needs_an_ema():
    assert load_config(CONFIGS / "tiny.yaml", ["optim.ema_decay=null"]).optim.ema_decay is None
    with pytest.raises(Scail2Error, match="optim.ema_decay must be a number for the VAE"):
        load_vae_config(CONFIGS / "demo_vae.yaml", ["optim.ema_decay=null"])


def test_learning_rate_warms_up_then_decays_to_its_floor():
    optim = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    rates = [learning_rate(optim, step, max_steps=14) for step in range(16)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0] and rates[4] == 1.0
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[9] == pytest.approx(0.55) and rates[14] == rates[15] == pytest.approx(0.1)
    assert learning_rate(OptimConfig(lr=2.0, warmup_steps=0), 0, max_steps=10) == 2.0


def test_ema_follows_the_trainable_parameters_and_warms_up():
    weight, frozen = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2), requires_grad=False)
    optim = OptimConfig(lr=0.1, warmup_steps=0, weight_decay=0.0, ema_decay=0.9, ema_warmup=True)
    schedule = TrainingSchedule(optim, 10, {"weight": weight}, tracked={"weight": weight, "frozen": frozen})
    lr, grad_norm = schedule.apply((weight - 1).square().sum(), step=0)
    assert lr == 0.1 and grad_norm == pytest.approx(2 * 3**0.5)
    # step 0 of the warm-up: decay 1/10, so the EMA moves 90% of the way to the new weights
    torch.testing.assert_close(schedule.ema["weight"], 0.9 * weight.detach())
    assert torch.equal(schedule.ema["frozen"], frozen)
    assert TrainingSchedule(OptimConfig(ema_decay=None), 10, {"weight": weight}).ema == {}


def test_checkpoint_folders_rotate_and_ignore_unfinished_ones(tmp_path):
    folders = CheckpointFolders(tmp_path, keep=2)
    with pytest.raises(Scail2Error, match="no checkpoint to resume from; run without --resume"):
        folders.resume()
    for step in (2, 4, 6):
        (folders.begin(step) / "weights").write_text(str(step))
        assert folders.commit(step, {"lr": 1}, world_size=1) == folders.folder(step)
    folders.begin(8)  # a run killed while writing step 8
    assert sorted(p.name for p in folders.root.iterdir()) == [
        ".step-00000008.partial",
        "step-00000004",
        "step-00000006",
    ]
    latest, state = folders.resume()
    assert latest.name == "step-00000006" and state == {"step": 6, "config": {"lr": 1}, "world_size": 1}
    assert (latest / "weights").read_text() == "6"


def test_run_log_writes_metrics_and_a_console_line(tmp_path, capsys):
    log = RunLog(tmp_path / "run", (("loss", "loss {:.3f}"), ("psnr", "psnr {:.1f}"), ("lr", "lr {:.1e}")))
    log.start({"optim": {"lr": 0.1}})
    log.write(3, {"loss": 0.5, "lr": 0.001})
    assert capsys.readouterr().out == "step      3  loss 0.500  lr 1.0e-03\n"  # absent metrics are left out
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text()) == {"step": 3, "loss": 0.5, "lr": 0.001}
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"optim": {"lr": 0.1}}
    assert not (tmp_path / "run" / "tensorboard").exists()
