"""LoRA fusion on a tiny module tree with Wan parameter names: SAT, Wan/ComfyUI, peft and diffusers layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from scail2.errors import Scail2Error
from scail2.models.lora import LoraSpec, apply_lora, apply_loras, load_lora_file, parse_lora_arg

DIM, FFN, RANK = 12, 20, 3


class Attention(nn.Module):
    def __init__(self, image: bool):
        super().__init__()
        names = ["q", "k", "v", "o"] + (["k_img", "v_img"] if image else [])
        for name in names:
            setattr(self, name, nn.Linear(DIM, DIM))
        self.norm_q = nn.RMSNorm(DIM)
        self.norm_k = nn.RMSNorm(DIM)
        if image:
            self.norm_k_img = nn.RMSNorm(DIM)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.modulation = nn.Parameter(torch.zeros(1, 6, DIM))
        self.self_attn = Attention(image=False)
        self.cross_attn = Attention(image=True)
        self.norm3 = nn.LayerNorm(DIM)
        self.ffn = nn.Sequential(nn.Linear(DIM, FFN), nn.GELU(approximate="tanh"), nn.Linear(FFN, DIM))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.modulation = nn.Parameter(torch.zeros(1, 2, DIM))
        self.head = nn.Linear(DIM, 16)


class TinyWan(nn.Module):
    """The parameter names (and relative shapes) of SCAIL-2's transformer, nothing else."""

    def __init__(self):
        super().__init__()
        self.patch_embedding = nn.Conv3d(20, DIM, (1, 2, 2), stride=(1, 2, 2))
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block.ffn(block.self_attn.q(x))
        return x


def tiny_model(dtype: torch.dtype = torch.float32) -> TinyWan:
    torch.manual_seed(0)
    model = TinyWan()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model.to(dtype)


def pair(out_features: int, in_features: int, seed: int, rank: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rank, in_features, generator=generator), torch.randn(out_features, rank, generator=generator)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def assert_only_changed(before, after, expected_new: dict[str, torch.Tensor]):
    for name, value in after.items():
        if name in expected_new:
            torch.testing.assert_close(value, expected_new[name], msg=name)
        else:
            assert torch.equal(value, before[name]), f"{name} changed"


# -- the official SAT layout ---------------------------------------------------------------------------

# SAT module (with lora_layer index) -> Wan parameter, as in the release's LoRA files (docs/architecture.md,
# "LoRA formats")
SAT_MODULES = {
    "attention.query_key_value.lora_layer.0": "self_attn.q",
    "attention.query_key_value.lora_layer.1": "self_attn.k",
    "attention.query_key_value.lora_layer.2": "self_attn.v",
    "attention.dense.lora_layer": "self_attn.o",
    "cross_attention.query.lora_layer": "cross_attn.q",
    "cross_attention.key_value.lora_layer.0": "cross_attn.k",
    "cross_attention.key_value.lora_layer.1": "cross_attn.v",
    "cross_attention.dense.lora_layer": "cross_attn.o",
    "mlp.dense_h_to_4h.lora_layer": "ffn.0",
    "mlp.dense_4h_to_h.lora_layer": "ffn.2",
}


def test_official_sat_lora_maps_fused_indices_and_fuses_in_float32(tmp_path):
    model = tiny_model()
    before = weights(model)
    module, expected = {}, {}
    for layer in range(2):
        for seed, (sat, wan) in enumerate(SAT_MODULES.items()):
            out_features, in_features = before[f"blocks.{layer}.{wan}.weight"].shape
            down, up = pair(out_features, in_features, seed=100 * layer + seed)
            prefix = f"model.diffusion_model.transformer.layers.{layer}.{sat}"
            module[f"{prefix}.down.weight"], module[f"{prefix}.up.weight"] = down, up
            expected[f"blocks.{layer}.{wan}.weight"] = before[f"blocks.{layer}.{wan}.weight"] + 0.7 * (up @ down)
    module["model.diffusion_model.transformer.layers.1.mlp.dense_4h_to_h.lora_layer.diff_b"] = torch.full((DIM,), 2.0)
    expected["blocks.1.ffn.2.bias"] = before["blocks.1.ffn.2.bias"] + 0.7 * 2.0
    # A DeepSpeed checkpoint: tensors under "module", beside a NumPy RNG state (needs the safe allow-list).
    torch.save({"module": module, "iteration": 3, "rng": np.random.default_rng(0).random(4)}, tmp_path / "dpo.pt")

    (report,) = apply_loras(model, [parse_lora_arg(f"{tmp_path / 'dpo.pt'}:0.7")])
    assert (report.low_rank, report.full_rank, report.skipped) == (20, 1, [])
    assert_only_changed(before, weights(model), expected)


