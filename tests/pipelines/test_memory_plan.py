"""The memory plan against measured bytes (within 15% on tiny and mid-size models, on CPU with the live-bytes
tracker), the block table against the real forward, the options it picks for 24, 48 and 80 GiB cards, and its
one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scail2.conditioning import AnimationInputs
from scail2.errors import Scail2Error
from scail2.models.state_dict_io import kept_in_fp32
from scail2.models.transformer_scail2 import SCAIL2_PRESETS, SCAIL2Transformer3DModel
from scail2.pipelines.live_bytes import LiveTensorBytes, peak_tensor_bytes, traced_peak
from scail2.pipelines.memory_activations import (
    BLOCK_MEMORY,
    BLOCK_MEMORY_WHOLE,
    measure_block_memory,
    transformer_forward_bytes,
    transformer_tokens,
    vae_decode_bytes,
    vae_encode_bytes,
)
from scail2.pipelines.memory_inventory import (
    ModelFolder,
    is_block_linear,
    meta_module,
    read_component,
    write_config_folder,
)
from scail2.pipelines.memory_plan import (
    GGUF_BITS,
    GIB,
    JobShape,
    RunOptions,
    check_fits,
    choose_options,
    predict,
    transformer_sizes,
    usable_gpu_bytes,
)
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from tests.pipelines.components import tiny_pipeline

TOLERANCE = 0.15
# A tiny t2v and i2v transformer (the tiny preset) and a mid-size one with 2 layers of the demo model's width.
TINY = dict(model_type="t2v", dim=32, ffn_dim=56, num_heads=2, num_layers=2, freq_dim=18, text_dim=20, text_len=7)
TINY_I2V = {**TINY, "model_type": "i2v", "image_dim": 24}
MID = dict(dim=256, ffn_dim=704, num_heads=4, num_layers=2, freq_dim=64, text_dim=64, text_len=32, image_dim=48)
# VAEs: the tests' tiny one, and the Wan2.1 architecture at a sixth of its width.
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
MID_VAE = dict(base_dim=16, z_dim=16)


def assert_close(predicted: int, measured: int) -> None:
    assert abs(predicted / measured - 1) <= TOLERANCE, f"predicted {predicted:,} B, measured {measured:,} B"


def transformer(config: dict, precision: str) -> SCAIL2Transformer3DModel:
    """Random weights stored as the model declares: `precision`, its fp32 modules kept fp32."""
    torch.manual_seed(0)
    model = SCAIL2Transformer3DModel(**config).eval()
    if precision == "bf16":
        for name, parameter in model.named_parameters():
            if not kept_in_fp32(name, model._keep_in_fp32_modules):
                parameter.data = parameter.data.bfloat16()
    return model


def forward_inputs(model, batch: int, frames: int, height: int, width: int) -> dict:
    cfg, g = model.config, torch.Generator().manual_seed(0)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    inputs = dict(
        hidden_states=torch.randn(batch, 16, t, h, w, generator=g),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g),
        ref_latents=torch.randn(batch, 16, 1, h, w, generator=g),
        ref_masks=torch.rand(batch, 28, 1 + t, h, w, generator=g),
        pose_latents=torch.randn(batch, 16, t, h // 2, w // 2, generator=g),
        driving_masks=torch.rand(batch, 28, t, h // 2, w // 2, generator=g),
    )
    if cfg.model_type == "i2v":
        inputs["image_embeds"] = torch.randn(batch, 257, cfg.image_dim, generator=g)
    return inputs


@pytest.fixture(scope="module")
def folder_14b(tmp_path_factory) -> ModelFolder:
    """The released architecture as a folder of config.json files (no weights), read back."""
    return ModelFolder.read(write_config_folder(tmp_path_factory.mktemp("scail2_14b")))


# ------------------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------------------


def test_the_14b_architecture_has_the_released_sizes(folder_14b):
    sizes = {name: sum(t.numel for t in c.tensors) for name, c in folder_14b.components.items()}
    assert sizes == {
        "text_encoder": 5_680_910_336,  # umT5-XXL encoder: 11.4 GB in bf16
        "image_encoder": 630_766_080,  # CLIP ViT-H/14 visual tower: 2.5 GB in fp32
        "transformer": 16_395_544_384,
        "vae": 126_892_531,
    }
    assert len(folder_14b.transformer.tensors) == 1307
    preset = ModelFolder.from_preset("14b")
    assert {n: c.stored_bytes for n, c in preset.components.items()} == {
        n: c.stored_bytes for n, c in folder_14b.components.items()
    }


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config", [TINY_I2V, MID], ids=["tiny", "mid"])
def test_weights_from_safetensors_headers_or_the_config_are_the_bytes_of_the_loaded_model(config, precision, tmp_path):
    with torch.no_grad(), LiveTensorBytes() as tracker:
        model = transformer(config, precision)
    measured = tracker.live  # the weights as they stay after loading
    model.save_pretrained(tmp_path / "transformer")
    options = RunOptions(dtype=precision)
    from_headers = transformer_sizes(read_component("transformer", tmp_path / "transformer"), options).total
    from_config = transformer_sizes(ModelFolder.read(_folder_of(tmp_path, config)).transformer, options).total
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    assert from_headers == from_config == stored
    assert_close(from_headers, measured)


def _folder_of(tmp_path: Path, config: dict) -> Path:
    """A config-only model folder with this transformer and the tiny VAE."""
    folder = tmp_path / "config_only"
    meta_module("transformer", config).save_config(folder / "transformer")
    meta_module("vae", {"_class_name": "AutoencoderKLWan", **TINY_VAE}).save_config(folder / "vae")
    return folder


def test_fp8_and_gguf_shrink_the_block_linears_only(folder_14b):
    component = folder_14b.transformer
    bf16 = transformer_sizes(component, RunOptions())
    linears = [t for t in component.tensors if is_block_linear(t)]
    assert len(linears) == 40 * 12  # q, k, v, o, cross q, k, v, o, k_img, v_img, ffn.0, ffn.2
    numel = sum(t.numel for t in linears)
    fp8 = transformer_sizes(component, RunOptions(quantize="fp8"))
    assert bf16.total - fp8.total == numel - 4 * sum(t.shape[0] for t in linears)
    q4 = transformer_sizes(component, RunOptions(gguf="Q4_K"))
    assert bf16.total - q4.total == pytest.approx(numel * (2 - GGUF_BITS["Q4_K"] / 8), rel=1e-6)
    assert fp8.largest_block < bf16.largest_block / 1.9 and bf16.largest_linear == 5120 * 13824 * 2


def test_a_gguf_transformer_is_read_from_its_tensor_table(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    model = transformer(MID, "fp32")
    writer = gguf.GGUFWriter(str(tmp_path / "transformer" / "model.gguf"), "scail2")
    (tmp_path / "transformer").mkdir()
    model.save_config(tmp_path / "transformer")
    for name, parameter in model.state_dict().items():
        array = parameter.numpy().astype(np.float32)
        if parameter.ndim == 2 and name.startswith("blocks."):
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    component = read_component("transformer", tmp_path / "transformer")
    assert component.source == "gguf" and component.gguf_type == "Q8_0"
    assert {t.name: t.shape for t in component.tensors} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    linears = [t for t in component.tensors if is_block_linear(t)]
    assert sum(t.stored_bytes for t in linears) == sum(t.numel for t in linears) * GGUF_BITS["Q8_0"] / 8


def test_a_transformer_stored_in_fp8_is_planned_as_fp8(tmp_path):
    from safetensors.torch import save_file

    model = transformer(MID, "bf16")
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.ndim == 2 and name.startswith("blocks."):
            state[name] = tensor.to(torch.float8_e4m3fn)
            state[name.removesuffix(".weight") + ".scale_weight"] = torch.ones(tensor.shape[0])
        else:
            state[name] = tensor
    folder = _folder_of(tmp_path, MID)
    save_file(state, folder / "transformer" / "diffusion_pytorch_model.safetensors")
    plan = predict(folder, JobShape(64, 96, 9), RunOptions())
    assert plan.options.quantize == "fp8"
    fp8 = transformer_sizes(ModelFolder.read(folder).transformer, plan.options)
    assert fp8.total == sum(t.numel() * t.element_size() for t in state.values())


# ------------------------------------------------------------------------------------------------------------
# Transformer activations
# ------------------------------------------------------------------------------------------------------------

FORWARDS = [
    pytest.param(TINY, (17, 128, 192), id="tiny-t2v"),
    pytest.param(TINY_I2V, (17, 128, 192), id="tiny-i2v"),
    pytest.param(MID, (17, 256, 384), id="mid-i2v"),
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config, size", FORWARDS)
def test_one_forward_peaks_where_the_plan_says(config, size, precision, batch):
    model = transformer(config, precision)
    inputs = forward_inputs(model, batch, *size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        model(**inputs)  # builds the RoPE table, which then stays for the whole segment
        measured = peak_tensor_bytes(lambda: model(**inputs))
    measured += sum(table.numel() * table.element_size() for table in model._rope_cache.values())
    tokens = transformer_tokens(dict(model.config), *size)
    assert_close(transformer_forward_bytes(dict(model.config), tokens, batch, precision), measured)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "stage, kwargs, ratios",
    [
        ("attention", {}, (1.0, 0.0)),
        ("ffn", {"ffn_dim": 1024}, (4.0, 0.0)),
        ("cross-attention", {"context": 4096}, (1.0, 2.0)),
    ],
)
@pytest.mark.parametrize("chunked", [True, False])
def test_the_block_table_is_what_the_forward_holds(precision, stage, kwargs, ratios, chunked):
    measured = measure_block_memory(precision, chunked=chunked, **kwargs)
    name = "BLOCK_MEMORY" if chunked else "BLOCK_MEMORY_WHOLE"
    table = (BLOCK_MEMORY if chunked else BLOCK_MEMORY_WHOLE)[precision].units(*ratios)
    assert abs(table / measured - 1) <= TOLERANCE, (
        f"{stage} stage of a {precision} block holds {measured:.2f} units, {name} says {table:.2f}: "
        "update it from measure_block_memory"
    )


def test_the_block_model_holds_for_a_14b_block_at_48832_tokens():
    """One block of the 14B model traced on the meta device at the full token count (fp32: meta tensors have no
    autocast), against the units of the table."""
    config = {**SCAIL2_PRESETS["14b"], "num_layers": 1}
    model = meta_module("transformer", config)
    tokens = transformer_tokens(dict(model.config), 81, 512, 896)
    assert tokens.total == 48_832
    dim, meta = model.config.dim, torch.device("meta")
    x = torch.empty(1, tokens.total, dim, device=meta)
    modulation, context = torch.empty(1, 6, dim, device=meta), torch.empty(1, tokens.context, dim, device=meta)
    rope = torch.empty(tokens.total, dim // model.config.num_heads // 2, 2, device=meta)
    measured = traced_peak(lambda: model.blocks[0](x, modulation, context, rope, 257))
    units = BLOCK_MEMORY["fp32"].units(model.config.ffn_dim / dim, tokens.context / tokens.total)
    assert_close(int(units * tokens.total * dim * 4), measured)


# ------------------------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------------------------


def vae_pair(config: dict, tiles: tuple[int, int, int, int] | None):
    """The same VAE with random weights on CPU and on the meta device, tiled alike."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    real = AutoencoderKLWan(**config).eval()
    meta = meta_module("vae", {"_class_name": "AutoencoderKLWan", **config}).eval()
    if tiles:
        for vae in (real, meta):
            vae.enable_tiling(*tiles)
    return real, meta


