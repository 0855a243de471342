"""Training a small video VAE (diffusers `AutoencoderKLWan`) on the RGB videos of a MotionPair dataset.

The latent layout stays Wan's (docs/architecture.md, "Latent geometry"): 8x spatial and 4x temporal compression
with a causal first frame, so the pipeline and the latent cache use the result unchanged. The widths shrink; the
latent channels (`z_dim`, 16 in Wan2.1) may change, and the transformer's in_dim/out_dim then follow (z_dim + 4,
z_dim). Sections: 1. config, 2. clips from the shards, 3. the model and the losses, 4. the trainer (a step,
checkpoints, previews), 5. release: latent statistics, export, reconstruction PSNR.

Determinism: the pairs of step s come from a per-epoch permutation seeded by (seed, epoch), and every other draw
(stream, frame window, crop, flip, posterior noise) from generators seeded by (seed, step, slot); checkpoints
hold the weights, the EMA and the AdamW state, so a resumed run repeats an uninterrupted one step for step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from scail2.conditioning import SPATIAL_STRIDE, VideoLatentCodec, frames_to_model_video, half_resolution
from scail2.data.shards import PairVideos
from scail2.errors import Scail2Error
from scail2.train import checkpoint_io
from scail2.train.config import check_minimum, load_config
from scail2.train.schedule import CHECKPOINT_PREFIX, CheckpointFolders, OptimConfig, RunLog, TrainingSchedule

CONSOLE = (
    ("loss", "loss {:.5f}"),
    ("l1", "l1 {:.5f}"),
    ("kl", "kl {:.3f}"),
    ("lr", "lr {:.2e}"),
    ("grad_norm", "grad {:.3f}"),
    ("seconds", "{:.2f} s/step"),
    ("psnr_target", "psnr_target {:.2f}"),
    ("psnr_driving_half", "psnr_driving_half {:.2f}"),
)
TEMPORAL_DOWNSAMPLES = 2  # the last two downsamples also halve time: 4x with a causal first frame (Wan2.1)
ENCODER_PREFIXES = ("encoder.", "quant_conv.")  # what train.freeze_encoder keeps: the latents


# ------------------------------------------------------------------------------------------------------------
# 1. Config
# ------------------------------------------------------------------------------------------------------------


@dataclass
class VaeArchConfig:
    base_dim: int = 16  # channels of the full-resolution level; Wan2.1 uses 96
    z_dim: int = 16  # latent channels (Wan2.1: 16); the transformer's in_dim is z_dim + 4, its out_dim z_dim
    # Decoder width when it differs from the encoder's; with train.freeze_encoder a new width learns on kept latents.
    decoder_base_dim: int | None = None
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])  # width per level (4 levels = 8x)
    num_res_blocks: int = 1  # residual blocks per encoder level (the decoder has one more)
    patch_size: int | None = None  # 2: fold 2x2 pixels into channels first (as Wan2.2), so 3 levels give 8x
    is_residual: bool = False  # Wan2.2's down/up blocks with parameter-free shortcuts

    def temporal_downsample(self) -> list[bool]:
        """Per downsample (len(dim_mult) - 1 of them): the last two also halve time, as Wan2.1's [F, T, T]."""
        levels = len(self.dim_mult) - 1
        return [i >= levels - TEMPORAL_DOWNSAMPLES for i in range(levels)]


@dataclass
class VaeDataConfig:
    clip_frames: int = 9  # 4n + 1 frames per training clip: a random window of the stored videos
    crop: int = 64  # side of the square random crop (multiple of 8); 0: the largest square every source fits
    streams: list[str] = field(default_factory=lambda: ["target", "driving"])  # full-resolution sources
    half_resolution_probability: float = 0.25  # chance of a driving clip at half resolution, as the driving stream is
    flip: bool = True  # random horizontal flips


