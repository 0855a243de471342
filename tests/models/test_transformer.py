"""Numerical tests of SCAIL2Transformer3DModel on tiny configs (CPU, fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scail2.models.transformer_scail2 import (
    SCAIL2Transformer3DModel,
    driving_rope_rotations,
    grid_positions,
    rope_axis_pairs,
    scail2_rope_shifts,
    scail2_rope_table,
)
from tests.models.helpers import BATCH, FRAMES, HEIGHT, WIDTH, tiny_inputs, tiny_model
from tests.models.reference_scail2 import reference_forward, sequence_rotations

PINNED = Path(__file__).parent / "pinned" / "transformer_tiny.json"


def run_reference(model, inputs, replace):
    """The independent per-sample implementation, on the model's own state dict."""
    lists = {k: list(v) if isinstance(v, torch.Tensor) and k != "timestep" else v for k, v in inputs.items()}
    outs = reference_forward(
        {k: v.float() for k, v in model.state_dict().items()},
        dict(model.config),
        lists["hidden_states"],
        inputs["timestep"],
        lists["encoder_hidden_states"],
        inputs.get("image_embeds"),
        lists["ref_latents"],
        lists["ref_masks"],
        lists["pose_latents"],
        lists["driving_masks"],
        replace,
        history_mask=lists.get("history_mask"),
        extra_ref_latents=lists.get("extra_ref_latents"),
        extra_ref_masks=lists.get("extra_ref_masks"),
    )
    return torch.stack(outs)


# ---------------------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------------------


def test_14b_preset_has_the_official_parameter_count_and_keys():
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_preset("14b")
    assert sum(p.numel() for p in model.parameters()) == 16_395_544_384
    state = model.state_dict()
    assert len(state) == 1307
    assert state["patch_embedding_mask.weight"].shape == (5120, 28, 1, 2, 2)
    assert state["head.head.weight"].shape == (64, 5120)
    assert state["blocks.39.cross_attn.k_img.weight"].shape == (5120, 5120)
    assert state["img_emb.proj.0.weight"].shape == (1280,)


def test_1_3b_preset_builds_on_meta():
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_preset("1.3b")
    assert model.config.dim == 1536 and len(model.blocks) == 30


def test_rope_axis_split_matches_upstream():
    assert rope_axis_pairs(128) == (22, 21, 21)
    assert rope_axis_pairs(16) == (4, 2, 2)


# ---------------------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "replace, extra, expected",
    [
        # docs/architecture.md, "RoPE shifts": (dT, dH, dW) per segment
        (False, 0, {"extra_refs": (0, 0, 0), "reference": (0, 0, 0), "video": (1, 0, 0), "driving": (1, 0, 120)}),
        (True, 0, {"extra_refs": (0, 120, 0), "reference": (0, 120, 0), "video": (0, 0, 0), "driving": (0, 0, 120)}),
        (False, 2, {"extra_refs": (0, 0, 0), "reference": (2, 0, 0), "video": (3, 0, 0), "driving": (3, 0, 120)}),
        (True, 3, {"extra_refs": (0, 120, 0), "reference": (3, 120, 0), "video": (3, 0, 0), "driving": (3, 0, 120)}),
    ],
)
def test_rope_shift_table(replace, extra, expected):
    shifts = scail2_rope_shifts(extra, replace, offset=120)
    assert {k: (s.t, s.h, s.w) for k, s in shifts.items()} == expected


def test_grid_positions_are_row_major_and_shifted():
    shift = scail2_rope_shifts(0, False, 120)["driving"]
    positions = grid_positions(2, 3, 5, shift)
    assert positions.shape == (30, 3)
    assert positions[0].tolist() == [1, 0, 120]
    assert positions[1].tolist() == [1, 0, 121]  # width varies fastest
    assert positions[5].tolist() == [1, 1, 120]
    assert positions[15].tolist() == [2, 0, 120]


