"""Precision of SCAIL2Transformer3DModel: which weights stay fp32, weights used as stored (no per-step casts),
bf16 against fp32, RoPE built on the device, and regional compilation."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scail2.models import transformer_scail2
from scail2.models.transformer_scail2 import (
    RopeAxisTables,
    SCAIL2Transformer3DModel,
    compute_dtype,
    rope_positions_needed,
    scail2_rope_rotations,
    scail2_rope_table,
)
from tests.models.helpers import tiny_inputs, tiny_model

# Written out independently of the declaration (docs/architecture.md, "Precision"): the timestep path, the
# modulation tables, every norm that has weights, and the CLIP projection (whose LayerNorms it holds).
FP32_PARAMETER = re.compile(
    r"^(time_embedding|time_projection|img_emb)\.|(^|\.)modulation$|\.(norm3|norm_q|norm_k|norm_k_img)\.(weight|bias)$"
)

aten = torch.ops.aten
CAST_OPS = {aten._to_copy, aten.to, aten.copy_, aten.clone, aten._autocast_to_reduced_precision}


class WeightCastSpy(TorchDispatchMode):
    """Records every copy or cast op that reads a parameter's storage during the calls made under it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr(): name for name, p in model.named_parameters()}
        self.casts: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in CAST_OPS:
            for arg in args:
                if isinstance(arg, torch.Tensor) and arg.untyped_storage().data_ptr() in self.storages:
                    self.casts.append((str(func), self.storages[arg.untyped_storage().data_ptr()]))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_transformer")
    tiny_model().save_pretrained(folder)
    return folder


def load(folder, dtype: torch.dtype) -> SCAIL2Transformer3DModel:
    return SCAIL2Transformer3DModel.from_pretrained(folder, torch_dtype=dtype).eval()


def forward(model, inputs, autocast: bool = False) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(**inputs).sample


# ---------------------------------------------------------------------------------------------------------
# Declared fp32 modules
# ---------------------------------------------------------------------------------------------------------


def test_fp32_declaration_picks_exactly_the_intended_14b_parameters_by_either_matching_rule():
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_preset("14b")
    names = [name for name, _ in model.named_parameters()]
    declared = model._keep_in_fp32_modules
    intended = {name for name in names if FP32_PARAMETER.search(name)}
    by_part = {name for name in names if any(entry in name.split(".") for entry in declared)}  # loading
    by_substring = {name for name in names if any(entry in name for entry in declared)}  # `dtype`, hooks
    assert by_part == by_substring == intended
    # 40 blocks x (modulation, 2+3 RMSNorms, norm3 weight and bias) + head.modulation + 4 + 2 + 8 outside
    assert len(intended) == 40 * 8 + 1 + 4 + 2 + 8
    assert "blocks.0.self_attn.q.weight" not in intended and "head.head.weight" not in intended


def test_loading_in_bf16_keeps_every_declared_parameter_fp32(tiny_folder):
    model = load(tiny_folder, torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    wrong = {n: d for n, d in dtypes.items() if d != (torch.float32 if FP32_PARAMETER.search(n) else torch.bfloat16)}
    assert not wrong
    assert sum(d == torch.float32 for d in dtypes.values()) == 2 * 8 + 1 + 4 + 2 + 8
    assert dtypes["img_emb.proj.0.weight"] == dtypes["blocks.1.norm3.weight"] == torch.float32
    assert dtypes["blocks.1.cross_attn.norm_k_img.weight"] == torch.float32
    assert model.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------
# Weights are used as stored
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, autocast",
    [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)],
    ids=["fp32", "bf16", "bf16-under-autocast"],
)
def test_one_forward_casts_no_weight(tiny_folder, dtype, autocast):
    model = load(tiny_folder, dtype)
    inputs = tiny_inputs(model, history=True, extra_refs=1)
    spy = WeightCastSpy(model)
    with spy:
        out = forward(model, inputs, autocast)
    assert spy.casts == []
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_the_spy_sees_the_casts_that_autocast_makes_of_fp32_weights(tiny_folder):
    """fp32 weights under bf16 autocast (mixed-precision training) are copied per call: the spy must see it."""
    model = load(tiny_folder, torch.float32)
    spy = WeightCastSpy(model)
    with spy:
        forward(model, tiny_inputs(model), autocast=True)
    cast = {name for _, name in spy.casts}
    assert "blocks.0.self_attn.q.weight" in cast and "patch_embedding.weight" in cast
    # the fp32-kept parts compute in fp32 with their weights as they are
    assert not {name for name in cast if FP32_PARAMETER.search(name)}


