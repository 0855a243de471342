"""Tiny random pipeline components built in-process (no weights are ever downloaded)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.pipelines.pipeline_scail2 import SCAIL2Pipeline

CORPUS = [
    "a cartoon fox dances in a sunny meadow",
    "a knight waves a sword on a castle wall",
    "a robot walks across a busy street at night",
    "an illustrated girl talks and gestures at a desk",
    "a small dragon jumps over a river",
    "the character spins and crouches in a studio",
] * 20


def tiny_tokenizer(folder: Path):
    """A real T5 tokenizer whose sentencepiece model is trained here on a few sentences."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spiece"),
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return T5TokenizerFast(vocab_file=str(folder / "spiece.model"), extra_ids=0)


def tiny_text_encoder(vocab_size: int, d_model: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=6,
        d_ff=36,
        num_layers=2,
        num_heads=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(config).eval()


def tiny_image_encoder(hidden_size: int):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=224,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    return CLIPVisionModel(config).eval()


def tiny_vae(z_dim: int = 16):
    from diffusers import AutoencoderKLWan

    # Wan2.1's latent statistics (diffusers' defaults) for z 16; plain ones for other widths
    stats = {} if z_dim == 16 else dict(latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    return AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1, **stats).eval()


def tiny_pipeline(
    seed: int = 0, text: bool = True, image: bool = True, z_dim: int = 16, **transformer_overrides
) -> SCAIL2Pipeline:
    """`z_dim` other than Wan's 16: a VAE with wider latents and a transformer whose in/out channels follow;
    `transformer_overrides` go to the tiny transformer (e.g. driving_scale=1)."""
    torch.manual_seed(seed)
    transformer = SCAIL2Transformer3DModel.from_preset(
        "tiny", model_type="i2v" if image else "t2v", in_dim=z_dim + 4, out_dim=z_dim, **transformer_overrides
    ).eval()
    parts = dict(transformer=transformer, vae=tiny_vae(z_dim))
    if text:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = tiny_tokenizer(Path(tmp))
        parts.update(tokenizer=tokenizer, text_encoder=tiny_text_encoder(len(tokenizer), transformer.config.text_dim))
    if image:
        parts["image_encoder"] = tiny_image_encoder(transformer.config.image_dim)
    return SCAIL2Pipeline(**parts)
