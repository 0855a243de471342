"""Convert the official frozen components into the standard library classes.

See docs/architecture.md, "Checkpoint layouts".

| official file                                                       | becomes                               |
|---------------------------------------------------------------------|---------------------------------------|
| `Wan2.1_VAE.pth`                                                    | diffusers `AutoencoderKLWan`          |
| `models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth` | transformers `CLIPVisionModel`        |
| `umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth`                          | transformers `UMT5EncoderModel`       |
| `umt5-xxl/` tokenizer files                                         | the tokenizer, re-saved               |

Each conversion is a rename table (ordered regex substitutions from the official key to the library
key) plus a few named tensor operations (CLIP's fused QKV split, its class/position embedding
reshapes, umT5's shared token embedding). The architecture numbers are read from the tensors where
the file holds them (VAE width, CLIP width/depth/patch, umT5 sizes and head count). Loading is
memory-mapped and weights-only; the converted tensors are checked strictly against the target
model's names and shapes (one-line Scail2Error listing the first 10 problems and their count), then
written with `save_pretrained` (safetensors) into a temporary folder that is renamed when complete.
The source dtype is kept (VAE and CLIP are float32 on disk, umT5 bfloat16).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from scail2.errors import Scail2Error
from scail2.models.state_dict_io import (
    atomic_output_dir,
    check_state_dict,
    load_torch_checkpoint,
    require_tensor_dict,
)
from scail2.optional import require

Rename = tuple[str, str | Callable[[re.Match[str]], str]]

# ---------------------------------------------------------------------------------------------------
# 1. Shared machinery
# ---------------------------------------------------------------------------------------------------


def rename_keys(state_dict: Mapping[str, torch.Tensor], renames: Sequence[Rename]) -> dict[str, str]:
    """Map every official key through the ordered substitutions; returns {library key: official key}."""
    mapping: dict[str, str] = {}
    for official in state_dict:
        key = official
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        if key in mapping:
            raise Scail2Error(f"official keys {mapping[key]} and {official} both map to {key}; give the official file")
        mapping[key] = official
    return mapping


def _count_indexed(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    indices = {int(match.group(1)) for key in state_dict if (match := re.fullmatch(pattern, key))}
    return max(indices) + 1 if indices else 0


def _require(state_dict: Mapping[str, torch.Tensor], key: str, source: Path, what: str) -> torch.Tensor:
    if key not in state_dict:
        raise Scail2Error(f"{source}: is not a {what} (no `{key}`); give the official file")
    return state_dict[key]


def _load_official(source: str | Path, what: str) -> tuple[Path, dict[str, torch.Tensor]]:
    source = Path(source)
    return source, require_tensor_dict(load_torch_checkpoint(source, what=what), source, what)


def save_converted_model(
    build_model: Callable[[], nn.Module],
    converted: dict[str, torch.Tensor],
    out_dir: str | Path,
    *,
    source: Path,
    what: str,
    overwrite: bool = False,
) -> Path:
    """Build the target model on the meta device, strictly check and assign `converted`, save_pretrained atomically."""
    with torch.device("meta"):
        model = build_model()
    expected = {key: value.shape for key, value in model.state_dict().items()}
    check_state_dict(converted, expected, source=source, what=what)
    model.load_state_dict(converted, strict=True, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------------
# 2. Wan2.1 VAE -> diffusers AutoencoderKLWan
# ---------------------------------------------------------------------------------------------------

# Per-channel latent statistics of the Wan2.1 VAE; the latent codec normalises with them (docs/architecture.md,
# "Latent normalisation").
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
# Architecture of the released VAE besides its width (which is read from the file).
WAN21_VAE_ARCHITECTURE = {
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],  # diffusers' spelling
}


def _decoder_upsample_rename(num_res_blocks: int) -> Callable[[re.Match[str]], str]:
    # Each decoder stage is num_res_blocks + 1 residual blocks followed by one upsampler (none after the last).
    period = num_res_blocks + 2

    def rename(match: re.Match[str]) -> str:
        stage, position = divmod(int(match.group(1)), period)
        if position == period - 1:
            return f"decoder.up_blocks.{stage}.upsamplers.0."
        return f"decoder.up_blocks.{stage}.resnets.{position}."

    return rename


def vae_renames(num_res_blocks: int) -> list[Rename]:
    return [
        (r"^conv1\.", "quant_conv."),
        (r"^conv2\.", "post_quant_conv."),
        (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
        (r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out."),
        (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
        (r"^(encoder|decoder)\.middle\.0\.", r"\1.mid_block.resnets.0."),
        (r"^(encoder|decoder)\.middle\.1\.", r"\1.mid_block.attentions.0."),
        (r"^(encoder|decoder)\.middle\.2\.", r"\1.mid_block.resnets.1."),
        (r"^encoder\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1."),
        (r"^decoder\.upsamples\.(\d+)\.", _decoder_upsample_rename(num_res_blocks)),
        (r"\.residual\.0\.gamma$", ".norm1.gamma"),
        (r"\.residual\.2\.", ".conv1."),
        (r"\.residual\.3\.gamma$", ".norm2.gamma"),
        (r"\.residual\.6\.", ".conv2."),
        (r"\.shortcut\.", ".conv_shortcut."),
    ]


def vae_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: Path) -> dict:
    """The AutoencoderKLWan config: the width from `encoder.conv1.weight`, z_dim from `conv2.weight`."""
    base_dim = _require(state_dict, "encoder.conv1.weight", source, "Wan2.1 VAE checkpoint").shape[0]
    z_dim = _require(state_dict, "conv2.weight", source, "Wan2.1 VAE checkpoint").shape[0]
    return {
        "base_dim": int(base_dim),
        "z_dim": int(z_dim),
        **WAN21_VAE_ARCHITECTURE,
        "latents_mean": list(WAN21_LATENTS_MEAN),
        "latents_std": list(WAN21_LATENTS_STD),
    }


def convert_vae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Wan2.1 VAE keys -> AutoencoderKLWan keys (one to one, tensors untouched)."""
    mapping = rename_keys(state_dict, vae_renames(WAN21_VAE_ARCHITECTURE["num_res_blocks"]))
    return {key: state_dict[official] for key, official in mapping.items()}


