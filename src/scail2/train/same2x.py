"""Same2X training of DirectAnimator (`scail2 train --recipe directanimator`): two stages over one cue cache.

    stage 1   same-identity cues (from the target video itself); flow matching
    stage 2   cross-identity cues (from the MotionPair driving video: the same motion by another identity), the
              real target kept; flow matching + lambda * S2X, where
              S2X = mean over video tokens of (1 - cos(h_student, h_teacher)) at the output of block D,
              h_teacher from a frozen copy of the stage-1 model given the same-identity cues (same noisy
              latent, timestep, reference and text)

The config's `directanimator:` section holds the stage to run and one section per stage:

    directanimator:
      stage: 1                      # which stage this run trains
      stage1: {max_steps: 200, lr: 1.0e-4}
      stage2: {max_steps: 400, lr: 1.0e-4, s2x_weight: 0.5, s2x_block: null, from_model: runs/s1/export/model}
      face_cue: true                # false: the "without face cue" ablation
      location_cue: true            # false: cue masks zeroed (the "without location cue" ablation)
      cue_frame_dropout: 0.0        # per latent frame, chance the student's pose cue and mask are zeroed

Stage 2 starts from the stage-1 model (`from_model`) and keeps a frozen copy of it as the teacher: forward
only, up to block D, no gradients (requires_grad False), no optimiser state, not in the checkpoints, and under
FSDP2 sharded block by block like the student. D defaults to the paper's 10 of 42 blocks scaled to the model's
depth (round(num_layers * 10 / 42), at least 1); lambda to the paper's 0.5. `s2x_weight: 0` in stage 2 is the
"without Same2X" ablation (cross-ID cues, no teacher). Choices where the paper is silent: the teacher is frozen;
S2X averages over the video tokens only (the reference frame's tokens are left out) and over the batch; the
student's flow-matching loss is the project's (foreground weighting and history frames as configured).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from scail2.conditioning.cues import CueConditions
from scail2.data.cue_cache import CUE_FIELDS, cue_field_names
from scail2.diffusion import flow_matching
from scail2.errors import Scail2Error
from scail2.models.transformer_directanimator import DirectAnimatorTransformer3DModel
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.pipelines.pipeline_directanimator import PIPELINE_CLASS_NAME, cue_velocity
from scail2.train.config import TrainConfig, build_section
from scail2.train.data import sample_generator
from scail2.train.export import gather_weights, write_model_folder
from scail2.train.trainer import Trainer, model_from_preset, transformer_folder

# The paper's alignment depth (block 10 of CogVideoX's 42) and weight.
PAPER_S2X_BLOCK, PAPER_NUM_LAYERS, PAPER_S2X_WEIGHT = 10, 42, 0.5
TEACHER_PREFIX = "teacher_"

# ------------------------------------------------------------------------------------------------------------
# 1. Config
# ------------------------------------------------------------------------------------------------------------


@dataclass
class StageConfig:
    max_steps: int | None = None  # None: train.max_steps
    lr: float | None = None  # None: optim.lr
    s2x_weight: float = 0.0  # lambda of the S2X loss (stage 2 only)
    s2x_block: int | None = None  # D, 1-based; None: the paper's depth scaled to the model
    from_model: str | None = None  # stage 2: the stage-1 model folder (student start and frozen teacher)


@dataclass
class Same2XConfig:
    stage: int = 1
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(s2x_weight=PAPER_S2X_WEIGHT))
    face_cue: bool = True
    location_cue: bool = True
    cue_frame_dropout: float = 0.0

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise Scail2Error(f"directanimator.stage must be 1 or 2, got {self.stage!r}")
        if not 0 <= self.cue_frame_dropout < 1:
            raise Scail2Error(f"directanimator.cue_frame_dropout must lie in [0, 1), got {self.cue_frame_dropout}")
        if self.stage2.s2x_weight < 0 or self.stage1.s2x_weight:
            raise Scail2Error("directanimator.stage2.s2x_weight must be >= 0, and stage 1 has no S2X loss")
        if self.stage == 2 and not self.stage2.from_model:
            raise Scail2Error(
                "directanimator.stage2.from_model is required for stage 2: the stage-1 model folder "
                "(e.g. runs/stage1/export/model)"
            )

    @property
    def current(self) -> StageConfig:
        return self.stage1 if self.stage == 1 else self.stage2

    @classmethod
    def from_dict(cls, values: dict) -> Same2XConfig:
        """The `directanimator:` section, typed and checked like every other section of the config."""
        return build_section(cls, values, "directanimator")


def default_s2x_block(num_layers: int) -> int:
    """The paper's D = 10 of 42 blocks, scaled to `num_layers` (at least block 1)."""
    return max(1, round(num_layers * PAPER_S2X_BLOCK / PAPER_NUM_LAYERS))