@dataclass
class VaeLossConfig:
    l1: float = 1.0  # pixel L1 in [-1, 1]
    mse: float = 0.0  # pixel MSE
    gradient: float = 0.5  # L1 between horizontal/vertical finite differences: crisp edges without a network
    temporal: float = 0.0  # L1 between frame-to-frame differences: errors that change between frames are flicker
    kl: float = 1.0e-5  # KL to N(0, 1), mean per latent element
    foreground_weight: float = 0.0  # extra L1/MSE weight on character pixels (from the shards' masks)
    first_frame_weight: float = 1.0  # L1/MSE weight of each clip's first frame, which the causal VAE encodes
    # alone, as it does every reference image (at 1 that path gets 1/17 of a 17-frame clip's loss)
    sample_posterior: bool = True  # decode a posterior sample (True) or its mean


def vae_optim_defaults() -> OptimConfig:
    """A small VAE from scratch: a higher rate, and an EMA that warms up so it forgets the random init fast."""
    return OptimConfig(
        lr=1.0e-3, betas=(0.9, 0.99), warmup_steps=50, min_lr_ratio=0.05, ema_decay=0.995, ema_warmup=True
    )


@dataclass
class VaeLoopConfig:
    max_steps: int = 2000
    batch_size: int = 8
    seed: int = 0
    init_from: str | None = None  # an exported VAE folder to start from (same model section), e.g. a new sitting
    # Train the decoder only (needs init_from): the encoder, hence the latents and every cache built on them,
    # stay exactly as they were, so a transformer trained on those caches keeps working with the new decoder.
    freeze_encoder: bool = False
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    preview_every: int = 250  # 0: no previews
    preview_pairs: int = 2  # training pairs shown (target at full size, driving at half size)


@dataclass
class VaeExportConfig:
    stats_pairs: int = 64  # training pairs whose latents set latents_mean / latents_std
    dtype: str = "float32"  # "float32" or "float16" weights on disk