def convert_vae(source: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """`Wan2.1_VAE.pth` -> an `AutoencoderKLWan.from_pretrained` folder at `out_dir`."""
    from diffusers import AutoencoderKLWan

    what = "Wan2.1 VAE checkpoint"
    source, state_dict = _load_official(source, what)
    config = vae_config_from_state_dict(state_dict, source)
    converted = convert_vae_state_dict(state_dict)
    return save_converted_model(
        lambda: AutoencoderKLWan(**config), converted, out_dir, source=source, what=what, overwrite=overwrite
    )


# ---------------------------------------------------------------------------------------------------
# 3. open-clip ViT-H/14 visual tower -> transformers CLIPVisionModel
# ---------------------------------------------------------------------------------------------------

# Heads of the released ViT-H/14 (the file does not record it: 1280 wide = 16 heads of 80).
CLIP_VIT_H_HEADS = 16
CLIP_LAYER_NORM_EPS = 1e-5
# Keys of the official file that the image encoder does not use: the projection head, the contrastive
# temperature and, in a full (not "onlyvisual") file, the text tower.
CLIP_UNUSED_KEYS = re.compile(r"^(visual\.head|log_scale|textual\..*)$")
CLIP_RENAMES: list[Rename] = [
    (r"^visual\.patch_embedding\.", "embeddings.patch_embedding."),
    (r"^visual\.cls_embedding$", "embeddings.class_embedding"),
    (r"^visual\.pos_embedding$", "embeddings.position_embedding.weight"),
    (r"^visual\.pre_norm\.", "pre_layrnorm."),
    (r"^visual\.post_norm\.", "post_layernorm."),
    (r"^visual\.transformer\.(\d+)\.", r"encoder.layers.\1."),
    (r"\.norm1\.", ".layer_norm1."),
    (r"\.norm2\.", ".layer_norm2."),
    (r"\.attn\.to_qkv\.", ".self_attn.qkv_proj."),  # split below
    (r"\.attn\.proj\.", ".self_attn.out_proj."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.2\.", ".mlp.fc2."),
]


def clip_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: Path, num_heads: int):
    from transformers import CLIPVisionConfig

    what = "open-clip visual checkpoint"
    patch = _require(state_dict, "visual.patch_embedding.weight", source, what)  # [D, 3, p, p]
    positions = _require(state_dict, "visual.pos_embedding", source, what).shape[-2]  # 1 + grid^2
    hidden, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = round((positions - 1) ** 0.5)
    if hidden % num_heads:
        raise Scail2Error(f"{source}: width {hidden} is not divisible by {num_heads} heads; pass the right head count")
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=int(_require(state_dict, "visual.transformer.0.mlp.0.weight", source, what).shape[0]),
        num_hidden_layers=_count_indexed(state_dict, r"visual\.transformer\.(\d+)\.norm1\.weight"),
        num_attention_heads=num_heads,
        num_channels=int(patch.shape[1]),
        image_size=grid * patch_size,
        patch_size=patch_size,
        hidden_act="gelu",  # exact GELU; CLIP's default quick_gelu diverges from the checkpoint
        layer_norm_eps=CLIP_LAYER_NORM_EPS,
    )


