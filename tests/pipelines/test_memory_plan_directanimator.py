"""The memory plan of a DirectAnimator model: its sequence is [reference | video] (no driving stream), its cue
streams and per-block cue MLPs are counted, its forward peaks where the plan says, and `scail2 plan` says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scail2.cli import main
from scail2.models.state_dict_io import kept_in_fp32
from scail2.models.transformer_directanimator import DirectAnimatorTransformer3DModel
from scail2.models.transformer_scail2 import SCAIL2_PRESETS, SCAIL2Transformer3DModel
from scail2.pipelines.live_bytes import peak_tensor_bytes
from scail2.pipelines.memory import pass_activation_bytes
from scail2.pipelines.memory_activations import transformer_forward_bytes, transformer_tokens
from scail2.pipelines.memory_inventory import ModelFolder, meta_module, write_config_folder
from scail2.pipelines.memory_plan import JobShape, RunOptions, predict

TINY_I2V = dict(
    model_type="i2v", dim=32, ffn_dim=56, num_heads=2, num_layers=2, freq_dim=18, text_dim=20, text_len=7, image_dim=24
)
MID = dict(dim=256, ffn_dim=704, num_heads=4, num_layers=2, freq_dim=64, text_dim=64, text_len=32, image_dim=48)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
CUE_WIDTH = {"cue_modulation_dim": 10}
SIZE = (17, 128, 192)  # frames, height, width


def config_folder(root: Path, model_class, config: dict) -> ModelFolder:
    """A config-only folder (transformer and tiny VAE) read back, as `scail2 plan` reads one."""
    meta_module("transformer", {"_class_name": model_class.__name__, **config}).save_config(root / "transformer")
    meta_module("vae", {"_class_name": "AutoencoderKLWan", **TINY_VAE}).save_config(root / "vae")
    return ModelFolder.read(root)


def test_the_sequence_is_reference_and_video_only_with_two_cue_streams_beside_it():
    scail2 = transformer_tokens(dict(SCAIL2Transformer3DModel(**TINY_I2V).config), *SIZE)
    direct = transformer_tokens(dict(DirectAnimatorTransformer3DModel(**TINY_I2V, **CUE_WIDTH).config), *SIZE)
    # 5 latent frames of a 16 x 24 latent in 2x2 patches: 96 tokens per frame; SCAIL-2's driving stream is at
    # half resolution, 24 per frame, a quarter of the video's 480
    assert (scail2.reference, scail2.video, scail2.driving, scail2.total, scail2.cues) == (96, 480, 120, 696, 0)
    assert (direct.reference, direct.video, direct.driving, direct.total, direct.cues) == (96, 480, 0, 576, 960)
    assert direct.total == scail2.total - scail2.video // 4
    assert direct.describe() == "576 tokens: reference + video, cues added per block, no driving stream"


def test_the_cue_embeddings_and_per_block_cue_mlps_are_in_the_weights(tmp_path):
    scail2 = config_folder(tmp_path / "scail2", SCAIL2Transformer3DModel, TINY_I2V)
    direct = config_folder(tmp_path / "direct", DirectAnimatorTransformer3DModel, {**TINY_I2V, **CUE_WIDTH})
    count = lambda folder: sum(t.numel for t in folder.transformer.tensors)  # noqa: E731
    dim, in_dim, width = 32, 20, 10
    embedding = in_dim * 4 * dim + dim  # a 1x2x2 patch embedding of in_dim channels
    mlp = dim * width + width + width * 6 * dim + 6 * dim  # dim -> width -> (scale, shift, gate) x 2 cues
    # without the driving stream's embedding, with two cue embeddings and one cue MLP per block
    assert count(direct) - count(scail2) == -embedding + 2 * embedding + 2 * mlp == 7476
    live = DirectAnimatorTransformer3DModel(**TINY_I2V, **CUE_WIDTH)
    assert count(direct) == sum(p.numel() for p in live.parameters())
    # the cue MLPs stay fp32 in a bf16 run, like the other modulation weights
    weights = predict(direct, JobShape(128, 192, 17, guided=False)).phases[1].weights
    assert weights == 1028988


def test_the_denoise_phase_and_the_guidance_pass_are_sized_for_the_cues(tmp_path):
    job = JobShape(128, 192, 17, guided=False)
    scail2 = predict(config_folder(tmp_path / "scail2", SCAIL2Transformer3DModel, TINY_I2V), job, RunOptions())
    direct = config_folder(tmp_path / "direct", DirectAnimatorTransformer3DModel, {**TINY_I2V, **CUE_WIDTH})
    plan = predict(direct, job, RunOptions())
    denoise = {p.name: p.activations for p in plan.phases}["denoise"]
    assert plan.tokens.total == 576 and scail2.tokens.total == 696
    # fewer tokens, but the cue streams (held beside the sequence, twice the video tokens) and their
    # full-resolution latents cost more than the driving stream they replace
    assert (denoise, {p.name: p.activations for p in scail2.phases}["denoise"]) == (2124944, 1889936)
    config = dict(DirectAnimatorTransformer3DModel(**TINY_I2V, **CUE_WIDTH).config)
    tokens = transformer_tokens(config, *SIZE)
    assert pass_activation_bytes(config, (5, 16, 24), 0, "bf16") == transformer_forward_bytes(config, tokens, 1, "bf16")
    assert pass_activation_bytes(config, (5, 16, 24), 0, "bf16") == 741888


def forward_inputs(model, frames: int, height: int, width: int) -> dict:
    cfg, g = model.config, torch.Generator().manual_seed(0)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    inputs = dict(
        hidden_states=torch.randn(1, 16, t, h, w, generator=g),
        timestep=torch.full((1,), 500.0),
        encoder_hidden_states=torch.randn(1, cfg.text_len, cfg.text_dim, generator=g),
        ref_latents=torch.randn(1, 16, 1, h, w, generator=g),
        ref_masks=torch.rand(1, 28, 1 + t, h, w, generator=g),
        image_embeds=torch.randn(1, 257, cfg.image_dim, generator=g),
    )
    for cue in ("pose", "face"):
        inputs[f"{cue}_cue_latents"] = torch.randn(1, 16, t, h, w, generator=g)
        inputs[f"{cue}_masks"] = torch.rand(1, 4, t, h, w, generator=g)
    return inputs


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config", [TINY_I2V, MID], ids=["tiny", "mid"])
def test_one_forward_peaks_where_the_plan_says(config, precision):
    torch.manual_seed(0)
    model = DirectAnimatorTransformer3DModel(**config, **CUE_WIDTH).eval()
    for name, parameter in model.named_parameters():
        parameter.data.normal_(0, 0.02)  # the cue modules start at zero; the peak must not depend on it
        if precision == "bf16" and not kept_in_fp32(name, model._keep_in_fp32_modules):
            parameter.data = parameter.data.bfloat16()
    inputs = forward_inputs(model, *SIZE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        model(**inputs)  # builds the RoPE table, which then stays for the whole segment
        measured = peak_tensor_bytes(lambda: model(**inputs))
    measured += sum(table.numel() * table.element_size() for table in model._rope_cache.values())
    predicted = transformer_forward_bytes(
        dict(model.config), transformer_tokens(dict(model.config), *SIZE), 1, precision
    )
    assert abs(predicted / measured - 1) <= 0.15, f"predicted {predicted:,} B, measured {measured:,} B"


def test_plan_cli_says_a_directanimator_folder_has_no_driving_stream(tmp_path, capsys):
    folder = write_config_folder(tmp_path / "directanimator_14b")
    transformer = {"_class_name": "DirectAnimatorTransformer3DModel", **SCAIL2_PRESETS["14b"]}
    (folder / "transformer" / "config.json").write_text(json.dumps(transformer))
    assert main(["plan", "--model", str(folder), "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    # SCAIL-2 at this size: 48,832 tokens (test_plan_cli); the driving stream's 9,408 are gone
    assert (
        "(1 segment(s) of 81 frames, 39,424 tokens: reference + video, cues added per block, no driving stream" in out
    )