VAES = [
    pytest.param(TINY_VAE, None, (6, 8, 12), id="tiny"),
    pytest.param(TINY_VAE, (32, 32, 24, 24), (6, 8, 12), id="tiny-tiled"),
    pytest.param(MID_VAE, None, (6, 8, 12), id="mid"),
]


@pytest.mark.parametrize("config, tiles, latent", VAES)
def test_vae_decode_and_encode_peak_where_the_plan_says(config, tiles, latent):
    real, meta = vae_pair(config, tiles)
    latent_frames, h, w = latent  # 6 latent frames: beyond the traced ones, so the extrapolation is checked
    z = torch.randn(1, 16, latent_frames, h, w)
    measured = peak_tensor_bytes(lambda: real.decode(z).sample.float().clamp(-1, 1))
    assert_close(vae_decode_bytes(meta, latent_frames, h, w, tiles is not None), measured)
    frames = 4 * (latent_frames - 1) + 1
    pixels = torch.rand(1, 3, frames, 8 * h, 8 * w) * 2 - 1
    measured = peak_tensor_bytes(lambda: real.encode(pixels.clone()).latent_dist.mode().float())
    assert_close(vae_encode_bytes(meta, frames, 8 * h, 8 * w, tiles is not None), measured)


# ------------------------------------------------------------------------------------------------------------
# A whole job
# ------------------------------------------------------------------------------------------------------------