def test_driving_rotations_are_2x2_complex_averages_with_magnitude_below_one():
    shift = scail2_rope_shifts(0, True, 120)["driving"]
    pooled = driving_rope_rotations(2, 4, 6, shift, head_dim=16, theta=10000.0).reshape(2, 2, 3, 8)
    from scail2.models.transformer_scail2 import rope_rotations

    full = rope_rotations(grid_positions(2, 4, 6, shift), 16, 10000.0).reshape(2, 4, 6, 8)
    manual = (full[:, 0::2, 0::2] + full[:, 0::2, 1::2] + full[:, 1::2, 0::2] + full[:, 1::2, 1::2]) / 4
    torch.testing.assert_close(pooled, manual, rtol=0, atol=1e-15)
    magnitude = pooled.abs()
    assert (magnitude <= 1 + 1e-12).all() and (magnitude < 0.999).any()
    # the time pairs are constant inside a 2x2 window, so they stay unit rotations
    torch.testing.assert_close(magnitude[..., :4], torch.ones_like(magnitude[..., :4]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("replace, extra", [(False, 0), (True, 0), (False, 2), (True, 1)])
def test_rope_table_matches_upstream_style_lookup(replace, extra):
    ours = scail2_rope_table(3, 4, 6, extra, replace, head_dim=16, theta=10000.0, offset=120)
    theirs = sequence_rotations(16, 3, 4, 6, extra, replace)
    assert ours.shape == theirs.shape == ((extra + 1 + 3) * 24 + 3 * 6, 8)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Forward equivalences
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "replace, history, extra",
    [(False, False, 0), (True, False, 0), (False, True, 0), (True, True, 0), (False, False, 2), (True, True, 1)],
    ids=["animate", "replace", "animate-history", "replace-history", "animate-extra-refs", "replace-all"],
)
def test_forward_matches_independent_reference(replace, history, extra):
    model = tiny_model()
    inputs = tiny_inputs(model, history=history, extra_refs=extra)
    with torch.no_grad():
        ours = model(**inputs, replace=replace).sample
        theirs = run_reference(model, inputs, replace)
    assert ours.shape == (BATCH, 16, FRAMES, HEIGHT, WIDTH)
    assert (ours - theirs).abs().max() < 5e-5


def test_modes_and_conditions_change_the_output():
    """Guards the equivalence test against being vacuous: every condition matters."""
    model = tiny_model()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        base = model(**inputs).sample
        changed = {
            "replace": model(**inputs, replace=True).sample,
            "history": model(**tiny_inputs(model, history=True)).sample,
            "pose": model(**{**inputs, "pose_latents": inputs["pose_latents"].flip(-1)}).sample,
            "driving_masks": model(**{**inputs, "driving_masks": inputs["driving_masks"] * 0}).sample,
            "image": model(**{**inputs, "image_embeds": inputs["image_embeds"] * 0}).sample,
        }
    for name, out in changed.items():
        assert (out - base).abs().max() > 1e-3, name


def test_text_is_zero_padded_to_text_len():
    model = tiny_model()
    inputs = tiny_inputs(model)
    padded = torch.nn.functional.pad(inputs["encoder_hidden_states"], (0, 0, 0, model.config.text_len - 5))
    with torch.no_grad():
        a = model(**inputs).sample
        b = model(**{**inputs, "encoder_hidden_states": padded}).sample
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("driving_scale", [2, 1])
def test_batch_of_one_equals_batch_of_two(driving_scale):
    model = tiny_model(driving_scale=driving_scale)
    inputs = tiny_inputs(model, history=True, extra_refs=1)
    with torch.no_grad():
        both = model(**inputs, replace=True).sample
        for i in range(BATCH):
            single = {k: v[i : i + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            torch.testing.assert_close(model(**single, replace=True).sample, both[i : i + 1], rtol=0, atol=2e-6)


def test_per_sample_mode_equals_one_mode_per_call():
    model = tiny_model()
    inputs = tiny_inputs(model, history=True)
    with torch.no_grad():
        mixed = model(**inputs, replace=torch.tensor([True, False])).sample
        replace = model(**inputs, replace=True).sample
        animate = model(**inputs, replace=False).sample
    torch.testing.assert_close(mixed[0], replace[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(mixed[1], animate[1], rtol=0, atol=2e-6)


def test_bf16_autocast_is_within_bf16_tolerance_and_keeps_fp32_output():
    model = tiny_model()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        fp32 = model(**inputs).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(**inputs).sample
    assert bf16.dtype == torch.float32
    relative = (bf16 - fp32).norm() / fp32.norm()
    assert 0 < relative < 2e-2


def test_save_pretrained_then_from_pretrained_is_identical(tmp_path):
    model = tiny_model()
    inputs = tiny_inputs(model, history=True)
    model.save_pretrained(tmp_path)
    loaded = SCAIL2Transformer3DModel.from_pretrained(tmp_path).eval()

    def public(cfg):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if not k.startswith("_")}

    assert public(loaded.config) == public(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        inputs = tiny_inputs(model)
        model(**inputs).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_t2v_model_has_no_image_branch():
    model = tiny_model(model_type="t2v")
    assert not hasattr(model, "img_emb") and not hasattr(model.blocks[0].cross_attn, "k_img")
    inputs = tiny_inputs(model)
    assert "image_embeds" not in inputs
    with torch.no_grad():
        ours = model(**inputs).sample
        theirs = run_reference(model, {**inputs, "image_embeds": None}, False)
    assert (ours - theirs).abs().max() < 5e-5


def test_pinned_output_slice():
    """Regenerate with `python tests/models/pinned/regenerate.py` after an intentional numerical change."""
    pinned = json.loads(PINNED.read_text())
    model = tiny_model(seed=pinned["seed"])
    inputs = tiny_inputs(model, seed=pinned["seed"], history=True, extra_refs=1)
    with torch.no_grad():
        out = model(**inputs, replace=pinned["replace"]).sample
    got = out[1, 3:6, 2, 5, 4:8].flatten()
    torch.testing.assert_close(got, torch.tensor(pinned["slice"]), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: {**x, "hidden_states": x["hidden_states"][..., :-1]}, "multiples of"),
        (lambda x: {**x, "hidden_states": x["hidden_states"][..., :-2]}, "multiples of"),
        (
            lambda x: {**x, "pose_latents": x["pose_latents"][..., :-1]},
            "pose_latents has shape (2, 16, 3, 4, 5) but needs (2, 16, 3, 4, 6)",
        ),
        (
            lambda x: {**x, "driving_masks": x["driving_masks"][:, :27]},
            "driving_masks has shape (2, 27, 3, 4, 6) but needs (2, 28, 3, 4, 6)",
        ),
        (
            lambda x: {**x, "ref_masks": x["ref_masks"][:, :, :3]},
            "ref_masks has shape (2, 28, 3, 8, 12) but needs (2, 28, 4, 8, 12)",
        ),
        (lambda x: {**x, "pose_latents": x["pose_latents"][:, :, :2]}, "pose_latents has shape (2, 16, 2, 4, 6)"),
        (lambda x: {**x, "encoder_hidden_states": torch.zeros(2, 8, 20)}, "L <= 7"),
        (lambda x: {k: v for k, v in x.items() if k != "image_embeds"}, "image_embeds is required"),
        (lambda x: {**x, "timestep": torch.zeros(3)}, "timestep has shape (3,) but needs (2,)"),
    ],
)
def test_inconsistent_inputs_name_the_tensor_and_shapes(change, message):
    model = tiny_model()
    with pytest.raises(ValueError) as info:
        model(**change(tiny_inputs(model)))
    assert message in str(info.value)
