"""Component converters on tiny random weights laid out as the official files, plus the encoder-side preprocessing.

Each test builds a tiny library model, rewrites its weights into the official layout with an inverse
mapping written here (independently of the converter's rename tables), saves that as a `.pth`,
converts it back and compares. Where the official architecture is small enough to write down from
the spec (CLIP ViT, umT5 encoder), an independent functional forward over the official-layout weights
is compared with the converted library model's output.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scail2.errors import Scail2Error
from scail2.models.convert_components import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    convert_clip,
    convert_tokenizer,
    convert_umt5,
    convert_vae,
)
from scail2.models.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    clean_prompt,
    clip_image_features,
    clip_pixel_values,
    encode_prompts,
    tokenize_prompts,
)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------


def official_vae_key(key: str) -> str:
    """diffusers AutoencoderKLWan key -> the key of the same tensor in `Wan2.1_VAE.pth`."""
    head, _, rest = key.partition(".")
    if head in ("quant_conv", "post_quant_conv"):
        return {"quant_conv": "conv1", "post_quant_conv": "conv2"}[head] + "." + rest
    # Leaves of residual blocks first (before conv_in becomes conv1, which is not a residual leaf).
    for new, old in (
        (r"\.norm1\.gamma$", ".residual.0.gamma"),
        (r"\.conv1\.", ".residual.2."),
        (r"\.norm2\.gamma$", ".residual.3.gamma"),
        (r"\.conv2\.", ".residual.6."),
        (r"\.conv_shortcut\.", ".shortcut."),
    ):
        key = re.sub(new, old, key)
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.+)", key):
        key = f"decoder.upsamples.{4 * int(match[1]) + 3}.{match[2]}"
    elif match := re.fullmatch(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.+)", key):
        key = f"decoder.upsamples.{4 * int(match[1]) + int(match[2])}.{match[3]}"
    for new, old in (
        ("encoder.down_blocks.", "encoder.downsamples."),
        ("mid_block.resnets.0.", "middle.0."),
        ("mid_block.attentions.0.", "middle.1."),
        ("mid_block.resnets.1.", "middle.2."),
        (".conv_in.", ".conv1."),
        (".norm_out.", ".head.0."),
        (".conv_out.", ".head.2."),
    ):
        key = key.replace(new, old)
    return key


@pytest.fixture(scope="module")
def tiny_vae_files(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    folder = tmp_path_factory.mktemp("vae")
    model = randomize(AutoencoderKLWan(base_dim=8), seed=0)
    official = {official_vae_key(key): value.clone() for key, value in model.state_dict().items()}
    torch.save(official, folder / "Wan2.1_VAE.pth")
    return model, official, folder / "Wan2.1_VAE.pth"


def test_vae_official_layout_is_the_documented_one(tiny_vae_files):
    _, official, _ = tiny_vae_files
    assert len(official) == 194
    for key in (
        "conv1.weight",
        "conv2.bias",
        "encoder.conv1.weight",
        "encoder.middle.1.to_qkv.weight",
        "encoder.downsamples.5.time_conv.weight",
        "decoder.upsamples.3.resample.1.weight",
        "decoder.upsamples.4.shortcut.weight",
        "decoder.upsamples.14.residual.6.bias",
        "decoder.head.2.weight",
    ):
        assert key in official, key


def test_vae_converts_one_to_one_and_agrees_with_diffusers_own_mapping(tiny_vae_files, tmp_path):
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    model, official, source = tiny_vae_files
    out = convert_vae(source, tmp_path / "vae")
    loaded = AutoencoderKLWan.from_pretrained(out).eval()
    assert loaded.config.base_dim == 8
    assert list(loaded.config.latents_mean) == list(WAN21_LATENTS_MEAN)
    assert list(loaded.config.latents_std) == list(WAN21_LATENTS_STD)
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # An independent rename table (the one diffusers uses to load single-file Wan VAEs) agrees key for key.
    assert set(convert_wan_vae_to_diffusers(dict(official))) == set(expected)
    video = torch.randn(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(video).latent_dist.mean, model.encode(video).latent_dist.mean)
    assert listing(tmp_path) == ["vae"]


def test_vae_with_missing_and_unknown_keys_is_refused_and_writes_nothing(tiny_vae_files, tmp_path):
    _, official, _ = tiny_vae_files
    broken = {key: value for key, value in official.items() if key != "decoder.head.2.bias"}
    broken["decoder.extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    expected = r"broken.pth: .*1 missing: decoder.conv_out.bias; 1 unexpected: decoder.extra.weight"
    with pytest.raises(Scail2Error, match=expected):
        convert_vae(tmp_path / "broken.pth", tmp_path / "vae")
    assert listing(tmp_path) == ["broken.pth"]
    (tmp_path / "cut.pth").write_bytes((tmp_path / "broken.pth").read_bytes()[:500])
    with pytest.raises(Scail2Error, match="cut.pth: Wan2.1 VAE checkpoint cannot be read"):
        convert_vae(tmp_path / "cut.pth", tmp_path / "vae")
    with pytest.raises(Scail2Error, match="nothing.pth: Wan2.1 VAE checkpoint not found"):
        convert_vae(tmp_path / "nothing.pth", tmp_path / "vae")


# ---------------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------------

CLIP_TINY = dict(
    hidden_size=24,
    intermediate_size=40,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=42,
    patch_size=14,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)


def official_clip_state_dict(model) -> dict[str, torch.Tensor]:
    """CLIPVisionModel weights -> the open-clip "onlyvisual" layout (plus the unused head and log_scale)."""
    sd = model.state_dict()
    width = CLIP_TINY["hidden_size"]
    official = {
        "log_scale": torch.tensor(4.6),
        "visual.head": torch.randn(width, 16),
        "visual.patch_embedding.weight": sd["embeddings.patch_embedding.weight"],
        "visual.cls_embedding": sd["embeddings.class_embedding"].reshape(1, 1, width),
        "visual.pos_embedding": sd["embeddings.position_embedding.weight"].unsqueeze(0),
        "visual.pre_norm.weight": sd["pre_layrnorm.weight"],
        "visual.pre_norm.bias": sd["pre_layrnorm.bias"],
        "visual.post_norm.weight": sd["post_layernorm.weight"],
        "visual.post_norm.bias": sd["post_layernorm.bias"],
    }
    for i in range(CLIP_TINY["num_hidden_layers"]):
        ours, theirs = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for kind in ("weight", "bias"):
            official[f"{theirs}attn.to_qkv.{kind}"] = torch.cat([sd[f"{ours}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for new, old in (
                ("self_attn.out_proj", "attn.proj"),
                ("layer_norm1", "norm1"),
                ("layer_norm2", "norm2"),
                ("mlp.fc1", "mlp.0"),
                ("mlp.fc2", "mlp.2"),
            ):
                official[f"{theirs}{old}.{kind}"] = sd[f"{ours}{new}.{kind}"]
    return {key: value.clone() for key, value in official.items()}


def open_clip_features(official: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """The official ViT written from the spec: pre-LN blocks, exact GELU, output after all but the last block."""
    width = official["visual.cls_embedding"].shape[-1]
    patches = F.conv2d(pixels, official["visual.patch_embedding.weight"], stride=CLIP_TINY["patch_size"])
    tokens = patches.flatten(2).transpose(1, 2)  # [B, grid^2, D]
    cls = official["visual.cls_embedding"].expand(pixels.shape[0], 1, width)
    x = torch.cat([cls, tokens], dim=1) + official["visual.pos_embedding"]
    x = F.layer_norm(x, (width,), official["visual.pre_norm.weight"], official["visual.pre_norm.bias"], eps=1e-5)
    depth = 1 + max(int(k.split(".")[2]) for k in official if k.startswith("visual.transformer."))
    for i in range(depth - 1):
        p = lambda name, i=i: official[f"visual.transformer.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(x, (width,), p("norm1.weight"), p("norm1.bias"), eps=1e-5)
        q, k, v = F.linear(h, p("attn.to_qkv.weight"), p("attn.to_qkv.bias")).chunk(3, dim=-1)
        split = lambda t: t.unflatten(-1, (heads, width // heads)).transpose(1, 2)  # noqa: E731
        attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads), dim=-1) @ split(v)
        x = x + F.linear(attn.transpose(1, 2).flatten(2), p("attn.proj.weight"), p("attn.proj.bias"))
        h = F.layer_norm(x, (width,), p("norm2.weight"), p("norm2.bias"), eps=1e-5)
        x = x + F.linear(F.gelu(F.linear(h, p("mlp.0.weight"), p("mlp.0.bias"))), p("mlp.2.weight"), p("mlp.2.bias"))
    return x


def test_clip_conversion_and_features_match_an_independent_forward(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = randomize(CLIPVisionModel(CLIPVisionConfig(**CLIP_TINY)), seed=2)
    official = official_clip_state_dict(model)
    assert len(official) == 8 + 12 * CLIP_TINY["num_hidden_layers"] + 1  # 393 at 32 layers
    torch.save(official, tmp_path / "clip.pth")
    loaded = CLIPVisionModel.from_pretrained(convert_clip(tmp_path / "clip.pth", tmp_path / "clip", num_heads=2)).eval()
    config = loaded.config
    assert (config.hidden_act, config.layer_norm_eps, config.image_size) == ("gelu", 1e-5, 42)

    image = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(3)) * 2 - 1
    pixels = clip_pixel_values(image, size=42)
    features = clip_image_features(loaded, pixels)
    assert features.shape == (2, 10, 24)
    torch.testing.assert_close(features, open_clip_features(official, pixels, heads=2), rtol=1e-4, atol=1e-5)


def test_clip_with_a_wrong_head_count_or_fused_qkv_shape_is_refused(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    official = official_clip_state_dict(randomize(CLIPVisionModel(CLIPVisionConfig(**CLIP_TINY)), seed=4))
    torch.save(official, tmp_path / "clip.pth")
    with pytest.raises(Scail2Error, match="not divisible by 5 heads"):
        convert_clip(tmp_path / "clip.pth", tmp_path / "out", num_heads=5)
    official["visual.transformer.1.attn.to_qkv.weight"] = official["visual.transformer.1.attn.to_qkv.weight"][:-3]
    torch.save(official, tmp_path / "clip.pth")
    with pytest.raises(Scail2Error, match=r"3 with the wrong shape: encoder.layers.1.self_attn.k_proj.weight"):
        convert_clip(tmp_path / "clip.pth", tmp_path / "out", num_heads=2)
    assert listing(tmp_path) == ["clip.pth"]


def test_clip_pixel_values_stretch_and_normalise():
    image = torch.full((3, 48, 80), 0.5)
    pixels = clip_pixel_values(image)
    assert pixels.shape == (1, 3, 224, 224)
    expected = [(0.75 - mean) / std for mean, std in zip(CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(pixels[0, :, 100, 7], torch.tensor(expected))
    ramp = torch.linspace(-1, 1, 80).expand(3, 48, 80)
    stretched = F.interpolate(ramp[None], size=(224, 224), mode="bicubic", align_corners=False) * 0.5 + 0.5
    torch.testing.assert_close(clip_pixel_values(ramp)[0, 0], (stretched[0, 0] - CLIP_MEAN[0]) / CLIP_STD[0])


# ---------------------------------------------------------------------------------------------------
# umT5
# ---------------------------------------------------------------------------------------------------

UMT5_TINY = dict(
    vocab_size=70,
    d_model=16,
    d_kv=6,
    d_ff=20,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
)


def official_umt5_state_dict(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    official = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for i in range(UMT5_TINY["num_layers"]):
        ours = f"encoder.block.{i}.layer."
        official[f"blocks.{i}.norm1.weight"] = sd[f"{ours}0.layer_norm.weight"]
        official[f"blocks.{i}.norm2.weight"] = sd[f"{ours}1.layer_norm.weight"]
        bias = sd[f"{ours}0.SelfAttention.relative_attention_bias.weight"]
        official[f"blocks.{i}.pos_embedding.embedding.weight"] = bias
        for p in "qkvo":
            official[f"blocks.{i}.attn.{p}.weight"] = sd[f"{ours}0.SelfAttention.{p}.weight"]
        official[f"blocks.{i}.ffn.gate.0.weight"] = sd[f"{ours}1.DenseReluDense.wi_0.weight"]
        official[f"blocks.{i}.ffn.fc1.weight"] = sd[f"{ours}1.DenseReluDense.wi_1.weight"]
        official[f"blocks.{i}.ffn.fc2.weight"] = sd[f"{ours}1.DenseReluDense.wo.weight"]
    return {key: value.clone() for key, value in official.items()}


def relative_buckets(length: int, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 buckets from the spec: half per sign, exact below half of that, log-spaced above."""
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    log_bucket = exact + (log_ratio * (half - exact)).long()
    return buckets + torch.where(distance < exact, distance, log_bucket.clamp(max=half - 1))


