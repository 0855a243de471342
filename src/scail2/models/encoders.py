"""Inputs and outputs of the frozen encoders: CLIP image features and umT5 prompt embeddings.

The encoders themselves are transformers' `CLIPVisionModel` and `UMT5EncoderModel` (see
`convert_components`); this module holds the preprocessing upstream applies around them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from scail2.optional import require

# The released CLIP's input size and normalisation (OpenAI CLIP statistics).
CLIP_IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Token budget of the text encoder (the config's text_len): prompts are padded/truncated to it.
TEXT_LEN = 512


# ---------------------------------------------------------------------------------------------------
# 1. CLIP image features
# ---------------------------------------------------------------------------------------------------


def clip_pixel_values(images: torch.Tensor, size: int = CLIP_IMAGE_SIZE) -> torch.Tensor:
    """Reference image(s) in [-1, 1], [3, H, W] or [B, 3, H, W] -> normalised CLIP input [B, 3, size, size].

    A stretch (aspect ratio not kept), bicubic, align_corners=False, no antialias; then x * 0.5 + 0.5
    and the CLIP mean/std. Computed in float32.
    """
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    resized = F.interpolate(batch.to(torch.float32), size=(size, size), mode="bicubic", align_corners=False)
    unit = resized * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=unit.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=unit.device).view(1, 3, 1, 1)
    return (unit - mean) / std


@torch.no_grad()
def clip_image_features(
    image_encoder: torch.nn.Module, pixel_values: torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """Features after all but the last transformer block, no post-norm: [B, 257, 1280] for ViT-H/14.

    `hidden_states[-2]` of transformers' CLIPVisionModel is exactly that (index 0 is the
    pre-normed embedding, index i the output of block i). `device`: where the encoder runs (default: where its
    weights are; an offloaded encoder's weights are elsewhere).
    """
    parameter = next(image_encoder.parameters())
    outputs = image_encoder(
        pixel_values=pixel_values.to(device=device or parameter.device, dtype=parameter.dtype),
        output_hidden_states=True,
    )
    return outputs.hidden_states[-2]


# ---------------------------------------------------------------------------------------------------
# 2. umT5 prompt embeddings
# ---------------------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """Upstream's prompt cleaning: ftfy, HTML-unescape twice, strip, collapse whitespace."""
    ftfy = require("ftfy", purpose="cleaning prompts for the text encoder")
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def tokenize_prompts(tokenizer, prompts: Sequence[str], text_len: int = TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Cleaned prompts -> (input_ids, attention_mask), each [B, text_len]; the EOS token is appended."""
    encoded = tokenizer(
        [clean_prompt(prompt) for prompt in prompts],
        padding="max_length",
        truncation=True,
        max_length=text_len,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"]


@torch.no_grad()
def encode_prompts(
    text_encoder: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    text_len: int = TEXT_LEN,
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """Prompts -> one embedding [L_i, d_model] each, trimmed to its real token count.

    The empty prompt gives L = 1 (the EOS token only), as upstream's negative context. `device`: where the
    encoder runs (default: where its weights are; an offloaded encoder's weights are elsewhere).
    """
    input_ids, attention_mask = tokenize_prompts(tokenizer, prompts, text_len)
    device = device or next(text_encoder.parameters()).device
    hidden = text_encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
    lengths = attention_mask.sum(dim=1).tolist()
    return [states[:length] for states, length in zip(hidden, lengths)]