def job_inputs(frames: int, height: int, width: int) -> AnimationInputs:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    masks[:, 8:40, 12:60] = torch.tensor((0, 0, 255), dtype=torch.uint8)
    return AnimationInputs(
        reference=torch.rand(3, height, width, generator=g) * 2 - 1,
        reference_mask=torch.where(torch.rand(3, height, width, generator=g) > 0.5, 1.0, -1.0),
        driving=torch.randint(0, 256, (frames, height, width, 3), generator=g, dtype=torch.uint8),
        driving_masks=masks,
        prompt="a robot walks",
        negative_prompt="blurry",
    )


def test_a_whole_guided_job_peaks_where_the_plan_says(tmp_path):
    """Weights made and every phase run on the CPU under one tracker: all of it is 'GPU' memory here."""
    frames, height, width = 9, 64, 96
    tiny_pipeline(seed=0).save_pretrained(tmp_path / "model")
    settings = SamplingSettings(sampler="unipc", steps=2, guidance_scale=2.5, segment_length=frames)
    inputs = job_inputs(frames, height, width)
    with torch.no_grad(), LiveTensorBytes() as tracker:
        pipeline = tiny_pipeline(seed=0)
        pipeline(inputs, settings, progress=False)
    job = JobShape(height, width, frames, segment_length=frames)
    plan = predict(tmp_path / "model", job, RunOptions(dtype="fp32", encoders="gpu"))
    assert [phase.name for phase in plan.phases] == [
        "text encoder",
        "image encoder",
        "vae encode",
        "denoise",
        "vae decode",
    ]
    assert_close(plan.peak, tracker.peak)


