"""What both trainers (the transformer's and the VAE's) share around their loss: the optimiser and its learning-rate
schedule, the EMA of the weights, checkpoint folders (rotation, resume discovery) and the run log.

    schedule = TrainingSchedule(config.optim, config.train.max_steps, trainable)
    lr, grad_norm = schedule.apply(loss, step)   # AdamW at the scheduled rate, gradient clipping, EMA

Learning rate: linear warm-up over `optim.warmup_steps`, then cosine decay to lr * min_lr_ratio at train.max_steps.
EMA: ema <- ema + (1 - d) * (param - ema) after every step, with d = optim.ema_decay, or with `optim.ema_warmup`
min(ema_decay, (1 + step) / (10 + step)), so a model trained from scratch forgets its random initialisation fast.
Sections: 1. config, 2. optimiser, schedule and EMA, 3. checkpoint folders, 4. the run log.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from scail2.data.format import read_json
from scail2.errors import Scail2Error
from scail2.optional import require

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"


# ------------------------------------------------------------------------------------------------------------
# 1. Config
# ------------------------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class OptimConfig:
    """The `optim:` section of both trainers' configs: AdamW, its learning-rate schedule and the EMA."""

    lr: float = 1e-4  # peak learning rate, reached at the end of the warm-up
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    warmup_steps: int = 10  # linear warm-up: lr * (step + 1) / warmup_steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at train.max_steps
    grad_clip: float = 1.0  # the global gradient L2 norm is clipped to this
    ema_decay: float | None = 0.999  # None: no EMA
    ema_warmup: bool = False  # decay min(ema_decay, (1 + step) / (10 + step)): forget a random init fast

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):  # YAML has no tuples
            self.betas = tuple(self.betas)
        for ok, message in self._checks():
            if not ok:
                raise Scail2Error(message)

    def _checks(self):
        betas_ok = (
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in self.betas)
        )
        warmup_ok = isinstance(self.warmup_steps, int) and not isinstance(self.warmup_steps, bool)
        return (
            (_is_number(self.lr) and self.lr > 0, f"optim.lr must be a positive number, got {self.lr!r}"),
            (betas_ok, f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got {self.betas!r}"),
            (_is_number(self.eps) and self.eps > 0, f"optim.eps must be a positive number, got {self.eps!r}"),
            (
                _is_number(self.weight_decay) and self.weight_decay >= 0,
                f"optim.weight_decay must be a number >= 0, got {self.weight_decay!r}",
            ),
            (
                warmup_ok and self.warmup_steps >= 0,
                f"optim.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}",
            ),
            (
                _is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
                f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}",
            ),
            (
                _is_number(self.grad_clip) and self.grad_clip > 0,
                f"optim.grad_clip must be a positive number, got {self.grad_clip!r}",
            ),
            (
                self.ema_decay is None or (_is_number(self.ema_decay) and 0 <= self.ema_decay < 1),
                f"optim.ema_decay must lie in [0, 1) (or be null: no EMA), got {self.ema_decay!r}",
            ),
            (isinstance(self.ema_warmup, bool), f"optim.ema_warmup must be true or false, got {self.ema_warmup!r}"),
        )


# ------------------------------------------------------------------------------------------------------------
# 2. Optimiser, learning-rate schedule and EMA
# ------------------------------------------------------------------------------------------------------------


def learning_rate(optim: OptimConfig, step: int, max_steps: int) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at `max_steps` (and flat after it)."""
    total = max(1, max_steps)
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay(optim: OptimConfig, step: int) -> float:
    if optim.ema_warmup:
        return min(optim.ema_decay, (1 + step) / (10 + step))
    return optim.ema_decay


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (FSDP2), or the tensor itself."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


class TrainingSchedule:
    """AdamW over the `trainable` parameters at the scheduled rate, with gradient clipping, and the EMA of the
    `tracked` ones (default: the trainable ones; a frozen tracked parameter's EMA stays its value)."""

    def __init__(
        self,
        optim: OptimConfig,
        max_steps: int,
        trainable: dict[str, torch.Tensor],
        tracked: dict[str, torch.Tensor] | None = None,
    ):
        self.optim, self.max_steps = optim, max_steps
        self.trainable = trainable
        self.tracked = trainable if tracked is None else tracked
        self.optimizer = torch.optim.AdamW(
            trainable.values(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.ema = {} if optim.ema_decay is None else {n: p.detach().clone() for n, p in self.tracked.items()}

    def learning_rate(self, step: int) -> float:
        return learning_rate(self.optim, step, self.max_steps)

    def apply(self, loss: torch.Tensor, step: int) -> tuple[float, float]:
        """Back-propagate `loss` and update the weights and the EMA; returns the learning rate of this step and
        the global gradient norm before clipping."""
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), self.optim.grad_clip))
        self.optimizer.step()
        self.update_ema(step)
        return lr, float(grad_norm)

    def update_ema(self, step: int) -> None:
        if not self.ema:
            return
        decay = ema_decay(self.optim, step)
        with torch.no_grad():
            for name, param in self.tracked.items():
                if param.requires_grad:
                    self.ema[name].lerp_(param.detach(), 1 - decay)


