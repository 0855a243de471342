"""The quantised files users already have: GGUF (Q8_0 and the K-types) and ComfyUI fp8, written here from a tiny
model, loaded with their weights kept quantised, and compared with the fp32 model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scail2.cli import main
from scail2.errors import Scail2Error
from scail2.models.convert import load_transformer_file
from scail2.models.quantize import FP8Linear, GGUFLinear, QuantizedWeight, is_block_linear
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.optional import MissingDependency
from tests.models.helpers import tiny_inputs, tiny_model
from tests.models.quantized_writers import GGUF_TYPES, gguf_quantize, write_comfy_fp8, write_gguf

gguf = pytest.importorskip("gguf")

# K-types need rows that are multiples of 256: every block linear here takes 256 or 512 inputs.
GGUF_SIZE = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, freq_dim=32)
# Relative L2 error of the forward output against the fp32 model (measured: Q8_0 0.008, Q6_K 0.026,
# Q5_K 0.052, Q4_K 0.10, Q3_K 0.27, Q2_K 0.47 with the min/max encoders of `quantized_writers`).
OUTPUT_ERROR = {"Q8_0": 0.02, "Q6_K": 0.05, "Q5_K": 0.1, "Q4_K": 0.2, "Q3_K": 0.45, "Q2_K": 0.7}
# Relative error of the weights alone (normal weights with one outlier per row block), and the errors found.
WEIGHT_ERROR = {"Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.06, "Q4_K": 0.12, "Q3_K": 0.3, "Q2_K": 0.45}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def forward(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3, **GGUF_SIZE)


@pytest.fixture(scope="module")
def config(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(
        json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if k[0] != "_"})
    )
    return str(path)


@pytest.fixture(scope="module")
def reference(model):
    inputs = tiny_inputs(model)
    return inputs, forward(model, inputs)


# ------------------------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", GGUF_TYPES)
def test_the_encoders_write_blocks_that_gguf_py_and_diffusers_read_alike(type_name):
    weight = np.random.default_rng(0).standard_normal((24, 512)).astype(np.float32) * 0.05
    weight[::5, 7] = 0.6  # outliers
    blocks = gguf_quantize(weight, type_name)
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    assert blocks.shape == (24, 512 // block * type_size) and blocks.dtype == np.uint8
    reference = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[type_name])  # gguf-py's numpy reader
    ours = QuantizedWeight(type_name, torch.from_numpy(blocks)).dequantize().numpy()  # diffusers' torch reader
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-3)
    assert np.linalg.norm(reference - weight) / np.linalg.norm(weight) < WEIGHT_ERROR[type_name]


@pytest.mark.parametrize("type_name", GGUF_TYPES)
def test_a_gguf_file_loads_with_its_linears_quantised(type_name, model, config, reference, tmp_path):
    inputs, expected = reference
    path = write_gguf(tmp_path / f"scail2-{type_name}.gguf", model.state_dict(), type_name)
    loaded = load_transformer_file(path, config, torch_dtype=torch.float32)
    quantized = {name: m for name, m in loaded.named_modules() if isinstance(m, GGUFLinear)}
    assert sorted(quantized) == sorted(name for name, _ in loaded.named_modules() if is_block_linear(name))
    assert {m.weight.quant_type.name for m in quantized.values()} == {type_name}
    assert all(m.weight.dtype == torch.uint8 for m in quantized.values())  # stays quantised in memory
    assert loaded.config.quantization == {"method": "gguf", "weights": dict.fromkeys(quantized, type_name)}
    # 5-D convolution weights come back from `comfy.gguf.orig_shape` (quantised Q8_0 ... Q2_K, dequantised)
    assert loaded.patch_embedding.weight.shape == model.patch_embedding.weight.shape
    error = relative_error(forward(loaded, inputs), expected)
    assert 0 < error < OUTPUT_ERROR[type_name], error


def test_a_converted_gguf_folder_keeps_the_blocks_and_loads_like_the_file(model, config, reference, tmp_path):
    inputs, _ = reference
    path = write_gguf(tmp_path / "scail2-Q4_K.gguf", model.state_dict(), "Q4_K", prefix="model.diffusion_model.")
    out = tmp_path / "transformer"
    assert main(["convert", "transformer", "--input", str(path), "--config", config, "--out", str(out)]) == 0
    entry = json.loads((out / "config.json").read_text())["quantization"]
    assert entry["method"] == "gguf" and set(entry["weights"].values()) == {"Q4_K"}
    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        stored = handle.get_tensor("blocks.0.ffn.2.weight")  # the file's blocks, as bytes
    assert stored.dtype == torch.uint8 and stored.shape == (256, 512 // 256 * 144)
    folder = SCAIL2Transformer3DModel.from_pretrained(out)
    assert isinstance(folder.blocks[1].cross_attn.k_img, GGUFLinear)
    assert folder.text_embedding[0].weight.dtype == torch.bfloat16  # --dtype bf16 for what is not quantised
    direct = load_transformer_file(path, config)  # the same storage, straight from the file
    torch.testing.assert_close(forward(folder, inputs), forward(direct, inputs), rtol=0, atol=0)


def test_unsupported_gguf_types_are_one_line_errors(model, config, tmp_path, capsys):
    path = write_gguf(tmp_path / "ternary.gguf", model.state_dict(), "Q8_0", types={"blocks.0.ffn.0.weight": "TQ2_0"})
    out = tmp_path / "out"
    assert main(["convert", "transformer", "--input", str(path), "--config", config, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensor blocks.0.ffn.0.weight: GGUF type TQ2_0 is not supported; use one of" in err[0]
    assert not out.exists()


def test_without_the_gguf_package_the_error_names_the_extra(model, config, tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "scail2-Q8_0.gguf", model.state_dict(), "Q8_0")
    for name in [key for key in sys.modules if key == "gguf" or key.startswith("gguf.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency) as info:
        load_transformer_file(path, config)
    assert str(info.value) == "scail2 needs gguf (reading GGUF weights): pip install 'scail2[gguf]'"


# ------------------------------------------------------------------------------------------------------------
# ComfyUI fp8
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["scaled_fp8", "metadata", "unscaled"])
def test_comfy_fp8_files_load_with_their_fp8_values_unchanged(layout, model, config, reference, tmp_path):
    inputs, expected = reference
    path = write_comfy_fp8(tmp_path / f"scail2_{layout}.safetensors", model.state_dict(), layout)
    loaded = load_transformer_file(path, config, torch_dtype=torch.float32)
    layers = {name: m for name, m in loaded.named_modules() if isinstance(m, FP8Linear)}
    assert len(layers) == 24 and loaded.config.quantization["method"] == "fp8"
    prefix = "model.diffusion_model." if layout == "scaled_fp8" else ""
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.get_tensor(prefix + "blocks.1.ffn.2.weight")
        scale_key = {"scaled_fp8": "scale_weight", "metadata": "weight_scale"}.get(layout)
        scale = handle.get_tensor(f"{prefix}blocks.1.ffn.2.{scale_key}") if scale_key else torch.tensor(1.0)
    layer = layers["blocks.1.ffn.2"]
    assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8))  # not requantised
    assert torch.equal(layer.weight_scale, scale.expand(256))
    bound = 0.05 if layout == "unscaled" else 0.03  # unscaled: small weights fall into e4m3's subnormals
    assert relative_error(forward(loaded, inputs), expected) < bound


def test_other_comfy_quantisation_formats_are_refused_in_one_line(model, config, tmp_path, capsys):
    path = tmp_path / "int8.safetensors"
    layers = {"blocks.0.ffn.0": {"format": "int8_blockwise", "group_size": 128}}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["blocks.0.ffn.0.weight"] = torch.zeros(512, 256, dtype=torch.int8)
    save_file(state, str(path), metadata={"_quantization_metadata": json.dumps({"layers": layers})})
    with pytest.raises(Scail2Error, match="quantised with int8_blockwise, which scail2 does not read"):
        load_transformer_file(path, config)