# -- Wan / ComfyUI layout --------------------------------------------------------------------------------


def test_comfy_lora_with_alpha_diffs_and_a_skipped_patch_embedding(tmp_path, caplog):
    model = tiny_model()
    before = weights(model)
    down, up = pair(FFN, DIM, seed=1)
    conv_down = torch.randn(RANK, 20, 1, 2, 2)
    conv_up = torch.randn(DIM, RANK, 1, 1, 1)
    tensors = {
        "diffusion_model.blocks.0.ffn.0.lora_down.weight": down,
        "diffusion_model.blocks.0.ffn.0.lora_up.weight": up,
        "diffusion_model.blocks.0.ffn.0.alpha": torch.tensor(6.0),  # alpha / rank = 2
        "diffusion_model.blocks.1.norm3.diff": torch.full((DIM,), 0.5),
        "diffusion_model.blocks.1.norm3.diff_b": torch.full((DIM,), -1.0),
        "diffusion_model.blocks.0.modulation.diff": torch.ones(1, 6, DIM),
        "diffusion_model.head.head.diff_b": torch.ones(16),
        "diffusion_model.patch_embedding.lora_down.weight": conv_down,
        "diffusion_model.patch_embedding.lora_up.weight": conv_up,
        "diffusion_model.patch_embedding.diff": torch.ones(DIM, 36, 1, 2, 2),  # vanilla Wan I2V width: skipped
        "diffusion_model.patch_embedding.diff_b": torch.ones(DIM),
    }
    save_file(tensors, tmp_path / "lightning.safetensors")
    with caplog.at_level(logging.WARNING):
        (report,) = apply_loras(model, [LoraSpec(tmp_path / "lightning.safetensors", 0.5)])
    conv_delta = (conv_up.flatten(1) @ conv_down.flatten(1)).reshape(DIM, 20, 1, 2, 2)
    expected = {
        "blocks.0.ffn.0.weight": before["blocks.0.ffn.0.weight"] + 0.5 * 2.0 * (up @ down),
        "blocks.1.norm3.weight": before["blocks.1.norm3.weight"] + 0.25,
        "blocks.1.norm3.bias": before["blocks.1.norm3.bias"] - 0.5,
        "blocks.0.modulation": before["blocks.0.modulation"] + 0.5,
        "head.head.bias": before["head.head.bias"] + 0.5,
        "patch_embedding.weight": before["patch_embedding.weight"] + 0.5 * conv_delta,
        "patch_embedding.bias": before["patch_embedding.bias"] + 0.5,
    }
    assert_only_changed(before, weights(model), expected)
    assert report.skipped == ["patch_embedding.weight (12, 36, 1, 2, 2) vs (12, 20, 1, 2, 2)"]
    assert "skipped patch_embedding.weight" in caplog.text


def test_bfloat16_weights_are_fused_in_float32_then_cast():
    model = tiny_model(torch.bfloat16)
    before = weights(model)
    down, up = pair(DIM, FFN, seed=2)
    apply_lora(model, {"blocks.1.ffn.2.lora_down.weight": down, "blocks.1.ffn.2.lora_up.weight": up}, 0.3)
    expected = (before["blocks.1.ffn.2.weight"].float() + 0.3 * (up @ down)).to(torch.bfloat16)
    assert torch.equal(model.blocks[1].ffn[2].weight, expected)


# -- peft / diffusers layout -----------------------------------------------------------------------------


