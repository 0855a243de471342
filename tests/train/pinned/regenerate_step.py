"""Regenerate step.json: one optimiser step of each trainer, pinned (fixed seed, CPU, fp32).

Run from the repository root: `PYTHONPATH=src .venv/bin/python tests/train/pinned/regenerate_step.py`. Only after a
change that is meant to move the numbers; say why in the commit. test_pinned_step.py compares against the file
with the same functions, so the two cannot drift apart.

What is pinned: the learning rate of every shipped config at the steps where the schedule changes shape; and for
one step of the transformer trainer (tiny preset, randomised weights, an in-memory latent cache) and of the VAE
trainer (tiny widths, a two-pair synthesised dataset): the loss, the global gradient norm, and for a few named
parameters their gradient's L2 norm, mean and first elements, the L2 norm of the AdamW update and of the EMA's
move.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests.models.helpers import tiny_model  # noqa: E402

PINNED = Path(__file__).with_name("step.json")
SEED = 3
TRANSFORMER_CONFIG = ROOT / "configs" / "tiny.yaml"
VAE_CONFIG = ROOT / "configs" / "demo_vae.yaml"
VAE_OVERRIDES = [
    "model.base_dim=4",
    "model.dim_mult=[1,2,2]",
    "train.batch_size=2",
    "train.threads=0",
    "data.clip_frames=5",
    "data.crop=16",
    "loss.foreground_weight=2",
    f"train.seed={SEED}",
]
TRANSFORMER_PARAMETERS = (
    "patch_embedding.weight",
    "patch_embedding_mask.weight",
    "text_embedding.0.weight",
    "img_emb.proj.1.weight",
    "blocks.0.modulation",
    "blocks.0.self_attn.q.weight",
    "blocks.1.cross_attn.k_img.weight",
    "blocks.1.ffn.2.weight",
    "head.head.weight",
)
VAE_PARAMETERS = (
    "encoder.conv_in.weight",
    "encoder.down_blocks.2.conv1.weight",
    "encoder.mid_block.attentions.0.to_qkv.weight",
    "quant_conv.weight",
    "post_quant_conv.weight",
    "decoder.conv_in.weight",
    "decoder.conv_out.weight",
)
LATENT_SHAPE = (16, 3, 8, 12)  # C, T, H, W: unequal sizes so a swapped axis fails
HEAD = 4  # first gradient elements pinned per parameter


# ------------------------------------------------------------------------------------------------------------
# Learning-rate schedules of the shipped configs
# ------------------------------------------------------------------------------------------------------------


def schedule_configs() -> dict:
    from scail2.train.config import load_config
    from scail2.train.vae import load_vae_config

    return {
        "tiny.yaml": load_config(TRANSFORMER_CONFIG),
        "tiny.yaml dpo": load_config(TRANSFORMER_CONFIG, ["train.stage=dpo"]).resolved(),
        "demo.yaml": load_config(ROOT / "configs" / "demo.yaml"),
        "demo_vae.yaml": load_vae_config(VAE_CONFIG),
    }


def schedule_steps(config) -> list[int]:
    """Where the curve changes shape: warm-up, its end, mid-decay, the end of the schedule and past it."""
    warmup, total = config.optim.warmup_steps, config.train.max_steps
    return sorted({0, 1, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total - 1, total, total + 10})


def learning_rates() -> dict:
    from scail2.train.schedule import learning_rate

    curves = {}
    for label, config in schedule_configs().items():
        steps = schedule_steps(config)
        curves[label] = {"steps": steps, "lr": [learning_rate(config.optim, s, config.train.max_steps) for s in steps]}
    return curves


# ------------------------------------------------------------------------------------------------------------
# One step of each trainer
# ------------------------------------------------------------------------------------------------------------


class MemoryCache:
    """The part of `LatentCache` the trainer reads, holding two seeded samples (one animate, one replace)."""

    driving_signal = "frames"

    def __init__(self, seed: int, text_dim: int = 20, image_dim: int = 24):
        g = torch.Generator().manual_seed(seed)
        c, t, h, w = LATENT_SHAPE
        self.samples = []
        for index, mode in enumerate(("animate", "replace")):
            tensors = {
                "target_latents": torch.randn(c, t, h, w, generator=g),
                "ref_latents": torch.randn(c, 1, h, w, generator=g),
                "ref_masks": torch.rand(28, 1, h, w, generator=g),
                "pose_latents": torch.randn(c, t, h // 2, w // 2, generator=g),
                "driving_masks": torch.rand(28, t, h // 2, w // 2, generator=g),
                "detail_masks": torch.rand(2, t, h, w, generator=g),
                "target_masks": torch.rand(1, t, h, w, generator=g),
                "text_embeds": torch.randn(5 + index, text_dim, generator=g),
                "image_embeds": torch.randn(257, image_dim, generator=g),
            }
            self.samples.append((f"{index:09d}", mode, tensors))
        self.shapes = [tuple(s[2]["target_latents"].shape) for s in self.samples]
        self.null_text = torch.randn(2, text_dim, generator=g)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from scail2.data.latent_cache import CachedSample

        key, mode, tensors = self.samples[index]
        return CachedSample(key=key, task="pinned", mode=mode, tensors=dict(tensors))


def _parameter_statistics(
    named: dict[str, torch.Tensor],
    before: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    names: tuple[str, ...],
) -> dict:
    stats = {}
    for name in names:
        param, start = named[name].detach(), before[name]
        grad = named[name].grad.detach()
        stats[name] = {
            "grad_norm": grad.norm().item(),
            "grad_mean": grad.mean().item(),
            "grad_head": grad.flatten()[:HEAD].tolist(),
            "update_norm": (param - start).norm().item(),
            "ema_shift_norm": (ema[name] - start).norm().item(),
        }
    return stats


def transformer_step(workdir: Path) -> dict:
    """Step 0 of the tiny config on randomised tiny weights and an in-memory cache, on CPU in fp32."""
    from scail2.train.config import load_config
    from scail2.train.trainer import ProcessGroup, Trainer

    tiny_model(seed=SEED).save_pretrained(workdir / "model" / "transformer")
    config = load_config(
        TRANSFORMER_CONFIG,
        [
            f"model.pretrained={workdir / 'model'}",
            "train.batch_size=2",
            "train.mixed_precision=fp32",
            f"train.seed={SEED}",
        ],
    )
    cpu = ProcessGroup(0, 1, torch.device("cpu"))
    with (
        mock.patch("scail2.train.trainer.open_latent_caches", lambda directories: MemoryCache(SEED)),
        mock.patch("scail2.train.trainer.init_processes", lambda: cpu),
    ):
        trainer = Trainer(config, workdir / "cache", workdir / "transformer-run")
    parameters = dict(trainer.model.named_parameters())
    before = {name: value.detach().clone() for name, value in parameters.items()}
    metrics = trainer.training_step(0)
    return {
        "loss": metrics["loss"],
        "grad_norm": metrics["grad_norm"],
        "lr": metrics["lr"],
        "parameters": _parameter_statistics(parameters, before, trainer.ema, TRANSFORMER_PARAMETERS),
    }


def vae_step(workdir: Path) -> dict:
    """Step 0 of a tiny-width demo VAE config on two synthesised pairs (32x48, 9 frames), character-weighted."""
    from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
    from scail2.data.shards import write_dataset
    from scail2.train.vae import VaeTrainer, load_vae_config

    data = workdir / "pairs"
    write_dataset(
        ProceduralPairGenerator(SynthConfig(height=32, width=48, frames=9, seed=5)),
        data,
        2,
        shard_size=1,
        progress=False,
    )
    trainer = VaeTrainer(load_vae_config(VAE_CONFIG, VAE_OVERRIDES), data, workdir / "vae-run")
    parameters = dict(trainer.vae.named_parameters())
    before = {name: value.detach().clone() for name, value in parameters.items()}
    metrics = trainer.training_step(0)
    terms = {name: metrics[name] for name in ("loss", "l1", "mse", "gradient", "temporal", "kl")}
    return {
        **terms,
        "grad_norm": metrics["grad_norm"],
        "lr": metrics["lr"],
        "parameters": _parameter_statistics(parameters, before, trainer.ema, VAE_PARAMETERS),
    }


def pinned_values() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "seed": SEED,
            "learning_rates": learning_rates(),
            "transformer": transformer_step(Path(tmp)),
            "vae": vae_step(Path(tmp)),
        }


def main() -> None:
    values = pinned_values()
    partial = PINNED.with_name(f".{PINNED.name}.partial")
    partial.write_text(json.dumps(values, indent=1) + "\n")
    partial.replace(PINNED)
    print(f"wrote {PINNED}")


if __name__ == "__main__":
    main()