def convert_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official open-clip visual keys -> CLIPVisionModel keys (fused QKV split in three)."""
    used = {key: value for key, value in state_dict.items() if not CLIP_UNUSED_KEYS.match(key)}
    converted: dict[str, torch.Tensor] = {}
    for key, official in rename_keys(used, CLIP_RENAMES).items():
        tensor = used[official]
        if ".self_attn.qkv_proj." in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[key.replace("qkv_proj", name)] = part.clone()
        elif key == "embeddings.class_embedding":
            converted[key] = tensor.reshape(-1)  # [1, 1, D] -> [D]
        elif key == "embeddings.position_embedding.weight":
            converted[key] = tensor.reshape(tensor.shape[-2], tensor.shape[-1])  # [1, N, D] -> [N, D]
        else:
            converted[key] = tensor
    return converted


def convert_clip(
    source: str | Path, out_dir: str | Path, *, num_heads: int = CLIP_VIT_H_HEADS, overwrite: bool = False
) -> Path:
    """The open-clip ViT-H/14 `...onlyvisual.pth` -> a `CLIPVisionModel.from_pretrained` folder at `out_dir`."""
    from transformers import CLIPVisionModel

    what = "open-clip visual checkpoint"
    source, state_dict = _load_official(source, what)
    config = clip_config_from_state_dict(state_dict, source, num_heads)
    converted = convert_clip_state_dict(state_dict)
    return save_converted_model(
        lambda: CLIPVisionModel(config), converted, out_dir, source=source, what=what, overwrite=overwrite
    )


# ---------------------------------------------------------------------------------------------------
# 4. umT5-XXL encoder -> transformers UMT5EncoderModel
# ---------------------------------------------------------------------------------------------------

UMT5_RELATIVE_MAX_DISTANCE = 128  # not recorded in the weights (docs/architecture.md, "Text and image context")
UMT5_LAYER_NORM_EPS = 1e-6
UMT5_RENAMES: list[Rename] = [
    (r"^token_embedding\.weight$", "shared.weight"),  # also feeds encoder.embed_tokens, below
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),  # GELU branch
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),  # linear branch
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
]


def umt5_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: Path):
    from transformers import UMT5Config

    what = "umT5 encoder checkpoint"
    embedding = _require(state_dict, "token_embedding.weight", source, what)  # [vocab, D]
    buckets, heads = _require(state_dict, "blocks.0.pos_embedding.embedding.weight", source, what).shape
    inner = _require(state_dict, "blocks.0.attn.q.weight", source, what).shape[0]
    return UMT5Config(
        vocab_size=int(embedding.shape[0]),
        d_model=int(embedding.shape[1]),
        d_kv=int(inner // heads),
        d_ff=int(_require(state_dict, "blocks.0.ffn.fc1.weight", source, what).shape[0]),
        num_layers=_count_indexed(state_dict, r"blocks\.(\d+)\.norm1\.weight"),
        num_heads=int(heads),
        relative_attention_num_buckets=int(buckets),
        relative_attention_max_distance=UMT5_RELATIVE_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",  # fc1(x) * gelu_tanh(gate(x)), as upstream
        layer_norm_epsilon=UMT5_LAYER_NORM_EPS,
        dropout_rate=0.0,
    )


def convert_umt5_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official umT5 encoder keys -> UMT5EncoderModel keys; the token embedding feeds both embeddings."""
    converted = {key: state_dict[official] for key, official in rename_keys(state_dict, UMT5_RENAMES).items()}
    if "shared.weight" in converted:
        converted["encoder.embed_tokens.weight"] = converted["shared.weight"]
    return converted


def convert_umt5(source: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """`models_t5_umt5-xxl-enc-bf16.pth` -> a `UMT5EncoderModel.from_pretrained` folder at `out_dir`."""
    from transformers import UMT5EncoderModel

    what = "umT5 encoder checkpoint"
    source, state_dict = _load_official(source, what)
    config = umt5_config_from_state_dict(state_dict, source)
    converted = convert_umt5_state_dict(state_dict)
    return save_converted_model(
        lambda: UMT5EncoderModel(config), converted, out_dir, source=source, what=what, overwrite=overwrite
    )


def convert_tokenizer(source_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Re-save the umT5 tokenizer folder (`umt5-xxl/`) so `AutoTokenizer.from_pretrained(out_dir)` loads it."""
    from transformers import AutoTokenizer

    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise Scail2Error(f"{source_dir}: tokenizer folder not found; give the official umt5-xxl folder")
    if not (source_dir / "tokenizer.json").is_file():  # only spiece.model: transformers converts it
        require("sentencepiece", purpose="reading the tokenizer's spiece.model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir)
    except (OSError, ValueError, TypeError) as error:
        raise Scail2Error(
            f"{source_dir}: cannot load the umT5 tokenizer ({error.__class__.__name__}); the folder needs the "
            "google/umt5-xxl tokenizer files (spiece.model, tokenizer.json, tokenizer_config.json)"
        ) from None
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
