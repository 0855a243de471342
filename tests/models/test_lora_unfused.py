"""Step-distill LoRAs in the lightx2v / ComfyUI key layout on the tiny SCAIL-2 transformer, fused and unfused
(hot-swap: scale changes, stacking, and a bit-exact model after removal)."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from scail2.errors import Scail2Error
from scail2.models.lora import LoraSpec, apply_lora, apply_loras
from scail2.models.lora_unfused import HOOK, PATCHES, TERMS, LoraHandle, attach_lora
from tests.models.helpers import tiny_inputs, tiny_model

RANK = 3
NORM = ("norm_q", "norm_k", "norm_k_img", "norm3", "img_emb.proj.0", "img_emb.proj.4")


def lightx2v_lora(model: nn.Module, seed: int, alpha: float = 6.0) -> dict[str, torch.Tensor]:
    """A LoRA as the step-distill files lay it out, for every layer those files touch: `lora_down` / `lora_up` /
    `alpha` and a `diff_b` per linear, `diff` (and `diff_b`) per affine norm, `diff_m` per block (the
    modulation), and the patch embedding of vanilla Wan2.1-I2V (36 input channels), all under `diffusion_model.`
    in bf16."""
    generator = torch.Generator().manual_seed(seed)

    def small(*shape: int) -> torch.Tensor:
        return (0.1 * torch.randn(*shape, generator=generator)).to(torch.bfloat16)

    tensors = {}
    for name, module in model.named_modules():
        key = f"diffusion_model.{name}"
        if isinstance(module, nn.Linear):
            tensors[f"{key}.lora_down.weight"] = small(RANK, module.in_features)
            tensors[f"{key}.lora_up.weight"] = small(module.out_features, RANK)
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
            tensors[f"{key}.diff_b"] = small(module.out_features)
        elif name.endswith(NORM) and getattr(module, "weight", None) is not None:
            tensors[f"{key}.diff"] = small(*module.weight.shape)
            if getattr(module, "bias", None) is not None:
                tensors[f"{key}.diff_b"] = small(*module.bias.shape)
    for index, block in enumerate(model.blocks):
        tensors[f"diffusion_model.blocks.{index}.diff_m"] = small(*block.modulation.shape)
    dim = model.config.dim
    tensors["diffusion_model.patch_embedding.lora_down.weight"] = small(RANK, 36, 1, 2, 2)
    tensors["diffusion_model.patch_embedding.lora_up.weight"] = small(dim, RANK, 1, 1, 1)
    tensors["diffusion_model.patch_embedding.diff_b"] = small(dim)
    return tensors


def expected_weights(model: nn.Module, tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The fused result, worked out from the file's keys independently of the loader."""
    new = {name: value.detach().clone() for name, value in model.named_parameters()}
    for key, tensor in tensors.items():
        name = key.removeprefix("diffusion_model.")
        if name.endswith(".lora_up.weight") and not name.startswith("patch_embedding"):
            module = name.removesuffix(".lora_up.weight")
            down = tensors[f"diffusion_model.{module}.lora_down.weight"].float()
            alpha = tensors[f"diffusion_model.{module}.alpha"].item()
            new[f"{module}.weight"] += scale * alpha / RANK * (tensor.float() @ down)
        elif name.endswith(".diff_m"):
            new[name.replace("diff_m", "modulation")] += scale * tensor.float()
        elif name.endswith(".diff"):
            new[name.replace(".diff", ".weight")] += scale * tensor.float()
        elif name.endswith(".diff_b"):
            new[name.replace(".diff_b", ".bias")] += scale * tensor.float()
    return new


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def output(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


@pytest.fixture(scope="module")
def inputs() -> dict:
    return tiny_inputs(tiny_model())


# -- the file layout -------------------------------------------------------------------------------------


def test_lightx2v_layout_fuses_every_key_including_diff_m(tmp_path, caplog):
    model = tiny_model()
    tensors = lightx2v_lora(model, seed=1)
    expected = expected_weights(model, tensors, scale=0.8)
    save_file(tensors, tmp_path / "distill.safetensors")
    with caplog.at_level(logging.WARNING):
        (report,) = apply_loras(model, [LoraSpec(tmp_path / "distill.safetensors", 0.8)])
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert report.low_rank == linears
    assert report.full_rank == len([k for k in tensors if ".diff" in k])  # diff, diff_b, diff_m
    assert report.skipped == ["patch_embedding.weight (32, 36, 1, 2, 2) vs (32, 20, 1, 2, 2)"]
    base = state(tiny_model())
    for name, value in model.named_parameters():
        torch.testing.assert_close(value, expected[name], msg=name)
    changed = {name for name, value in model.named_parameters() if not torch.equal(value, base[name])}
    assert {"blocks.0.modulation", "blocks.1.cross_attn.norm_k_img.weight", "img_emb.proj.0.bias"} <= changed


# -- unfused against fused -------------------------------------------------------------------------------


def test_unfused_equals_fused_and_leaves_the_state_dict_alone(inputs):
    tensors = lightx2v_lora(tiny_model(), seed=1)
    fused = tiny_model()
    report = apply_lora(fused, tensors, 0.8)
    model = tiny_model()
    before = state(model)
    handle = attach_lora(model, tensors, 0.8, source="distill.safetensors")
    assert (handle.low_rank, handle.full_rank, handle.skipped) == (report.low_rank, report.full_rank, report.skipped)
    torch.testing.assert_close(output(model, inputs), output(fused, inputs), rtol=1e-5, atol=1e-5)
    assert state(model).keys() == before.keys()  # the LoRA tensors are non-persistent buffers
    for name, value in state(model).items():  # only the small parameters are rewritten; no linear weight is
        if name.endswith("weight") and isinstance(model.get_submodule(name.rpartition(".")[0]), nn.Linear):
            assert torch.equal(value, before[name]), name


def test_removal_restores_weights_buffers_hooks_and_outputs_bit_exactly(inputs):
    model = tiny_model()
    before, reference = state(model), output(model, inputs)
    buffers = dict(model.named_buffers())
    handle = attach_lora(model, lightx2v_lora(model, seed=1), 1.0)
    assert not torch.equal(output(model, inputs), reference)
    handle.remove()
    handle.remove()  # a second removal does nothing
    after = state(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert dict(model.named_buffers()).keys() == buffers.keys()
    for module in model.modules():
        assert not module._forward_hooks and not any(hasattr(module, a) for a in (TERMS, HOOK, PATCHES))
    assert torch.equal(output(model, inputs), reference)
    with pytest.raises(Scail2Error, match="this LoRA was removed"):
        handle.set_scale(0.5)


def test_scale_changes_take_effect_without_reloading(inputs):
    tensors = lightx2v_lora(tiny_model(), seed=2)
    model = tiny_model()
    handle = attach_lora(model, tensors, 1.0)
    for scale in (0.3, -0.7, 1.5):
        handle.set_scale(scale)
        fused = tiny_model()
        apply_lora(fused, tensors, scale)
        torch.testing.assert_close(output(model, inputs), output(fused, inputs), rtol=1e-5, atol=1e-5)
    handle.set_scale(0.0)
    torch.testing.assert_close(output(model, inputs), output(tiny_model(), inputs), rtol=1e-6, atol=1e-6)
    with pytest.raises(Scail2Error, match="scale nan is not a finite number"):
        handle.set_scale(float("nan"))


def test_two_loras_stack_and_come_off_one_at_a_time(inputs):
    first, second = lightx2v_lora(tiny_model(), seed=3), lightx2v_lora(tiny_model(), seed=4, alpha=1.5)
    both, second_only = tiny_model(), tiny_model()
    apply_lora(both, first, 1.0)
    apply_lora(both, second, 0.5)
    apply_lora(second_only, second, 0.5)
    model = tiny_model()
    before, reference = state(model), output(model, inputs)
    handles = [attach_lora(model, first, 1.0), attach_lora(model, second, 0.5)]
    torch.testing.assert_close(output(model, inputs), output(both, inputs), rtol=1e-5, atol=1e-5)
    handles[0].remove()
    torch.testing.assert_close(output(model, inputs), output(second_only, inputs), rtol=1e-5, atol=1e-5)
    handles[1].remove()
    assert all(torch.equal(value, before[name]) for name, value in state(model).items())
    assert torch.equal(output(model, inputs), reference)


def test_unfused_files_through_apply_loras_and_a_strict_refusal(tmp_path):
    model = tiny_model()
    tensors = lightx2v_lora(model, seed=5)
    save_file(tensors, tmp_path / "distill.safetensors")
    (handle,) = apply_loras(model, [LoraSpec(tmp_path / "distill.safetensors", 0.5)], fuse=False)
    assert isinstance(handle, LoraHandle) and handle.scale == 0.5 and handle.path == tmp_path / "distill.safetensors"
    before = state(model)
    tensors["diffusion_model.blocks.7.ffn.0.diff_b"] = torch.zeros(56)  # no block 7: nothing is attached
    with pytest.raises(Scail2Error, match=r"1 LoRA entries do not fit the transformer \(blocks.7.ffn.0"):
        attach_lora(model, tensors)
    assert all(torch.equal(value, before[name]) for name, value in state(model).items())


def test_a_bf16_model_runs_unfused_loras_in_its_own_dtype(inputs):
    tensors = lightx2v_lora(tiny_model(), seed=6)
    model = tiny_model().to(torch.bfloat16)
    reference = output(model, inputs)
    handle = attach_lora(model, tensors, 1.0)
    q = model.blocks[0].self_attn.q
    assert {b.dtype for name, b in q.named_buffers() if name.startswith("scail2_lora")} == {torch.bfloat16}
    fused = tiny_model().to(torch.bfloat16)
    apply_lora(fused, tensors, 1.0)
    torch.testing.assert_close(output(model, inputs), output(fused, inputs), rtol=0.05, atol=0.05)
    handle.remove()
    assert torch.equal(output(model, inputs), reference)


def test_unfused_loras_on_fp8_linears_leave_the_quantised_weights_alone(inputs):
    quantize = pytest.importorskip("scail2.models.quantize")
    tensors = lightx2v_lora(tiny_model(), seed=7)
    plain, plain_lora = tiny_model(), tiny_model()
    apply_lora(plain_lora, tensors, 1.0)
    model = quantize.quantize_transformer(tiny_model())
    before, reference = state(model), output(model, inputs)
    handle = attach_lora(model, tensors, 1.0)
    lora_error = (output(model, inputs) - output(plain_lora, inputs)).abs().max()
    fp8_error = (reference - output(plain, inputs)).abs().max()
    assert lora_error < 2 * fp8_error + 1e-4  # the LoRA adds no error of its own on top of fp8's
    handle.remove()
    assert all(torch.equal(value, before[name]) for name, value in state(model).items())
    assert torch.equal(output(model, inputs), reference)


def test_a_convolution_with_a_low_rank_pair_and_a_full_rank_delta_takes_both(inputs):
    generator = torch.Generator().manual_seed(8)
    tensors = {
        "patch_embedding_pose.lora_down.weight": 0.1 * torch.randn(RANK, 20, 1, 2, 2, generator=generator),
        "patch_embedding_pose.lora_up.weight": 0.1 * torch.randn(32, RANK, 1, 1, 1, generator=generator),
        "patch_embedding_pose.diff": 0.1 * torch.randn(32, 20, 1, 2, 2, generator=generator),
    }
    fused = tiny_model()
    apply_lora(fused, tensors, 0.7)
    model = tiny_model()
    before = state(model)
    handle = attach_lora(model, tensors, 0.7)
    assert handle.patched == [("patch_embedding_pose", "weight")]
    torch.testing.assert_close(model.patch_embedding_pose.weight, fused.patch_embedding_pose.weight)
    torch.testing.assert_close(output(model, inputs), output(fused, inputs), rtol=1e-5, atol=1e-5)
    handle.remove()
    assert all(torch.equal(value, before[name]) for name, value in state(model).items())
