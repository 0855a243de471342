"""fp8 transformer weights: `FP8Linear`, in-place quantisation, fp8 folders (save/load, `convert --dtype fp8`,
quantising while loading), LoRA fusion, and a dispatch spy proving that activations never become fp8 outside
the scaled matmul."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from scail2.cli import main
from scail2.errors import Scail2Error
from scail2.models.lora import apply_lora
from scail2.models.quantize import (
    BYTES_PER_WEIGHT,
    FP8Linear,
    dequantize_fp8,
    fp8_matmul,
    is_block_linear,
    load_transformer,
    quantize_fp8,
    quantize_transformer,
    scaled_mm_applies,
)
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from tests.models.helpers import tiny_inputs, tiny_model

FP8_TYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# A tiny model whose linear sizes are multiples of 16, so `_scaled_mm` runs on every block linear.
WIDE = dict(dim=64, ffn_dim=96, num_heads=2, num_layers=2, freq_dim=32, image_dim=32)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def block_linears(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if is_block_linear(name)]


def forward(model, inputs, autocast: bool = False) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(**inputs).sample


def public_config(model) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------------------------------
# The fp8 arithmetic and the layer
# ------------------------------------------------------------------------------------------------------------


def test_fp8_rows_round_trip_within_e4m3_precision():
    weight = torch.randn(48, 80) * torch.logspace(-3, 1, 48)[:, None]  # rows four decades apart
    weight[5] = 0
    stored, scale = quantize_fp8(weight)
    assert stored.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == (48,)
    restored = dequantize_fp8(stored, scale, torch.float32)
    assert torch.equal(restored[5], torch.zeros(80))
    nonzero = weight.abs() > weight.abs().amax(dim=1, keepdim=True) / 64  # e4m3 normals: 3 mantissa bits
    assert ((restored - weight).abs() / weight.abs())[nonzero].max() <= 1 / 16 + 1e-6
    assert (restored.abs().amax(dim=1) - weight.abs().amax(dim=1)).abs().max() < 1e-6  # each row's max is exact


def test_fp8_linear_matches_its_dequantised_weight_in_both_matmul_paths():
    linear = nn.Linear(96, 48)
    layer = FP8Linear.from_linear(linear)
    weight = dequantize_fp8(layer.weight, layer.weight_scale, torch.float32)
    x = torch.randn(2, 7, 96)
    expected = F.linear(x, weight, linear.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # fp32 in: dequantised to fp32
    assert relative_error(layer(x), linear(x)) < 0.04
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dequantized = layer(x)
        with fp8_matmul("scaled_mm"):
            assert scaled_mm_applies(x, layer.weight, torch.bfloat16)
            scaled = layer(x)
    assert dequantized.dtype == scaled.dtype == torch.bfloat16 and scaled.shape == (2, 7, 48)
    assert relative_error(dequantized, expected) < 1e-2
    assert relative_error(scaled, expected) < 0.05  # activations rounded to e4m3 too


def test_scaled_mm_is_chosen_only_where_it_applies():
    weight = torch.zeros(32, 64, dtype=torch.float8_e4m3fn)
    x = torch.zeros(3, 64, dtype=torch.bfloat16)
    assert not scaled_mm_applies(x, weight, torch.bfloat16)  # auto on a CPU: dequantise
    with fp8_matmul("scaled_mm"):
        assert scaled_mm_applies(x, weight, torch.bfloat16)
        assert not scaled_mm_applies(x, weight, torch.float32)  # rowwise scaling gives bf16 results only
        assert not scaled_mm_applies(x, torch.zeros(32, 56, dtype=torch.float8_e4m3fn), torch.bfloat16)
        assert not scaled_mm_applies(x, weight.to(torch.float8_e5m2), torch.bfloat16)
    with pytest.raises(ValueError, match="not one of"):
        with fp8_matmul("fast"):
            pass


def test_model_wide_casts_keep_fp8_storage_and_fp32_scales():
    model = quantize_transformer(tiny_model())
    model.to(torch.bfloat16)
    layer = model.blocks[0].ffn[0]
    assert (layer.weight.dtype, layer.weight_scale.dtype, layer.bias.dtype) == (
        torch.float8_e4m3fn,
        torch.float32,
        torch.bfloat16,
    )
    assert layer.compute_dtype == torch.bfloat16
    model.float()
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.compute_dtype == torch.float32


def test_bytes_per_weight_match_the_gguf_block_sizes():
    gguf = pytest.importorskip("gguf")
    for name, size in BYTES_PER_WEIGHT.items():
        if not name.startswith("float8"):
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
            assert size == type_size / block


# ------------------------------------------------------------------------------------------------------------
# Quantising a model
# ------------------------------------------------------------------------------------------------------------


def test_quantize_transformer_replaces_exactly_the_block_linears():
    model = quantize_transformer(tiny_model())
    replaced = sorted(name for name, module in model.named_modules() if isinstance(module, FP8Linear))
    assert replaced == sorted(block_linears(model)) and len(replaced) == 2 * 12
    for name in ("text_embedding.0", "time_embedding.0", "time_projection.1", "img_emb.proj.1", "head.head"):
        assert type(model.get_submodule(name)) is nn.Linear
    assert model.config.quantization == {"method": "fp8", "weights": dict.fromkeys(replaced, "float8_e4m3fn")}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fp8_model_output_is_close_to_the_fp32_model(autocast):
    model = tiny_model()
    inputs = tiny_inputs(model, history=True)
    reference = forward(model, inputs)
    quantized = forward(quantize_transformer(tiny_model()), inputs, autocast)
    assert quantized.dtype == torch.float32
    assert 0 < relative_error(quantized, reference) < 0.03


def test_fp8_model_with_bf16_weights_runs_without_autocast():
    model = tiny_model()
    inputs = tiny_inputs(model)
    quantized = quantize_transformer(tiny_model()).to(torch.bfloat16)  # fp32-kept modules cast too: a coarse check
    assert relative_error(forward(quantized, inputs), forward(model, inputs)) < 0.05


class Float8Spy(TorchDispatchMode):
    """Records every op that takes or makes a float8 tensor, telling the stored fp8 weights from any other."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.weight_storages = {w.untyped_storage().data_ptr() for w in weights}
        self.calls = []  # (op name, [(kind, storage) of fp8 inputs], [(kind, storage) of fp8 outputs])

    def describe(self, tree) -> list[tuple[str, int]]:
        tensors = [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.dtype in FP8_TYPES]
        storages = [t.untyped_storage().data_ptr() for t in tensors]
        return [("weight" if s in self.weight_storages else "activation", s) for s in storages]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs, outputs = self.describe((args, kwargs)), self.describe(out)
        if inputs or outputs:
            self.calls.append((func.overloadpacket.__name__, inputs, outputs))
        return out