@dataclass
class VaeTrainConfig:
    model: VaeArchConfig = field(default_factory=VaeArchConfig)
    data: VaeDataConfig = field(default_factory=VaeDataConfig)
    loss: VaeLossConfig = field(default_factory=VaeLossConfig)
    optim: OptimConfig = field(default_factory=vae_optim_defaults)
    train: VaeLoopConfig = field(default_factory=VaeLoopConfig)
    export: VaeExportConfig = field(default_factory=VaeExportConfig)

    def __post_init__(self) -> None:
        model, data = self.model, self.data
        stride = (model.patch_size or 1) * 2 ** (len(model.dim_mult) - 1)
        if stride != SPATIAL_STRIDE or len(model.dim_mult) <= TEMPORAL_DOWNSAMPLES:
            raise Scail2Error(
                f"model.patch_size {model.patch_size} with {len(model.dim_mult)} levels in "
                f"model.dim_mult compresses space {stride}x; Wan's layout needs {SPATIAL_STRIDE}x: use 4 "
                f"levels without patching or 3 levels with patch_size 2"
            )
        if min(model.dim_mult) < 1 or model.base_dim < 1 or model.z_dim < 1:
            raise Scail2Error(
                f"model.base_dim, model.z_dim and model.dim_mult must be positive, got "
                f"{model.base_dim}, {model.z_dim}, {model.dim_mult}"
            )
        if model.is_residual and model.dim_mult[-1] != model.dim_mult[-2]:
            raise Scail2Error(
                f"model.is_residual needs the last two model.dim_mult widths equal (the last level's "
                f"parameter-free shortcut cannot widen), got {model.dim_mult}; e.g. [1, 2, 2]"
            )
        if model.num_res_blocks < 1:
            raise Scail2Error(f"model.num_res_blocks must be at least 1, got {model.num_res_blocks}")
        if data.clip_frames < 1 or (data.clip_frames - 1) % 4:
            raise Scail2Error(f"data.clip_frames must be 4n+1 (1, 5, 9, 13, 17, ...), got {data.clip_frames}")
        if data.crop < 0 or data.crop % 8:
            raise Scail2Error(f"data.crop must be 0 or a positive multiple of 8, got {data.crop}")
        unknown = [s for s in data.streams if s not in ("target", "driving")]
        if unknown or not data.streams:
            raise Scail2Error(f"data.streams must list target and/or driving, got {data.streams}")
        if not 0 <= data.half_resolution_probability <= 1:
            raise Scail2Error("data.half_resolution_probability must lie in [0, 1]")
        if self.loss.foreground_weight < 0 or self.loss.first_frame_weight <= 0:
            raise Scail2Error(
                f"loss.foreground_weight must be >= 0 and loss.first_frame_weight > 0, got "
                f"{self.loss.foreground_weight} and {self.loss.first_frame_weight}"
            )
        if self.export.dtype not in ("float32", "float16"):
            raise Scail2Error(f"export.dtype must be float32 or float16, got {self.export.dtype!r}")
        if self.train.batch_size < 1 or self.train.max_steps < 0 or self.train.keep_checkpoints < 1:
            raise Scail2Error("train.batch_size and train.keep_checkpoints must be >= 1, train.max_steps >= 0")
        check_minimum(self.train, "train", log_every=1, checkpoint_every=1, preview_every=0, preview_pairs=0)
        if self.optim.ema_decay is None:
            raise Scail2Error(
                "optim.ema_decay must be a number for the VAE (its export writes the EMA weights), got null"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_vae_config(path: str | Path | None, overrides: list[str] = ()) -> VaeTrainConfig:
    """YAML (optional) plus dotted overrides (`optim.lr=3e-4`), validated; unknown keys are errors."""
    return load_config(path, overrides, cls=VaeTrainConfig, example="configs/demo_vae.yaml")


# ------------------------------------------------------------------------------------------------------------
# 2. Clips from the shards
# ------------------------------------------------------------------------------------------------------------


def model_video(frames: np.ndarray, half: bool = False) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [3, F, H, W] in [-1, 1], at half resolution as the driving stream is."""
    video = frames_to_model_video(torch.from_numpy(np.array(frames)))  # a writable copy
    return half_resolution(video) if half else video


def crop_side(config: VaeDataConfig, height: int, width: int) -> int:
    """The square training crop: `data.crop`, shrunk to a multiple of 8 that every source (half size too) fits."""
    scale = 2 if config.half_resolution_probability > 0 else 1
    largest = min(height, width) // scale // 8 * 8
    if largest < 8:
        raise Scail2Error(
            f"frames of {height}x{width} are too small for 8x8 crops"
            f"{' at half resolution' if scale == 2 else ''}; synthesise larger frames"
        )
    return min(config.crop, largest) if config.crop else largest


class ClipPlan:
    """Which clip fills slot b of step s: pair from a per-epoch permutation, the rest from (seed, step, slot)."""

    def __init__(self, videos: PairVideos, config: VaeDataConfig, batch_size: int, seed: int, with_masks: bool = False):
        if config.clip_frames > videos.frames:
            raise Scail2Error(
                f"data.clip_frames is {config.clip_frames} but the dataset's videos have "
                f"{videos.frames} frames; lower data.clip_frames"
            )
        self.videos, self.config, self.batch_size, self.seed = videos, config, batch_size, seed
        self.with_masks = with_masks
        self.crop = crop_side(config, videos.height, videos.width)
        self._epoch: tuple[int, np.ndarray] | None = None

    def pair(self, counter: int) -> int:
        epoch, position = divmod(counter, len(self.videos))
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.videos)))
        return int(self._epoch[1][position])

    def clip(self, step: int, slot: int) -> torch.Tensor:
        """[3, clip_frames, crop, crop] in [-1, 1]; with masks a 4th channel: the character coverage in [0, 1]."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, step, slot, 1])
        half = bool(rng.uniform() < cfg.half_resolution_probability)
        stream = "driving" if half else str(rng.choice(cfg.streams))
        start = int(rng.integers(0, self.videos.frames - cfg.clip_frames + 1))
        window = slice(start, start + cfg.clip_frames)
        index = self.pair(step * self.batch_size + slot)
        video = model_video(self.videos.video(index, stream)[window], half)
        if self.with_masks:  # one more channel, so the crop and the flip below move it with the pixels
            mask = torch.from_numpy(self.videos.character_mask(index, stream)[window]).float()[None]
            video = torch.cat([video, half_resolution(mask) if half else mask])
        top = int(rng.integers(0, video.shape[2] - self.crop + 1))
        left = int(rng.integers(0, video.shape[3] - self.crop + 1))
        video = video[:, :, top : top + self.crop, left : left + self.crop]
        return video.flip(-1) if cfg.flip and rng.uniform() < 0.5 else video

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clips [B, 3, clip_frames, crop, crop] and, with masks, character coverage [B, 1, clip_frames, crop, crop]."""
        stacked = torch.stack([self.clip(step, slot) for slot in range(self.batch_size)])
        masks = stacked[:, 3:].contiguous() if self.with_masks else None
        return stacked[:, :3].contiguous(), masks


# ------------------------------------------------------------------------------------------------------------
# 3. The model and the losses
# ------------------------------------------------------------------------------------------------------------


def build_vae(config: VaeArchConfig, seed: int = 0):
    """A freshly initialised `AutoencoderKLWan` with Wan's latent layout and the configured widths."""
    from diffusers import AutoencoderKLWan

    channels = 3 * (config.patch_size or 1) ** 2
    torch.manual_seed(seed)
    try:
        return AutoencoderKLWan(
            base_dim=config.base_dim,
            decoder_base_dim=config.decoder_base_dim,
            z_dim=config.z_dim,
            dim_mult=list(config.dim_mult),
            num_res_blocks=config.num_res_blocks,
            temperal_downsample=config.temporal_downsample(),
            is_residual=config.is_residual,
            patch_size=config.patch_size,
            in_channels=channels,
            out_channels=channels,
            latents_mean=[0.0] * config.z_dim,
            latents_std=[1.0] * config.z_dim,
            scale_factor_temporal=4,
            scale_factor_spatial=SPATIAL_STRIDE,
        )
    except ValueError as error:  # diffusers' own width checks (the residual shortcuts')
        raise Scail2Error(f"the model section cannot build an AutoencoderKLWan: {error}") from None


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z)` without its final clamp to [-1, 1], whose gradient is zero outside that range.

    As `AutoencoderKLWan` decodes: one latent frame at a time through the causal feature cache, the first alone
    (1 pixel frame, then 4 per latent frame). [B, z, T, h, w] -> [B, 3, 1 + 4(T - 1), 8h, 8w].
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify

    x = vae.post_quant_conv(z)
    cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
    frames = [
        vae.decoder(x[:, :, t : t + 1], feat_cache=cache, feat_idx=[0], first_chunk=t == 0) for t in range(x.shape[2])
    ]
    video = torch.cat(frames, dim=2)
    patch = vae.config.patch_size
    return unpatchify(video, patch_size=patch) if patch else video


def edge_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences of two videos [B, C, T, H, W]."""
    dx = lambda v: v[..., :, 1:] - v[..., :, :-1]  # noqa: E731
    dy = lambda v: v[..., 1:, :] - v[..., :-1, :]  # noqa: E731
    return 0.5 * ((dx(recon) - dx(target)).abs().mean() + (dy(recon) - dy(target)).abs().mean())


def temporal_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the frame-to-frame differences of two videos [B, C, T, H, W] (0 for single frames)."""
    if recon.shape[2] < 2:
        return recon.new_zeros(())
    return (recon.diff(dim=2) - target.diff(dim=2)).abs().mean()


def weighted_mean(error: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of error [B, C, T, H, W] with per-pixel weights [B, 1, T, H, W] (None: plain mean), scale-preserving."""
    return error.mean() if weight is None else (error * weight).mean() / weight.mean()


def pixel_weights(clips: torch.Tensor, config: VaeLossConfig, masks: torch.Tensor | None) -> torch.Tensor | None:
    """Per-pixel L1/MSE weights [B, 1, T, H, W]: 1 + foreground_weight on character coverage, times
    first_frame_weight on frame 0; None when both are neutral (the plain mean)."""
    foreground = masks is not None and config.foreground_weight != 0
    if not foreground and config.first_frame_weight == 1:
        return None
    weight = 1 + config.foreground_weight * masks if foreground else torch.ones_like(clips[:, :1])
    frame_scale = torch.ones(clips.shape[2], dtype=weight.dtype, device=weight.device)
    frame_scale[0] = config.first_frame_weight
    return weight * frame_scale[:, None, None]


def vae_losses(
    vae,
    clips: torch.Tensor,
    config: VaeLossConfig,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
    train_encoder: bool = True,
) -> dict:
    """The weighted total ("loss") and its terms for a batch of clips [B, 3, T, H, W] in [-1, 1]; `masks`
    [B, 1, T, H, W] (character coverage) up-weight character pixels by loss.foreground_weight. Without
    `train_encoder` the encoder runs without a graph (a decoder-only sitting)."""
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        posterior = vae.encode(clips).latent_dist
    z = posterior.sample(generator=generator) if config.sample_posterior else posterior.mode()
    recon = decode_unclamped(vae, z)
    weight = pixel_weights(clips, config, masks)
    terms = {
        "l1": weighted_mean((recon - clips).abs(), weight),
        "mse": weighted_mean((recon - clips).pow(2), weight),
        "gradient": edge_l1(recon, clips),
        "temporal": temporal_l1(recon, clips),
        "kl": 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean(),
    }
    terms["loss"] = sum(getattr(config, name) * value for name, value in terms.items())
    return terms


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak 1 on the [0, 1] scale)."""
    mse = ((recon.clamp(-1, 1) - target) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ------------------------------------------------------------------------------------------------------------
# 4. The trainer
# ------------------------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, 2]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class VaeTrainer:
    def __init__(self, config: VaeTrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False):
        self.config, self.out = config, Path(out_dir)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.videos = PairVideos(data_dir)
        self.plan = ClipPlan(
            self.videos,
            config.data,
            config.train.batch_size,
            config.train.seed,
            with_masks=config.loss.foreground_weight > 0,
        )
        self.vae = build_vae(config.model, config.train.seed).train()
        if config.train.init_from:
            self._load_initial_weights(Path(config.train.init_from))
        if config.train.freeze_encoder:
            if not config.train.init_from:
                raise Scail2Error(
                    "train.freeze_encoder keeps an encoder as it is: give the VAE to keep with "
                    "train.init_from=RUN/export/vae"
                )
            for name, param in self.vae.named_parameters():
                param.requires_grad_(not name.startswith(ENCODER_PREFIXES))
        parameters = dict(self.vae.named_parameters())  # all tracked by the EMA: the export is the EMA model
        trainable = {name: p for name, p in parameters.items() if p.requires_grad}
        self.schedule = TrainingSchedule(config.optim, config.train.max_steps, trainable, tracked=parameters)
        self.checkpoints = CheckpointFolders(self.out, config.train.keep_checkpoints)
        self.run_log = RunLog(self.out, CONSOLE)
        self.step = 0
        if resume:
            self.load_latest_checkpoint()

    @property
    def ema(self) -> dict[str, torch.Tensor]:
        return self.schedule.ema

    def _load_initial_weights(self, folder: Path) -> None:
        """All weights of an exported VAE of the same architecture; with train.freeze_encoder, only its encoder
        when the decoder differs (a wider `decoder_base_dim` learns from scratch on the kept latents)."""
        weights, fresh = load_exported_vae(folder).state_dict(), self.vae.state_dict()

        def matches(prefixes: tuple[str, ...]) -> bool:
            mine = {k for k in fresh if k.startswith(prefixes)}
            theirs = {k for k in weights if k.startswith(prefixes)}
            return mine == theirs and all(weights[k].shape == fresh[k].shape for k in mine)

        if matches(("",)):
            self.vae.load_state_dict(weights)
        elif self.config.train.freeze_encoder and matches(ENCODER_PREFIXES):
            self.vae.load_state_dict({k: v for k, v in weights.items() if k.startswith(ENCODER_PREFIXES)}, strict=False)
            print(f"train.init_from {folder}: encoder loaded; the decoder differs and starts from scratch")
        else:
            kept = "encoder" if self.config.train.freeze_encoder else "VAE"
            raise Scail2Error(
                f"train.init_from {folder} holds a {kept} of another architecture than this config's "
                f"model section; copy the model section of its training.json"
            )

    # A step ---------------------------------------------------------------------------------------------------
    def training_step(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        clips, masks = self.plan.batch(step)
        terms = vae_losses(
            self.vae,
            clips,
            self.config.loss,
            step_generator(self.config.train.seed, step),
            masks,
            train_encoder=not self.config.train.freeze_encoder,
        )
        lr, grad_norm = self.schedule.apply(terms["loss"], step)
        metrics = {name: float(value.detach()) for name, value in terms.items()}
        return {**metrics, "lr": lr, "grad_norm": grad_norm, "seconds": time.perf_counter() - start}

    def ema_vae(self):
        """A copy of the model holding the EMA weights, in eval mode."""
        vae = build_vae(self.config.model)
        vae.load_state_dict(self.vae.state_dict())
        with torch.no_grad():
            for name, param in vae.named_parameters():
                param.copy_(self.ema[name])
        return vae.eval()

    # Checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        partial = self.checkpoints.begin(self.step)
        save_file({k: v.contiguous() for k, v in self.vae.state_dict().items()}, str(partial / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in self.ema.items()}, str(partial / "ema.safetensors"))
        checkpoint_io.save_optimizer(self.schedule.optimizer.state_dict(), partial)
        return self.checkpoints.commit(self.step, self.config.to_dict())

    def load_latest_checkpoint(self) -> None:
        latest, state = self.checkpoints.resume()
        if state["config"]["model"] != self.config.to_dict()["model"]:
            raise Scail2Error(
                f"{latest} holds a VAE of another architecture ({state['config']['model']}); resume "
                f"with the run's own config or choose another --out"
            )
        model_state = checkpoint_io.load_tensors(latest / checkpoint_io.MODEL_FILE)
        checkpoint_io.check_shapes(model_state, {k: v.shape for k, v in self.vae.state_dict().items()}, latest)
        self.vae.load_state_dict(model_state)
        self.schedule.ema.update(checkpoint_io.load_tensors(latest / checkpoint_io.EMA_FILE))
        self.schedule.optimizer.load_state_dict(checkpoint_io.load_optimizer(latest))
        self.step = int(state["step"])

    # Previews -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def write_preview(self) -> dict[str, float]:
        """PNG of input over reconstruction (EMA weights) for the first training pairs; returns their PSNR."""
        vae, rows, scores = self.ema_vae(), [], {}
        for index in range(min(self.config.train.preview_pairs, len(self.videos))):
            for name, stream, half in (("target", "target", False), ("driving_half", "driving", True)):
                video = model_video(self.videos.video(index, stream), half)[None]
                recon = vae.decode(vae.encode(video).latent_dist.mode()).sample
                scores.setdefault(f"psnr_{name}", []).append(psnr(recon, video))
                rows += [_strip(video[0]), _strip(recon[0])]
        path = self.out / "previews" / f"{CHECKPOINT_PREFIX}{self.step:08d}.png"
        _save_png(_stack_rows(rows), path)
        return {key: float(np.mean(values)) for key, values in scores.items()}

    # The loop -------------------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> None:
        cfg = self.config.train
        stop = min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps)
        self.run_log.start(self.config.to_dict())
        while self.step < stop:
            metrics = self.training_step(self.step)
            self.step += 1
            if cfg.preview_every and self.step % cfg.preview_every == 0:
                metrics.update(self.write_preview())
            if self.step % cfg.log_every == 0 or self.step == stop:
                self.run_log.write(self.step, metrics)
            if self.step % cfg.checkpoint_every == 0 or self.step == stop:
                self.save_checkpoint()


def _strip(video: torch.Tensor, columns: int = 9) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [H, columns * W, 3]: evenly spaced frames side by side."""
    picks = np.linspace(0, video.shape[1] - 1, min(columns, video.shape[1])).round().astype(int)
    frames = ((video[:, picks].clamp(-1, 1) + 1) * 127.5).round().byte()  # [3, n, H, W]
    return frames.permute(2, 1, 3, 0).flatten(1, 2).numpy()  # [H, n * W, 3]


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 2), (0, width - row.shape[1]), (0, 0))) for row in rows]
    return np.concatenate(padded)


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.png")
    Image.fromarray(image).save(partial)
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------------------------
# 5. Release: latent statistics, export, reconstruction PSNR
# ------------------------------------------------------------------------------------------------------------


def pipeline_inputs(videos: PairVideos, index: int) -> dict[str, torch.Tensor]:
    """What `scail2 cache` encodes of a pair: target at full size, driving at half size, the reference frame."""
    return {
        "target": model_video(videos.video(index, "target"))[None],
        "driving_half": model_video(videos.video(index, "driving"), half=True)[None],
        "reference": model_video(videos.video(index, "reference"))[None],
    }


@torch.no_grad()
def latent_statistics(vae, videos: PairVideos, pairs: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over every latent of the first `pairs` pairs."""
    z_dim = vae.config.z_dim
    total = torch.zeros(z_dim, dtype=torch.float64)
    squares = torch.zeros(z_dim, dtype=torch.float64)
    count = 0
    for index in range(min(pairs, len(videos))):
        for video in pipeline_inputs(videos, index).values():
            mu = vae.encode(video).latent_dist.mode().double().transpose(0, 1).flatten(1)  # [z, N]
            total += mu.sum(1)
            squares += mu.pow(2).sum(1)
            count += mu.shape[1]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def export_vae(trainer: VaeTrainer) -> Path:
    """`RUN/export/vae/`: the EMA weights as a diffusers folder whose config carries its latent statistics."""
    from diffusers.utils import logging as diffusers_logging

    vae, half = trainer.ema_vae(), trainer.config.export.dtype == "float16"
    if half:  # the statistics must describe the weights as they will be loaded: rounded to fp16
        vae.load_state_dict({name: value.half().float() for name, value in vae.state_dict().items()})
    mean, std = latent_statistics(vae, trainer.videos, trainer.config.export.stats_pairs)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    if half:
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # `.to(fp16)` warns about fp32 modules; this model declares none
        vae = vae.to(torch.float16)
        diffusers_logging.set_verbosity(verbosity)
    final = trainer.out / "export" / "vae"
    tmp = final.with_name(".vae.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    (tmp / "training.json").write_text(
        json.dumps(
            {
                "step": trainer.step,
                "config": trainer.config.to_dict(),
                "data": str(trainer.videos.directory.resolve()),
                "stats_pairs": trainer.config.export.stats_pairs,
            },
            indent=1,
        )
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_exported_vae(folder: str | Path):
    """An exported VAE folder as fp32 (CPU convolutions want fp32 whatever the stored dtype)."""
    from diffusers import AutoencoderKLWan

    if not (Path(folder) / "config.json").is_file():
        raise Scail2Error(f"{folder}: no config.json; pass a folder written by `scail2 train-vae` (RUN/export/vae)")
    return AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.float32).eval()


@torch.no_grad()
def reconstruction_psnr(vae, data_dir: str | Path, pairs: int) -> dict[str, float]:
    """Mean PSNR (dB) per stream over the first `pairs` pairs of a dataset, through `VideoLatentCodec`."""
    codec, videos = VideoLatentCodec(vae), PairVideos(data_dir)
    scores: dict[str, list[float]] = {}
    for index in range(min(pairs, len(videos))):
        for name, video in pipeline_inputs(videos, index).items():
            scores.setdefault(name, []).append(psnr(codec.decode(codec.encode(video)), video))
    result = {name: float(np.mean(values)) for name, values in scores.items()}
    return {**result, "pairs": min(pairs, len(videos))}