def umt5_reference_forward(official: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official umT5 encoder: RMS norms, unscaled attention + per-layer bias, gated tanh-GELU FFN."""
    w = {key: value.float() for key, value in official.items()}
    rms = lambda x, weight: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight  # noqa: E731
    x = w["token_embedding.weight"][ids]
    heads, length = UMT5_TINY["num_heads"], ids.shape[1]
    key_mask = torch.where(mask[:, None, None, :].bool(), 0.0, float("-inf"))
    for i in range(UMT5_TINY["num_layers"]):
        b = lambda name, i=i: w[f"blocks.{i}.{name}"]  # noqa: E731
        h = rms(x, b("norm1.weight"))
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = (split(h @ b(f"attn.{p}.weight").T) for p in "qkv")
        bias = b("pos_embedding.embedding.weight")[relative_buckets(length)].permute(2, 0, 1)[None]
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias + key_mask, dim=-1) @ v
        x = x + attn.transpose(1, 2).flatten(2) @ b("attn.o.weight").T
        h = rms(x, b("norm2.weight"))
        gated = (h @ b("ffn.fc1.weight").T) * F.gelu(h @ b("ffn.gate.0.weight").T, approximate="tanh")
        x = x + gated @ b("ffn.fc2.weight").T
    return rms(x, w["norm.weight"])


def tiny_tokenizer():
    from transformers import T5Tokenizer

    words = ["a", "cat", "walks", "on", "the", "street", "dancer", "spins", "&", "café", "b", "c"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(f"▁{word}", -1.0) for word in words]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@pytest.fixture(scope="module")
def converted_umt5(tmp_path_factory):
    from transformers import UMT5Config, UMT5EncoderModel

    folder = tmp_path_factory.mktemp("umt5")
    model = randomize(UMT5EncoderModel(UMT5Config(**UMT5_TINY)), seed=5).to(torch.bfloat16)
    official = official_umt5_state_dict(model)
    torch.save(official, folder / "umt5.pth")
    out = convert_umt5(folder / "umt5.pth", folder / "text_encoder")
    tiny_tokenizer().save_pretrained(folder / "umt5-xxl")
    tokenizer_dir = convert_tokenizer(folder / "umt5-xxl", folder / "tokenizer")
    return official, out, tokenizer_dir


def test_umt5_conversion_matches_an_independent_forward(converted_umt5):
    from transformers import UMT5EncoderModel

    official, out, _ = converted_umt5
    assert len(official) == 2 + 10 * UMT5_TINY["num_layers"]  # 242 at 24 layers
    stored = UMT5EncoderModel.from_pretrained(out)
    assert stored.dtype == torch.bfloat16
    assert stored.config.num_heads == 4 and stored.config.d_kv == 6 and stored.config.feed_forward_proj == "gated-gelu"
    assert torch.equal(stored.encoder.embed_tokens.weight, official["token_embedding.weight"])
    model = UMT5EncoderModel.from_pretrained(out, dtype=torch.float32).eval()
    # 23 tokens: distances past 8 exercise the log-spaced buckets; the first prompt is padded after 13.
    ids = torch.randint(3, 70, (2, 23), generator=torch.Generator().manual_seed(6))
    mask = (torch.arange(23) < torch.tensor([[13], [23]])).long()
    ids[0, 13:] = 0
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
    reference = umt5_reference_forward(official, ids, mask)
    torch.testing.assert_close(ours[0, :13], reference[0, :13], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[1], reference[1], rtol=1e-4, atol=1e-5)


def test_prompts_are_cleaned_tokenised_and_trimmed(converted_umt5):
    from transformers import AutoTokenizer, UMT5EncoderModel

    _, out, tokenizer_dir = converted_umt5
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = UMT5EncoderModel.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = tokenize_prompts(tokenizer, ["a  cat\n walks", ""], text_len=9)
    assert ids.shape == (2, 9) and mask.sum(1).tolist() == [4, 1]
    assert ids[1, 0].item() == tokenizer.eos_token_id
    short, empty = encode_prompts(model, tokenizer, ["a  cat\n walks", ""], text_len=9)
    assert short.shape == (4, 16) and empty.shape == (1, 16)
    # Padding is masked out: a longer budget gives the same trimmed embedding.
    torch.testing.assert_close(encode_prompts(model, tokenizer, ["a  cat\n walks"], text_len=20)[0], short)


def test_clean_prompt_fixes_mojibake_html_and_whitespace():
    assert clean_prompt("  the caf\u00c3\u00a9 &amp;amp; the\n\n street\t ") == "the café & the street"


def test_tokenizer_folder_errors(tmp_path):
    with pytest.raises(Scail2Error, match="tokenizer folder not found"):
        convert_tokenizer(tmp_path / "nope", tmp_path / "tokenizer")