@pytest.mark.parametrize("mode", ["dequantize", "scaled_mm"])
def test_no_float8_activation_reaches_any_op_but_the_scaled_matmul(mode):
    model = quantize_transformer(tiny_model(**WIDE))
    for block in model.blocks:
        block.chunk_units = 1e9  # the whole sequence as one chunk: each linear runs once
    inputs = tiny_inputs(model)
    weights = [m.weight for m in model.modules() if isinstance(m, FP8Linear)]
    spy = Float8Spy(weights)
    with fp8_matmul(mode), spy, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**inputs)
    # The weights: cast to the activation dtype (dequantising), viewed, or multiplied in the scaled matmul.
    assert {name for name, *_ in spy.calls} <= {"_to_copy", "t", "transpose", "view", "_scaled_mm"}
    last_made, scaled = None, 0
    for name, inputs_, outputs in spy.calls:
        activations_in = [s for kind, s in inputs_ if kind == "activation"]
        activations_out = [s for kind, s in outputs if kind == "activation"]
        if activations_out:  # an activation cast to fp8 (nothing fp8 goes in) ...
            assert name == "_to_copy" and not inputs_ and len(activations_out) == 1
            last_made = activations_out[0]
        if activations_in:  # ... is the operand of the very next matmul, and nothing else
            assert name == "_scaled_mm" and activations_in == [last_made]
        scaled += name == "_scaled_mm"
    assert scaled == (0 if mode == "dequantize" else len(weights))  # every block linear once per forward
    if mode == "dequantize":
        assert last_made is None


# ------------------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------------------