def test_bf16_weights_stay_within_bf16_error_of_fp32(tiny_folder):
    """Measured relative error 0.4% on the tiny model; autocast changes nothing once the weights are bf16."""
    inputs = tiny_inputs(tiny_model(), history=True)
    fp32 = forward(load(tiny_folder, torch.float32), inputs)
    bf16_model = load(tiny_folder, torch.bfloat16)
    bf16 = forward(bf16_model, inputs)
    relative = (bf16 - fp32).norm() / fp32.norm()
    assert 0 < relative < 1e-2
    torch.testing.assert_close(forward(bf16_model, inputs, autocast=True), bf16, rtol=0, atol=1e-6)


def test_fp8_storage_with_layerwise_casting_feeds_bf16_activations():
    """diffusers' layerwise casting keeps fp8 weights and upcasts them per layer: activations follow the compute
    dtype, never the fp8 storage dtype."""
    model, reference = tiny_model(), tiny_model()
    inputs = tiny_inputs(model)
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert compute_dtype(model.blocks[0].ffn[0]) == compute_dtype(model.blocks[0].ffn) == torch.bfloat16
    relative = (forward(model, inputs) - forward(reference, inputs)).norm() / forward(reference, inputs).norm()
    assert relative < 0.1  # measured 3.3% (fp8 e4m3 has 3 mantissa bits)


# ---------------------------------------------------------------------------------------------------------
# RoPE on the device
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames, height, width, extra, replace", [(3, 4, 6, 0, False), (2, 8, 4, 2, True)])
def test_device_rope_equals_the_float64_table_rounded_once(frames, height, width, extra, replace):
    model = tiny_model()
    ours = model.rope_table(frames, height, width, extra, replace, torch.device("cpu"))
    cfg = model.config
    exact = scail2_rope_table(
        frames, height, width, extra, replace, cfg.dim // cfg.num_heads, cfg.rope_theta, cfg.rope_offset
    )
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch.view_as_real(exact).float(), rtol=0, atol=1e-7)


def test_rope_trigonometry_runs_once_and_new_shapes_are_gathered_on_the_tables_device(monkeypatch):
    model = tiny_model()
    calls = []
    original = transformer_scail2.axis_rotations
    monkeypatch.setattr(transformer_scail2, "axis_rotations", lambda *a: calls.append(1) or original(*a))
    model.rope_table(3, 4, 6, 0, False, torch.device("cpu"))
    assert len(calls) == 3  # one table per axis
    for shape in [(5, 4, 6), (2, 8, 8), (3, 6, 4), (21, 32, 56)]:
        model.rope_table(*shape, 1, True, torch.device("cpu"))
    assert len(calls) == 3
    # the gather runs wherever the tables live (here the meta device: no data, no CPU work)
    tables = RopeAxisTables.build(16, 10000.0, rope_positions_needed(3, 4, 6, 0, 120), torch.device("meta"))
    table = scail2_rope_rotations(tables, 3, 4, 6, 0, False, 120)
    assert table.device.type == "meta" and table.shape == (4 * 24 + 3 * 6, 8, 2)


def test_rope_cache_keeps_only_the_latest_sequences():
    model = tiny_model()
    for frames in range(1, model.rope_cache_size + 4):
        model.rope_table(frames, 4, 6, 0, False, torch.device("cpu"))
    assert len(model._rope_cache) == model.rope_cache_size


# ---------------------------------------------------------------------------------------------------------
# Regional compilation
# ---------------------------------------------------------------------------------------------------------


def test_blocks_compile_without_graph_breaks_and_give_the_same_output():
    """Dynamo traces each repeated block as one graph (the eager backend skips code generation on CPU)."""
    model, reference = tiny_model(), tiny_model()
    inputs = tiny_inputs(model, history=True, extra_refs=1)
    model.compile_repeated_blocks(backend="eager", fullgraph=True)
    torch.testing.assert_close(forward(model, inputs), forward(reference, inputs), rtol=0, atol=0)