# ------------------------------------------------------------------------------------------------------------
# Choosing options for a card
# ------------------------------------------------------------------------------------------------------------

JOB_14B = JobShape(512, 896, 81)  # 48,832 tokens


def test_an_80_gib_card_runs_bf16_with_batched_guidance_under_60_gib(folder_14b):
    plan = choose_options(folder_14b, JOB_14B, usable_gpu_bytes(80))
    assert plan.options == RunOptions() and plan.tokens.total == 48_832
    assert plan.peak <= 60 * GIB and plan.peak_phase.name in ("denoise", "vae decode")


def test_a_48_gib_card_runs_bf16_with_batched_guidance_under_44_gib(folder_14b):
    # the chunked block holds 3.5 units, not 7: both guidance passes fit beside the bf16 weights
    plan = choose_options(folder_14b, JOB_14B, usable_gpu_bytes(48))
    assert plan.options == RunOptions()
    assert plan.peak <= 44 * GIB
    # without guidance there is one pass anyway, so nothing needs changing
    assert (
        choose_options(folder_14b, JobShape(512, 896, 81, guided=False), usable_gpu_bytes(48)).options == RunOptions()
    )


def test_a_24_gib_card_streams_the_blocks_and_with_less_host_ram_runs_fp8_resident(folder_14b):
    plan = choose_options(folder_14b, JOB_14B, usable_gpu_bytes(24))
    assert plan.options == RunOptions(offload="group") and plan.peak <= 22 * GIB
    lean_host = choose_options(folder_14b, JOB_14B, usable_gpu_bytes(24), host_budget=40 * GIB)
    assert lean_host.options == RunOptions(quantize="fp8", cfg_mode="sequential", vae_tiling=True)
    assert lean_host.peak <= 22 * GIB and lean_host.host <= 40 * GIB


def test_fixed_options_are_kept_and_the_rest_chosen(folder_14b):
    plan = choose_options(folder_14b, JOB_14B, usable_gpu_bytes(24), fixed={"quantize": "fp8", "vae_tiling": True})
    assert plan.options == RunOptions(quantize="fp8", cfg_mode="sequential", vae_tiling=True)


# ------------------------------------------------------------------------------------------------------------
# Refusals: one line with the fix
# ------------------------------------------------------------------------------------------------------------


def test_a_job_no_option_fits_is_refused_in_one_line_naming_a_size_that_fits(folder_14b):
    with pytest.raises(Scail2Error) as error:
        choose_options(folder_14b, JOB_14B, usable_gpu_bytes(4))
    message = str(error.value)
    assert "\n" not in message
    assert "81 frames at 512x896 needs" in message and "of GPU memory even with" in message
    assert "it fits at --height 384 --width 672" in message


def test_check_fits_refuses_the_given_options_and_names_the_flags_that_fit(tmp_path):
    folder = write_config_folder(tmp_path / "scail2_14b")
    with pytest.raises(Scail2Error) as error:
        check_fits(folder, 512, 896, 81, RunOptions(), gpu_memory=24)
    message = str(error.value)
    assert "\n" not in message and "with bf16, batched CFG but 21.8 GiB is usable" in message
    assert message.endswith("run it with --offload group (10.7 GiB)")
    plan = check_fits(folder, 512, 896, 81, {"quantize": "fp8"}, gpu_memory=24)
    assert plan.options == RunOptions(quantize="fp8", cfg_mode="sequential", vae_tiling=True) and plan.fits


def test_short_host_ram_is_refused_with_a_smaller_weight_file(folder_14b):
    with pytest.raises(Scail2Error) as error:
        choose_options(folder_14b, JOB_14B, usable_gpu_bytes(24), host_budget=24 * GIB)
    message = str(error.value)
    assert "\n" not in message and "GiB of host RAM even with fp8" in message
    assert "GGUF transformer file" in message


def test_without_a_gpu_check_fits_only_predicts(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = write_config_folder(tmp_path / "scail2_14b")
    plan = check_fits(folder, 512, 896, 81, RunOptions(offload="model"))
    assert plan.gpu_budget is None and plan.options.offload == "model" and plan.fits


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage, kwargs", [("attention", {}), ("ffn", {"ffn_dim": 1024})])
def test_a_block_holds_at_most_four_units_without_autograd(precision, stage, kwargs):
    """dim 256, 2048 tokens: the chunked block holds keys, values, its output and one chunk (was 7 units)."""
    assert measure_block_memory(precision, tokens=2048, **kwargs) <= 4.0
