"""Flow-matching training of SCAIL-2 on a latent cache: one process, or FSDP2 under torchrun.

Set-up order (each step a method): 1. processes, 2. data, 3. model (weights, LoRA, activation checkpointing,
then `fully_shard` per block and at the root), 4. optimiser and EMA, 5. resume from the newest checkpoint.
A step: the global batch of this step (`BatchPlan`), this process's slice of it, one forward/backward, gradient
clipping, AdamW, EMA. Checkpoints are safetensors + JSON folders (nothing in them is unpickled), written under a
temporary name and renamed when complete; every random draw depends only on (seed, step, sample), so a resumed run
repeats an uninterrupted one step for step, and 1 and N processes follow the same loss trajectory.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from scail2.conditioning import SPATIAL_STRIDE, TEMPORAL_STRIDE, history_mask
from scail2.data.latent_cache import (
    CachedSample,
    check_cache_driving_scale,
    check_cache_driving_signal,
    open_latent_caches,
)
from scail2.diffusion import flow_matching
from scail2.errors import Scail2Error
from scail2.models.transformer_directanimator import is_directanimator_config
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.optional import require
from scail2.pipelines.memory_activations import transformer_tokens
from scail2.train import checkpoint_io
from scail2.train.config import TrainConfig
from scail2.train.data import BatchPlan, pad_and_stack, sample_generator
from scail2.train.schedule import CheckpointFolders, RunLog, TrainingSchedule, full_tensor

CONSOLE = (
    ("loss", "loss {:.5f}"),
    ("lr", "lr {:.2e}"),
    ("grad_norm", "grad {:.3f}"),
    ("samples_per_s", "{:.2f} samples/s"),
    ("tokens_per_s", "{:.0f} tokens/s"),
    ("rise_driving_latents", "character loss {:+.1%} without driving latents"),
    ("rise_driving_masks", "{:+.1%} without driving masks"),
)


# ------------------------------------------------------------------------------------------------------------
# Driving-signal augmentation hooks
# ------------------------------------------------------------------------------------------------------------


def _latent_noise(pose, masks, generator, strength):
    return pose + strength * torch.randn(pose.shape, generator=generator), masks


def _drop_driving(pose, masks, generator, strength):
    return torch.zeros_like(pose), masks


def _drop_driving_masks(pose, masks, generator, strength):
    # Without the masks the driving latents are the only motion signal left, so the model must learn to read them
    # rather than copy the coarse silhouette the masks already give.
    return pose, torch.zeros_like(masks)


def _mask_jitter(pose, masks, generator, strength):
    return pose, (masks * (1 + strength * torch.randn(masks.shape, generator=generator))).clamp(0, 1)


# name -> fn(pose_latents, driving_masks, generator, strength) -> (pose_latents, driving_masks)
AUGMENTATIONS = {
    "latent_noise": _latent_noise,
    "drop_driving": _drop_driving,
    "drop_driving_masks": _drop_driving_masks,
    "mask_jitter": _mask_jitter,
}


def register_augmentation(name: str, fn) -> None:
    """Add a driving-signal augmentation usable from `flow.augmentations` in a config."""
    AUGMENTATIONS[name] = fn


def model_from_preset(model_class, cfg):
    """`model_class.from_preset(cfg.preset, **cfg.overrides)`, a bad override answered in one line."""
    try:
        return model_class.from_preset(cfg.preset, **cfg.overrides)
    except Scail2Error:
        raise
    except (TypeError, ValueError) as error:
        raise Scail2Error(f"model.overrides {dict(cfg.overrides)}: {error}; correct or remove the override") from None


# The config fields a fine-tune may change: none of them changes a weight's shape or which weights exist.
LAYOUT_FIELDS = ("driving_scale", "driving_injection", "driving_signal")


def pretrained_with_overrides(model_class, folder, cfg, lora_rank: int = 0):
    """The weights of `folder` in fp32, its driving layout changed where `cfg.overrides` says (LAYOUT_FIELDS), so
    a model can be fine-tuned into another layout. Overrides equal to the folder's config change nothing; one that
    would change anything else (the architecture, or a misspelt field), or a layout change under LoRA (an adapter
    is saved without its base's layout), is answered in one line."""
    saved = model_class.load_config(folder)
    defaults = {name: p.default for name, p in inspect.signature(model_class.__init__).parameters.items()}
    changed = {k: v for k, v in cfg.overrides.items() if saved.get(k, defaults.get(k, inspect.Parameter.empty)) != v}
    other = sorted(set(changed) - set(LAYOUT_FIELDS))
    if other:
        raise Scail2Error(
            f"model.overrides would change {', '.join(other)} of model.pretrained {folder}; a fine-tune keeps the "
            f"architecture and may change only the driving layout ({', '.join(LAYOUT_FIELDS)})"
        )
    if changed and lora_rank > 0:
        raise Scail2Error(
            f"model.overrides change the driving layout of model.pretrained {folder}, but a LoRA adapter is saved "
            "without its base's layout; fine-tune the whole model (lora.rank=0) or drop the overrides"
        )
    try:
        return model_class.from_pretrained(folder, torch_dtype=torch.float32, **changed)
    except ValueError as error:
        if not changed:
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise Scail2Error(f"model.overrides {changed} for model.pretrained {folder}: {first}") from None


# ------------------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessGroup:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def shutdown(self) -> None:
        """Leave the process group together: gloo's worker threads must stop before the interpreter exits,
        or a rank can abort at exit ("terminate called without an active exception")."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def init_processes() -> ProcessGroup:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ProcessGroup(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), device)


# ------------------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------------------


def transformer_folder(path: str | Path) -> Path:
    """The transformer folder of a model folder (its `transformer/`), or `path` itself when it is one."""
    folder = Path(path)
    folder = folder / "transformer" if (folder / "transformer").is_dir() else folder
    if not (folder / "config.json").is_file():
        raise Scail2Error(f"{path}: no transformer config.json; pass a model folder (or its transformer/)")
    return folder


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        data_dir: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        resume: bool = False,
    ):
        self.config, self.out = config.resolved(), Path(out_dir)
        self.group = init_processes()  # 1. processes
        self.cache = open_latent_caches(data_dir)  # 2. data: one cache or a mixture
        self.dpo = None
        if self.config.train.stage == "dpo":
            from scail2.data.preference import check_preference_cache
            from scail2.train.dpo import DPOConfig

            for part in self.cache.parts:
                check_preference_cache(part)
            self.dpo = DPOConfig.from_dict(self.config.dpo)
        self.plan = BatchPlan(self.cache.shapes, self.config.train.batch_size, self.config.train.seed)
        self.model = self.build_model()  # 3. model
        self.check_model_matches_cache()
        self.lora = self.config.lora.rank > 0
        self.shard_model()
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.schedule = TrainingSchedule(
            self.config.optim,
            self.config.train.max_steps,  # 4. optimiser and EMA
            self.trainable,
        )
        self.checkpoints = CheckpointFolders(self.out, self.config.train.keep_checkpoints)
        self.step = 0
        if resume:  # 5. resume
            self.load_latest_checkpoint()
        self.autocast = self._autocast_dtype()
        self.run_log = RunLog(self.out, CONSOLE, tensorboard=True)

    @property
    def ema(self) -> dict[str, torch.Tensor]:
        """EMA weights by parameter name (empty without EMA); the export writes them."""
        return self.schedule.ema

    # 3. ---------------------------------------------------------------------------------------------------------
    def build_model(self) -> SCAIL2Transformer3DModel:
        cfg = self.config.model
        if cfg.pretrained:
            folder = transformer_folder(cfg.pretrained)
            model = pretrained_with_overrides(SCAIL2Transformer3DModel, folder, cfg, self.config.lora.rank)
        else:
            torch.manual_seed(self.config.train.seed)
            model = model_from_preset(SCAIL2Transformer3DModel, cfg)
            model.init_weights()
        model.train()
        if self.config.lora.rank > 0:
            self._add_lora(model)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model.to(self.group.device)

    def _add_lora(self, model: SCAIL2Transformer3DModel) -> None:
        PeftLoraConfig = require("peft", purpose="LoRA training").LoraConfig

        lora = self.config.lora
        model.requires_grad_(False)
        torch.manual_seed(self.config.train.seed + 1)
        model.add_adapter(
            PeftLoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha or lora.rank,
                target_modules=list(lora.target_modules),
                lora_dropout=lora.dropout,
                init_lora_weights=True,
            )
        )
        for name, param in model.named_parameters():
            param.requires_grad_(".lora_" in name)

    def check_model_matches_cache(self) -> None:
        sample = self.cache[0].tensors
        if not is_directanimator_config(self.model.config):  # a cue model never reads the driving stream
            check_cache_driving_scale(sample, self.model.driving_scale, self.model.driving_injection)
            check_cache_driving_signal(self.cache.driving_signal, self.model.driving_signal)
        cfg = self.model.config
        latent = sample["target_latents"].shape[0]
        if latent != self.model.latent_channels:
            raise Scail2Error(
                f"the cache has {latent} latent channels, the model {self.model.latent_channels}; set "
                f"model.overrides.in_dim={latent + 4} and model.overrides.out_dim={latent} (the VAE's "
                f"z_dim) or re-cache with the model's VAE"
            )
        if "text_embeds" in sample and sample["text_embeds"].shape[-1] != cfg.text_dim:
            raise Scail2Error(
                f"the cache's text features are {sample['text_embeds'].shape[-1]} wide, the model's "
                f"text_dim is {cfg.text_dim}; set model.overrides.text_dim"
            )
        has_image = "image_embeds" in sample
        if (cfg.model_type == "i2v") != has_image:
            raise Scail2Error(
                f"the model is {cfg.model_type} but the cache {'has' if has_image else 'has no'} CLIP "
                "features; set model.overrides.model_type to match the cache's encoders"
            )

    def shard_model(self) -> None:
        """FSDP2: `fully_shard` every block, then the root; bf16 parameters on GPU when mixed precision is on."""
        if self.group.world_size == 1:
            return
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if self._autocast_dtype() is not None
            else MixedPrecisionPolicy()
        )
        for block in self.model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(self.model, mp_policy=policy)

    def _autocast_dtype(self) -> torch.dtype | None:
        choice = self.config.train.mixed_precision
        if choice == "fp32" or (choice == "auto" and self.group.device.type == "cpu"):
            return None
        return torch.bfloat16

    # A step ---------------------------------------------------------------------------------------------------
    def sample_inputs(self, sample: CachedSample, step: int, index: int) -> dict[str, torch.Tensor]:
        """One sample's noisy input, conditions and target; every draw from its own (seed, step, index) generator."""
        flow, t = self.config.flow, sample.tensors
        g = sample_generator(self.config.train.seed, step, index)
        x0 = t["target_latents"].float()
        frames, height, width = x0.shape[1:]
        shift = flow_matching.resolution_shift(height, width) if flow.shift == "auto" else float(flow.shift)
        sigma = flow_matching.sample_training_sigmas(1, shift, generator=g)[0]
        noise = torch.randn(x0.shape, generator=g)
        history = bool(torch.rand((), generator=g) < flow.history_probability) and frames > flow.history_latent_frames
        drop_text = bool(torch.rand((), generator=g) < flow.text_dropout)
        pose, masks = t["pose_latents"].float(), t["driving_masks"].float()
        for aug in flow.augmentations:
            if torch.rand((), generator=g) < aug.get("probability", 1.0):
                pose, masks = AUGMENTATIONS[aug["name"]](pose, masks, g, aug.get("strength", 0.0))
        noisy = flow_matching.add_noise(x0, noise, sigma)
        history_frames = flow.history_latent_frames if history else 0
        noisy[:, :history_frames] = x0[:, :history_frames]
        clean_frames = history_mask(frames, history_frames, height, width)
        text = self._text(t, drop_text)
        loss_mask = (1 - clean_frames[:1]) * self._foreground_weights(t)
        ref_masks = torch.cat([t["ref_masks"].float(), torch.zeros(t["ref_masks"].shape[0], frames, height, width)], 1)
        inputs = dict(
            hidden_states=noisy,
            timestep=flow_matching.sigma_to_timestep(sigma),
            encoder_hidden_states=text,
            ref_latents=t["ref_latents"].float(),
            ref_masks=ref_masks,
            pose_latents=pose,
            driving_masks=masks,
            history_mask=clean_frames,
            target=flow_matching.velocity_target(x0, noise),
            loss_mask=loss_mask,
            replace=torch.tensor(sample.replace),
        )
        if "image_embeds" in t:
            inputs["image_embeds"] = t["image_embeds"].float()
        if self.dpo is not None:  # the preference pair under one noise and sigma
            inputs.update(
                winner=x0,
                loser=t["loser_latents"].float(),
                noise=noise,
                sigma=sigma,
                detail_masks=t["detail_masks"].float(),
            )
        return inputs

    def _foreground_weights(self, tensors: dict) -> torch.Tensor | float:
        """1 + w * character coverage per latent cell: characters are a few percent of a frame, so without it the
        loss is mostly the background the reference already shows."""
        weight = self.config.flow.foreground_weight
        if not weight:
            return 1.0
        if "target_masks" not in tensors:
            raise Scail2Error(
                "flow.foreground_weight needs target_masks in the cache; rebuild it with `scail2 cache` "
                "(format version 2; version 1 caches may lack them) or set flow.foreground_weight=0"
            )
        return 1 + weight * tensors["target_masks"].float()

    def _text(self, tensors: dict, drop: bool) -> torch.Tensor:
        if "text_embeds" not in tensors:  # a model without a text encoder: one zero token, as in generation
            return torch.zeros(1, self.model.config.text_dim)
        null = (
            self.cache.null_text
            if self.cache.null_text is not None
            else torch.zeros(1, tensors["text_embeds"].shape[-1])
        )
        return (null if drop else tensors["text_embeds"]).float()

    def local_batch(self, step: int) -> dict[str, torch.Tensor]:
        indices = self.plan.local_batch(step, self.group.rank, self.group.world_size)
        samples = [self.sample_inputs(self.cache[i], step, i) for i in indices]
        batch = {
            key: (pad_and_stack if key == "encoder_hidden_states" else torch.stack)([s[key] for s in samples])
            for key in samples[0]
        }
        return {k: v.to(self.group.device) for k, v in batch.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pre-training: the mean over this process's samples of the masked flow-matching error (history frames
        excluded). DPO: the Diffusion-DPO loss against the same model with its LoRA switched off."""
        autocast = torch.autocast(
            self.group.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        )
        if self.dpo is not None:
            from scail2.train.dpo import preference_loss

            names = (
                "encoder_hidden_states",
                "ref_latents",
                "ref_masks",
                "pose_latents",
                "driving_masks",
                "history_mask",
                "replace",
                "image_embeds",
            )
            conditioning = {k: batch[k] for k in names if k in batch}
            with autocast:
                loss, _ = preference_loss(
                    self.model,
                    None,
                    batch["winner"],
                    batch["loser"],
                    conditioning,
                    batch["noise"],
                    batch["sigma"],
                    self.dpo,
                    batch["detail_masks"],
                )
            return loss
        inputs = {k: v for k, v in batch.items() if k not in ("target", "loss_mask")}
        with autocast:
            prediction = self.model(**inputs).sample
        per_sample = flow_matching.masked_velocity_loss(prediction.float(), batch["target"], batch["loss_mask"])
        return per_sample.mean()

    def training_step(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        batch = self.local_batch(step)
        loss = self.loss(batch)
        lr, grad_norm = self.schedule.apply(loss, step)
        loss_value = loss.detach()
        if self.group.world_size > 1:
            dist.all_reduce(loss_value, op=dist.ReduceOp.AVG)
        seconds = time.perf_counter() - start
        b, _, t, h, w = batch["hidden_states"].shape
        frames, height, width = (t - 1) * TEMPORAL_STRIDE + 1, h * SPATIAL_STRIDE, w * SPATIAL_STRIDE
        tokens = b * transformer_tokens(self.model.config, frames, height, width).total * self.group.world_size
        return {
            "loss": float(loss_value),
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": self.config.train.batch_size / seconds,
            "tokens_per_s": tokens / seconds,
        }

    # Checkpoints ----------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        """Full (gathered) weights, optimiser state and EMA as CPU tensors on the main process (empty elsewhere);
        a collective under FSDP2, so every process calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=self.lora)
        model_state, optim_state = get_state_dict(self.model, self.schedule.optimizer, options=options)
        ema = {name: full_tensor(value).detach().cpu() for name, value in self.ema.items()}
        return {"model": model_state, "optim": optim_state, "ema": ema}

    def save_checkpoint(self) -> Path:
        """RUN/checkpoints/step-N as safetensors + JSON (`scail2.train.checkpoint_io`), written by the main
        process under a temporary name and renamed when complete."""
        state = self._state()
        if self.group.is_main:
            partial = self.checkpoints.begin(self.step)
            checkpoint_io.save_tensors(state["model"], partial / checkpoint_io.MODEL_FILE)
            if state["ema"]:
                checkpoint_io.save_tensors(state["ema"], partial / checkpoint_io.EMA_FILE)
            checkpoint_io.save_optimizer(state["optim"], partial)
            self.checkpoints.commit(
                self.step,
                self.config.to_dict(),
                world_size=self.group.world_size,
                architecture=self._architecture(),
            )
        self.group.barrier()
        return self.checkpoints.folder(self.step)

    def load_latest_checkpoint(self) -> None:
        """Every process reads the newest checkpoint's full tensors and keeps its own shard of them."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        latest, trainer_state = self.checkpoints.resume()
        checkpoint_io.check_loadable(latest)
        self._check_architecture(latest, trainer_state)
        model_state = checkpoint_io.load_tensors(latest / checkpoint_io.MODEL_FILE)
        expected = {name: value.shape for name, value in self.model.state_dict().items()}
        checkpoint_io.check_shapes(model_state, expected, latest / checkpoint_io.MODEL_FILE, complete=not self.lora)
        set_state_dict(
            self.model,
            self.schedule.optimizer,
            model_state_dict=model_state,
            optim_state_dict=checkpoint_io.load_optimizer(latest),
            options=StateDictOptions(full_state_dict=True, ignore_frozen_params=self.lora, strict=not self.lora),
        )
        if self.ema:
            self._load_ema(latest / checkpoint_io.EMA_FILE)
        self.step = int(trainer_state["step"])

    def _architecture(self) -> dict:
        """The model's config fields (diffusers' bookkeeping `_*` entries left out), as JSON reads them back."""
        config = {k: v for k, v in dict(self.model.config).items() if not k.startswith("_")}
        return checkpoint_io.json_roundtrip(config)

    def _check_architecture(self, latest: Path, trainer_state: dict) -> None:
        stored = trainer_state.get("architecture")
        current = self._architecture()
        if stored is not None and stored != current:
            differing = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise Scail2Error(
                f"{latest} holds a model of another architecture (differs in {', '.join(differing)}); resume with "
                "the run's own config or choose another --out"
            )

    def _load_ema(self, path: Path) -> None:
        stored = checkpoint_io.load_tensors(path)
        checkpoint_io.check_shapes(stored, {n: v.shape for n, v in self.ema.items()}, path)
        with torch.no_grad():
            for name, target in self.ema.items():
                value = stored[name]
                if hasattr(target, "device_mesh"):  # an FSDP2 shard: keep this process's part of the full tensor
                    from torch.distributed.tensor import distribute_tensor

                    value = distribute_tensor(
                        value.to(target.device_mesh.device_type), target.device_mesh, target.placements
                    )
                target.copy_(value)

    def log_dependence(self) -> dict[str, float]:
        """The driver-dependence check on the cache's first samples, logged as a row of its own (every process
        runs the forwards, which a sharded model needs; the main one writes)."""
        from scail2.train.dependence import driver_dependence

        cfg = self.config.train
        samples = [self.cache[i] for i in range(min(cfg.dependence_samples, len(self.cache)))]
        scores = driver_dependence(self.model, samples, seed=cfg.seed, autocast_dtype=self.autocast)
        if self.group.is_main:
            self.run_log.write(self.step, scores)
        return scores

    # The loop -------------------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> None:
        cfg = self.config.train
        stop = min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps)
        if self.group.is_main:
            self.run_log.start(self.config.to_dict())
        while self.step < stop:
            metrics = self.training_step(self.step)
            self.step += 1
            if (self.step % cfg.log_every == 0 or self.step == stop) and self.group.is_main:
                self.run_log.write(self.step, metrics)
            if self.step % cfg.checkpoint_every == 0 or self.step == stop:
                self.save_checkpoint()
            if cfg.dependence_every and self.step % cfg.dependence_every == 0 and self.dpo is None:
                self.log_dependence()
            if cfg.validate_every and self.step % cfg.validate_every == 0:
                from scail2.train.validation import write_validation_video

                write_validation_video(self)
        self.run_log.flush()