def stage_config(config: TrainConfig, same2x: Same2XConfig) -> TrainConfig:
    """The training config of the stage that runs: its step count and learning rate in place."""
    stage = same2x.current
    return dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, max_steps=stage.max_steps or config.train.max_steps),
        optim=dataclasses.replace(config.optim, lr=stage.lr or config.optim.lr),
    )


# ------------------------------------------------------------------------------------------------------------
# 2. The S2X loss
# ------------------------------------------------------------------------------------------------------------


def s2x_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens (and batch) of 1 - cos(student, teacher), hidden states [B, N, dim]; the teacher's side
    carries no gradient."""
    return (1 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)).mean()


# ------------------------------------------------------------------------------------------------------------
# 3. Models
# ------------------------------------------------------------------------------------------------------------


def load_directanimator(path: str | Path) -> DirectAnimatorTransformer3DModel:
    """A DirectAnimator transformer folder as is, or a SCAIL-2/Wan one with the cue modules added at zero."""
    folder = transformer_folder(path)
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") == DirectAnimatorTransformer3DModel.__name__:
        return DirectAnimatorTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32)
    backbone = SCAIL2Transformer3DModel.from_pretrained(folder, torch_dtype=torch.float32)
    return DirectAnimatorTransformer3DModel.from_scail2(backbone)


def frozen_teacher(path: str | Path, device: torch.device) -> DirectAnimatorTransformer3DModel:
    """The stage-1 model for S2X: eval mode, no parameter requires a gradient."""
    teacher = load_directanimator(path).eval().requires_grad_(False)
    return teacher.to(device)


# ------------------------------------------------------------------------------------------------------------
# 4. The trainer
# ------------------------------------------------------------------------------------------------------------


class Same2XTrainer(Trainer):
    """`Trainer` with a DirectAnimator student, cue inputs from a cue cache and, in stage 2, the S2X teacher."""

    def __init__(self, config: TrainConfig, data_dir, out_dir, resume: bool = False):
        self.same2x = Same2XConfig.from_dict(config.directanimator)
        self.teacher: DirectAnimatorTransformer3DModel | None = None
        self._loss_parts: dict[str, torch.Tensor] = {}
        if config.train.stage != "pretrain" or config.lora.rank:
            raise Scail2Error(
                "the directanimator recipe trains full weights with flow matching: set train.stage=pretrain "
                "and lora.rank=0"
            )
        super().__init__(stage_config(config, self.same2x), data_dir, out_dir, resume)

    @property
    def s2x_block(self) -> int:
        return self.same2x.current.s2x_block or default_s2x_block(self.model.config.num_layers)

    @property
    def s2x_weight(self) -> float:
        return self.same2x.current.s2x_weight if self.same2x.stage == 2 else 0.0

    # 3. ---------------------------------------------------------------------------------------------------------
    def build_model(self) -> DirectAnimatorTransformer3DModel:
        cfg, stage = self.config.model, self.same2x.current
        if stage.from_model:
            model = load_directanimator(stage.from_model)
        elif cfg.pretrained:
            model = load_directanimator(cfg.pretrained)
        else:
            torch.manual_seed(self.config.train.seed)
            model = model_from_preset(DirectAnimatorTransformer3DModel, cfg)
            model.init_weights()
        model.train()
        if not self.same2x.face_cue:
            # never used, so never given a gradient or optimiser state: trainable, it would break --resume
            model.cue_embedding_face.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if self.same2x.stage == 2 and self.same2x.stage2.s2x_weight > 0:
            self.teacher = frozen_teacher(stage.from_model, self.group.device)
        return model.to(self.group.device)

    def check_model_matches_cache(self) -> None:
        super().check_model_matches_cache()
        sample = self.cache[0].tensors
        missing = [name for side in ("same", "cross") for name in cue_field_names(side) if name not in sample]
        if missing:
            raise Scail2Error(
                f"the cache has no driving cues ({missing[0]} is missing); build it with `scail2 cache --cues`"
            )

    def shard_model(self) -> None:
        """The student as the base trainer shards it; the teacher the same way, block by block then the root."""
        super().shard_model()
        if self.teacher is None or self.group.world_size == 1:
            return
        from torch.distributed.fsdp import fully_shard

        for block in self.teacher.blocks:
            fully_shard(block)
        fully_shard(self.teacher)

    # A step ---------------------------------------------------------------------------------------------------
    def cue_inputs(self, tensors: dict, side: str, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The transformer's cue arguments from one side's cached cues, with the ablations and frame dropout."""
        values = {name: tensors[f"{side}_{name}"].float() for name in CUE_FIELDS}
        if not self.same2x.location_cue:
            values["pose_masks"] = torch.zeros_like(values["pose_masks"])
            values["face_masks"] = torch.zeros_like(values["face_masks"])
        if generator is not None and self.same2x.cue_frame_dropout:
            frames = values["pose_latents"].shape[1]
            keep = (torch.rand(frames, generator=generator) >= self.same2x.cue_frame_dropout).float()
            values["pose_latents"] = values["pose_latents"] * keep[:, None, None]
            values["pose_masks"] = values["pose_masks"] * keep[:, None, None]
        inputs = {"pose_cue_latents": values["pose_latents"], "pose_masks": values["pose_masks"]}
        if self.same2x.face_cue:
            inputs.update(face_cue_latents=values["face_latents"], face_masks=values["face_masks"])
        return inputs

    def sample_inputs(self, sample, step: int, index: int) -> dict[str, torch.Tensor]:
        """The base trainer's noisy input, target and reference; the student's cues (same-ID in stage 1,
        cross-ID in stage 2) and, with a teacher, the teacher's same-ID cues under `teacher_` names."""
        inputs = super().sample_inputs(sample, step, index)
        for name in ("pose_latents", "driving_masks", "replace"):
            inputs.pop(name)
        generator = sample_generator(self.config.train.seed + 1, step, index)  # apart from the base's draws
        side = "same" if self.same2x.stage == 1 else "cross"
        inputs.update(self.cue_inputs(sample.tensors, side, generator))
        if self.teacher is not None:
            teacher = self.cue_inputs(sample.tensors, "same", None)
            inputs.update({TEACHER_PREFIX + name: value for name, value in teacher.items()})
        return inputs

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flow matching of the student; in stage 2 plus s2x_weight * S2X against the frozen teacher."""
        autocast = torch.autocast(
            self.group.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        )
        shared = {
            k: v for k, v in batch.items() if k not in ("target", "loss_mask") and not k.startswith(TEACHER_PREFIX)
        }
        capture = self.s2x_block if self.teacher is not None else None
        with autocast:
            output = self.model(**shared, capture_block=capture)
        flow = flow_matching.masked_velocity_loss(output.sample.float(), batch["target"], batch["loss_mask"]).mean()
        self._loss_parts = {"flow_loss": flow.detach()}
        if self.teacher is None:
            return flow
        cue_names = ("pose_cue_latents", "pose_masks", "face_cue_latents", "face_masks")
        teacher_inputs = {k: v for k, v in shared.items() if k not in cue_names}
        teacher_inputs.update(
            {k.removeprefix(TEACHER_PREFIX): v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)}
        )
        with torch.no_grad(), autocast:
            target_states = self.teacher(**teacher_inputs, capture_block=capture, stop_after_capture=True)
        alignment = s2x_loss(output.block_hidden_states, target_states.block_hidden_states)
        self._loss_parts["s2x"] = alignment.detach()
        return flow + self.s2x_weight * alignment

    def validation_velocity(self, reference, tensors: dict, text: torch.Tensor, sample):
        """The validation video's velocity (`scail2.train.validation`): the student over the cues this stage
        trains on (same-ID in stage 1, cross-ID in stage 2), with the run's cue ablations, no frame dropout."""
        side = "same" if self.same2x.stage == 1 else "cross"
        cues = {name: value[None] for name, value in self.cue_inputs(sample.tensors, side, None).items()}
        conditions = CueConditions(
            cues["pose_cue_latents"], cues["pose_masks"], cues.get("face_cue_latents"), cues.get("face_masks")
        )
        return cue_velocity(self.model, self.group.device, reference, conditions, text, autocast_dtype=self.autocast)

    def training_step(self, step: int) -> dict[str, float]:
        metrics = super().training_step(step)
        for name, value in self._loss_parts.items():
            if self.group.world_size > 1:
                dist.all_reduce(value, op=dist.ReduceOp.AVG)
            metrics[name] = float(value)
        return metrics


# ------------------------------------------------------------------------------------------------------------
# 5. Export
# ------------------------------------------------------------------------------------------------------------


def export_directanimator(trainer: Same2XTrainer) -> Path | None:
    """The run's newest weights (EMA when on) as a DirectAnimator model folder under export/model: the
    transformer, the VAE and encoders of `model.components`, and a model_index.json naming
    DirectAnimatorPipeline with the cache's cue settings (so generation extracts cues as training did)."""
    weights = gather_weights(trainer, use_ema=bool(trainer.ema))
    if not trainer.group.is_main:
        return None
    return write_model_folder(
        trainer,
        weights,
        DirectAnimatorTransformer3DModel,
        _class_name=PIPELINE_CLASS_NAME,
        transformer=[DirectAnimatorTransformer3DModel.__module__, DirectAnimatorTransformer3DModel.__name__],
        cue_settings=trainer.cache.meta.get("encoders", {}).get("cues", {}),
    )


def recipe_parts(config: TrainConfig):
    """(trainer class, export function) of the config's recipe."""
    if config.train.recipe == "directanimator":
        return Same2XTrainer, export_directanimator
    from scail2.train.export import export_run

    return Trainer, export_run