# ------------------------------------------------------------------------------------------------------------
# 3. Checkpoint folders
# ------------------------------------------------------------------------------------------------------------


class CheckpointFolders:
    """`RUN/checkpoints/step-NNNNNNNN/` folders. Each is written under a hidden `.partial` name and renamed once
    complete, so a killed run leaves only whole checkpoints; the newest `keep` are kept."""

    def __init__(self, run: Path, keep: int):
        self.run, self.root, self.keep = run, run / "checkpoints", keep

    def folder(self, step: int) -> Path:
        return self.root / f"{CHECKPOINT_PREFIX}{step:08d}"

    def partial(self, step: int) -> Path:
        return self.root / f".{self.folder(step).name}.partial"

    def begin(self, step: int) -> Path:
        """An empty `.partial` folder for `step` (whatever a killed run left there is removed)."""
        partial = self.partial(step)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return partial

    def commit(self, step: int, config: dict, **extra) -> Path:
        """Write the trainer state into the partial folder, rename it to its final name and prune older ones."""
        partial, final = self.partial(step), self.folder(step)
        (partial / TRAINER_STATE).write_text(json.dumps({"step": step, "config": config, **extra}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        self.prune()
        return final

    def latest(self) -> Path | None:
        """The newest finished checkpoint (unfinished ones have a leading dot and are never matched)."""
        found = sorted(self.root.glob(f"{CHECKPOINT_PREFIX}*"))
        return found[-1] if found else None

    def prune(self) -> None:
        for old in sorted(self.root.glob(f"{CHECKPOINT_PREFIX}*"))[: -self.keep]:
            shutil.rmtree(old)

    def resume(self) -> tuple[Path, dict]:
        """The newest checkpoint and its trainer state (`step`, `config`, ...), for --resume."""
        latest = self.latest()
        if latest is None:
            raise Scail2Error(f"{self.run}: no checkpoint to resume from; run without --resume to start")
        state = read_json(
            latest / TRAINER_STATE,
            missing_hint="the checkpoint is incomplete; delete it and resume from the one before",
            corrupt_hint="the checkpoint is damaged; delete it and resume from the one before",
        )
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not isinstance(state.get("config"), dict):
            raise Scail2Error(
                f"{latest / TRAINER_STATE} has no step count and config; the checkpoint is damaged: delete it and "
                "resume from the one before"
            )
        return latest, state


# ------------------------------------------------------------------------------------------------------------
# 4. The run log
# ------------------------------------------------------------------------------------------------------------


class RunLog:
    """RUN/config.json, RUN/metrics.jsonl (a row per logged step), a console line per logged step and, with
    `tensorboard`, TensorBoard scalars `train/<metric>` under RUN/tensorboard.

    `console` lists (metric, template) pairs: each metric present is printed with its template, after the step.
    """

    def __init__(self, run: Path, console: tuple[tuple[str, str], ...], tensorboard: bool = False):
        self.run, self.console, self.tensorboard = run, console, tensorboard
        self.writer = None

    def start(self, config: dict) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        (self.run / "config.json").write_text(json.dumps(config, indent=1))

    def line(self, step: int, metrics: dict[str, float]) -> str:
        fields = [template.format(metrics[name]) for name, template in self.console if name in metrics]
        return "  ".join([f"step {step:>6}", *fields])

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.tensorboard:
            self._scalars(step, metrics)
        with (self.run / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        print(self.line(step, metrics), flush=True)

    def _scalars(self, step: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            require("tensorboard", purpose="training logs")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run / "tensorboard"))
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