def test_peft_adapter_matches_peft_merge_and_unload(tmp_path):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=2, lora_alpha=6, target_modules=["q", "ffn.0"], alpha_pattern={"ffn.0": 2})
    peft_model = get_peft_model(tiny_model(), config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = weights(peft_model.merge_and_unload())

    model = tiny_model()
    (report,) = apply_loras(model, [LoraSpec(tmp_path / "adapter")])
    assert report.low_rank == 6  # q of self_attn and cross_attn in 2 blocks, plus ffn.0 in 2 blocks
    for name, value in weights(model).items():
        torch.testing.assert_close(value, merged[name], msg=name)
    state_dict, adapter_config = load_lora_file(tmp_path / "adapter")
    assert next(iter(state_dict)).startswith("base_model.model.blocks.")
    assert adapter_config["lora_alpha"] == 6


def test_diffusers_wan_names_are_translated():
    model = tiny_model()
    before = weights(model)
    down, up = pair(DIM, DIM, seed=3)
    apply_lora(
        model,
        {
            "transformer.blocks.1.attn2.add_k_proj.lora_A.weight": down,
            "transformer.blocks.1.attn2.add_k_proj.lora_B.weight": up,
        },
    )
    expected = {"blocks.1.cross_attn.k_img.weight": before["blocks.1.cross_attn.k_img.weight"] + up @ down}
    assert_only_changed(before, weights(model), expected)


# -- strictness ------------------------------------------------------------------------------------------


def test_keys_that_match_no_parameter_are_one_error_and_change_nothing():
    model = tiny_model()
    before = weights(model)
    down, up = pair(DIM, DIM, seed=4)
    tensors = {"blocks.0.self_attn.q.lora_down.weight": down, "blocks.0.self_attn.q.lora_up.weight": up}
    for layer in range(5, 17):
        tensors[f"blocks.{layer}.self_attn.q.lora_down.weight"] = down
        tensors[f"blocks.{layer}.self_attn.q.lora_up.weight"] = up
    with pytest.raises(Scail2Error, match=r"my.safetensors: 12 LoRA entries do not fit .*\(and 2 more\)") as error:
        apply_lora(model, tensors, source=Path("my.safetensors"))
    assert "\n" not in str(error.value)
    assert_only_changed(before, weights(model), {})


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"blocks.0.self_attn.q.lora_up.weight": torch.ones(DIM, RANK)}, "has only lora_up"),
        ({"lora_unet_blocks_0_q.weight": torch.ones(2)}, "not in a known LoRA layout"),
        (
            {
                "blocks.0.ffn.0.lora_down.weight": torch.ones(RANK, FFN),
                "blocks.0.ffn.0.lora_up.weight": torch.ones(FFN, RANK),
            },
            r"blocks.0.ffn.0.weight delta \(20, 20\) vs \(20, 12\)",
        ),
        (
            {
                "model.diffusion_model.transformer.layers.0.attention.query_key_value.lora_layer.3.down.weight": (
                    torch.ones(1)
                )
            },
            "not in a known LoRA layout",
        ),
    ],
)
def test_malformed_loras_are_refused(tensors, message):
    with pytest.raises(Scail2Error, match=message):
        apply_lora(tiny_model(), tensors)


def test_lora_argument_parsing():
    assert parse_lora_arg("dpo.pt") == LoraSpec(Path("dpo.pt"), 1.0)
    assert parse_lora_arg("loras/relight.pt:0.8") == LoraSpec(Path("loras/relight.pt"), 0.8)
    assert parse_lora_arg("C:\\loras\\a.safetensors") == LoraSpec(Path("C:\\loras\\a.safetensors"), 1.0)
    assert parse_lora_arg("odd:name.pt:-0.5") == LoraSpec(Path("odd:name.pt"), -0.5)
    with pytest.raises(Scail2Error, match="not a finite number"):
        parse_lora_arg("a.pt:inf")


def test_missing_lora_file_is_a_clear_error(tmp_path):
    with pytest.raises(Scail2Error, match="none.safetensors: LoRA file not found"):
        apply_loras(tiny_model(), [LoraSpec(tmp_path / "none.safetensors")])
