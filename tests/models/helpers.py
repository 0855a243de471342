"""Tiny models, inputs and foreign checkpoint layouts shared by the transformer and converter tests."""

from __future__ import annotations

import re

import torch

from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel

# Unequal sizes: B=2, T=3 latent frames, H=8, W=12 latent (driving grid 4x6), text L=5 of text_len 7.
BATCH, FRAMES, HEIGHT, WIDTH, TEXT_TOKENS, IMAGE_TOKENS = 2, 3, 8, 12, 5, 257


def tiny_model(seed: int = 0, **overrides) -> SCAIL2Transformer3DModel:
    """The tiny preset with every parameter randomised (norm weights around 1) so no path is an identity."""
    torch.manual_seed(seed)
    model = SCAIL2Transformer3DModel.from_preset("tiny", **overrides).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or name.endswith("proj.0.weight") or name.endswith("proj.4.weight"):
                param.copy_(1 + 0.3 * noise)
            else:
                param.copy_(noise * (0.5 / max(1, param[0].numel()) ** 0.5) if param.ndim > 1 else 0.2 * noise)
    return model


def tiny_inputs(
    model: SCAIL2Transformer3DModel, seed: int = 0, batch: int = BATCH, extra_refs: int = 0, history: bool = False
) -> dict:
    cfg, c = model.config, model.latent_channels
    g = torch.Generator().manual_seed(seed)
    b, t, h, w = batch, FRAMES, HEIGHT, WIDTH
    s = model.driving_scale  # the driving stream's resolution divisor (2: half)
    inputs = dict(
        hidden_states=torch.randn(b, c, t, h, w, generator=g),
        timestep=torch.tensor([937.0, 41.5, 500.0][:b]),
        encoder_hidden_states=torch.randn(b, TEXT_TOKENS, cfg.text_dim, generator=g),
        ref_latents=torch.randn(b, c, 1, h, w, generator=g),
        ref_masks=torch.rand(b, cfg.mask_dim, 1 + t, h, w, generator=g),
        pose_latents=torch.randn(b, c, t, h // s, w // s, generator=g),
        driving_masks=torch.rand(b, cfg.mask_dim, t, h // s, w // s, generator=g),
    )
    if cfg.model_type == "i2v":
        inputs["image_embeds"] = torch.randn(b, IMAGE_TOKENS, cfg.image_dim, generator=g)
    if history:
        mask = torch.zeros(b, 4, t, h, w)
        mask[:, :, :2] = 1
        inputs["history_mask"] = mask
    if extra_refs:
        inputs["extra_ref_latents"] = torch.randn(b, c, extra_refs, h, w, generator=g)
        inputs["extra_ref_masks"] = torch.rand(b, cfg.mask_dim, extra_refs, h, w, generator=g)
    return inputs


# ------------------------------------------------------------------------------------------------------------
# Foreign layouts, built by applying the inverse of each conversion to a Wan-keyed state dict.
# ------------------------------------------------------------------------------------------------------------

_WAN_TO_SAT = [
    (r"blocks\.(\d+)\.modulation", r"mixins.adaln_layer.adaLN_modulations.\1"),
    (r"blocks\.(\d+)\.self_attn\.norm_q\.weight", r"mixins.adaln_layer.query_layernorm_list.\1.weight"),
    (r"blocks\.(\d+)\.self_attn\.norm_k\.weight", r"mixins.adaln_layer.key_layernorm_list.\1.weight"),
    (r"blocks\.(\d+)\.cross_attn\.norm_q\.weight", r"mixins.adaln_layer.cross_query_layernorm_list.\1.weight"),
    (r"blocks\.(\d+)\.cross_attn\.norm_k\.weight", r"mixins.adaln_layer.cross_key_layernorm_list.\1.weight"),
    (r"blocks\.(\d+)\.cross_attn\.norm_k_img\.weight", r"mixins.adaln_layer.clip_feature_key_layernorm_list.\1.weight"),
    (r"head\.modulation", "mixins.final_layer.adaLN_modulation"),
    (r"head\.head\.(weight|bias)", r"mixins.final_layer.linear.\1"),
    (r"patch_embedding\.(weight|bias)", r"mixins.patch_embed.proj.\1"),
    (r"patch_embedding_pose\.(weight|bias)", r"mixins.patch_embed.proj_pose.\1"),
    (r"patch_embedding_mask\.(weight|bias)", r"mixins.patch_embed.proj_mask.\1"),
    (r"blocks\.(\d+)\.self_attn\.o\.(weight|bias)", r"transformer.layers.\1.attention.dense.\2"),
    (r"blocks\.(\d+)\.cross_attn\.q\.(weight|bias)", r"transformer.layers.\1.cross_attention.query.\2"),
    (r"blocks\.(\d+)\.cross_attn\.o\.(weight|bias)", r"transformer.layers.\1.cross_attention.dense.\2"),
    (r"blocks\.(\d+)\.norm3\.(weight|bias)", r"transformer.layers.\1.post_cross_attention_layernorm.\2"),
    (r"blocks\.(\d+)\.ffn\.0\.(weight|bias)", r"transformer.layers.\1.mlp.dense_h_to_4h.\2"),
    (r"blocks\.(\d+)\.ffn\.2\.(weight|bias)", r"transformer.layers.\1.mlp.dense_4h_to_h.\2"),
    (r"time_embedding\.([02])\.(weight|bias)", r"time_embed.\1.\2"),
    (r"time_projection\.1\.(weight|bias)", r"adaln_projection.1.\1"),
    (r"text_embedding\.([02])\.(weight|bias)", r"text_embedding.\1.\2"),
    (r"img_emb\.proj\.([0134])\.(weight|bias)", r"clip_proj.proj.\1.\2"),
]
_FUSED = [
    (r"blocks\.(\d+)\.self_attn\.([qkv])\.(weight|bias)", "qkv", r"transformer.layers.\1.attention.query_key_value.\3"),
    (r"blocks\.(\d+)\.cross_attn\.([kv])\.(weight|bias)", "kv", r"transformer.layers.\1.cross_attention.key_value.\3"),
    (
        r"blocks\.(\d+)\.cross_attn\.([kv])_img\.(weight|bias)",
        "kv",
        r"mixins.adaln_layer.clip_feature_key_value_list.\1.\3",
    ),
]


def to_sat_layout(wan: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan names -> the SAT release layout (prefixed, fused qkv / kv), as the official checkpoint stores it."""
    sat, fused = {}, {}
    for key, tensor in wan.items():
        for pattern, order, target in _FUSED:
            match = re.fullmatch(pattern, key)
            if match:
                fused.setdefault(match.expand(target), {})[order.index(match.group(2))] = tensor
                break
        else:
            for pattern, target in _WAN_TO_SAT:
                if re.fullmatch(pattern, key):
                    sat[re.sub(pattern, target, key)] = tensor
                    break
            else:
                raise KeyError(f"no SAT name for {key}")
    for name, parts in fused.items():
        sat[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return {"model.diffusion_model." + k: v for k, v in sat.items()}


def to_mlx_layout(wan: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan names -> MLX: sequential indices under `.layers.`, convolution weights channels-last."""
    mlx = {}
    for key, tensor in wan.items():
        name = re.sub(
            r"(text_embedding|time_embedding|time_projection|ffn|img_emb\.proj)\.(\d+)\.", r"\1.layers.\2.", key
        )
        if key.startswith("patch_embedding") and tensor.ndim == 5:
            tensor = tensor.permute(0, 2, 3, 4, 1).contiguous()
        mlx[name] = tensor
    return mlx