def test_save_pretrained_then_from_pretrained_keeps_the_fp8_weights(tmp_path):
    model = quantize_transformer(tiny_model())
    inputs = tiny_inputs(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization"]["method"] == "fp8" and len(config["quantization"]["weights"]) == 24
    with safe_open(str(tmp_path / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("blocks.1.ffn.2.weight").dtype == torch.float8_e4m3fn
        assert handle.get_tensor("blocks.1.ffn.2.weight_scale").shape == (32,)
    loaded = SCAIL2Transformer3DModel.from_pretrained(tmp_path)
    assert isinstance(loaded.blocks[1].ffn[2], FP8Linear) and public_config(loaded) == public_config(model)
    torch.testing.assert_close(forward(loaded, inputs), forward(model, inputs), rtol=0, atol=0)


def test_a_plain_folder_is_quantised_while_it_loads(tmp_path):
    model = tiny_model()
    inputs = tiny_inputs(model)
    model.save_pretrained(tmp_path)
    loaded = load_transformer(tmp_path, torch_dtype=torch.bfloat16, quantize="fp8")
    expected = quantize_transformer(tiny_model())
    assert sorted(loaded.config.quantization["weights"]) == sorted(block_linears(model))
    for name, module in loaded.named_modules():
        if isinstance(module, FP8Linear):
            assert torch.equal(module.weight.view(torch.uint8), expected.get_submodule(name).weight.view(torch.uint8))
    dtypes = {name: p.dtype for name, p in loaded.named_parameters()}
    assert dtypes["text_embedding.0.weight"] == torch.bfloat16 and dtypes["blocks.0.ffn.0.bias"] == torch.bfloat16
    assert dtypes["time_projection.1.weight"] == dtypes["blocks.0.modulation"] == torch.float32
    assert relative_error(forward(loaded, inputs, autocast=True), forward(model, inputs)) < 0.03
    plain = load_transformer(tmp_path)  # no quantisation asked for: diffusers' loader
    assert not any(isinstance(m, FP8Linear) for m in plain.modules())
    with pytest.raises(Scail2Error, match="--quantize 'int4' is not one of fp8"):
        load_transformer(tmp_path, quantize="int4")


def write_wan_checkpoint(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_config(model, path):
    path.write_text(json.dumps(public_config(model)))
    return path


def test_convert_transformer_dtype_fp8_writes_a_folder_that_loads_quantised(tmp_path, capsys):
    model = tiny_model(seed=5, **WIDE)
    inputs = tiny_inputs(model)
    checkpoint = write_wan_checkpoint(model, tmp_path / "scail2.safetensors")
    out = tmp_path / "fp8"
    args = [
        "convert",
        "transformer",
        "--input",
        str(checkpoint),
        "--config",
        str(write_config(model, tmp_path / "c.json")),
    ]
    assert main([*args, "--out", str(out), "--dtype", "fp8"]) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert set(config["quantization"]["weights"]) == set(block_linears(model))
    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        dtypes = {key: handle.get_tensor(key).dtype for key in handle.keys()}
    assert dtypes["blocks.0.self_attn.q.weight"] == torch.float8_e4m3fn
    assert dtypes["blocks.0.self_attn.q.weight_scale"] == dtypes["blocks.0.norm3.weight"] == torch.float32
    assert dtypes["blocks.0.self_attn.q.bias"] == dtypes["text_embedding.0.weight"] == torch.bfloat16
    loaded = SCAIL2Transformer3DModel.from_pretrained(out)
    assert sum(isinstance(m, FP8Linear) for m in loaded.modules()) == 24
    with fp8_matmul("scaled_mm"):
        assert relative_error(forward(loaded, inputs, autocast=True), forward(model, inputs)) < 0.03
    bf16 = tmp_path / "bf16"
    assert main([*args, "--out", str(bf16)]) == 0
    saved = (
        sum(p.stat().st_size for p in bf16.glob("*.safetensors"))
        - (out / "diffusion_pytorch_model.safetensors").stat().st_size
    )
    weights = [model.get_submodule(name).weight for name in block_linears(model)]
    # one byte per block weight instead of two, plus an fp32 scale per row (and a longer header)
    assert 0 < sum(w.numel() - 4 * w.shape[0] for w in weights) - saved < 4096


def test_a_lora_fuses_into_fp8_weights(tmp_path):
    model = tiny_model()
    quantized = quantize_transformer(tiny_model())
    rank, generator = 2, torch.Generator().manual_seed(3)
    lora = {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(rank, 32, generator=generator) * 0.1,
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(32, rank, generator=generator) * 0.1,
    }
    apply_lora(model, lora)
    apply_lora(quantized, lora)
    layer = quantized.blocks[0].self_attn.q
    fused = dequantize_fp8(layer.weight, layer.weight_scale, torch.float32)
    reference = model.blocks[0].self_attn.q.weight
    direct = dequantize_fp8(*quantize_fp8(reference), torch.float32)  # quantising the fused fp32 weight
    assert relative_error(fused, reference) < 1.5 * relative_error(direct, reference)
    assert layer.weight.dtype == torch.float8_e4m3fn
