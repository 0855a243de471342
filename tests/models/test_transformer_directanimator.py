"""DirectAnimatorTransformer3DModel on tiny configs (CPU, fp32): the CF-DiT equations by hand, the zero start,
batch independence, save/load and initialisation from a SCAIL-2 backbone."""

from __future__ import annotations

import pytest
import torch

from scail2.models.transformer_directanimator import (
    UNUSED_SCAIL2_KEYS,
    CueFusionBlock,
    DirectAnimatorTransformer3DModel,
)
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel, scail2_rope_table
from tests.models.helpers import FRAMES, HEIGHT, IMAGE_TOKENS, TEXT_TOKENS, WIDTH, tiny_model

CUE_DIM = 10  # the CF-DiT MLP's hidden width in these tests (unequal to every other size)


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter of `module` random (norm weights around 1), so no path is an identity or zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or name.endswith("proj.0.weight") or name.endswith("proj.4.weight"):
                param.copy_(1 + 0.3 * noise)
            else:
                param.copy_(noise * (0.5 / max(1, param[0].numel()) ** 0.5) if param.ndim > 1 else 0.2 * noise)


def tiny_directanimator(seed: int = 0, randomised: bool = True) -> DirectAnimatorTransformer3DModel:
    torch.manual_seed(seed)
    model = DirectAnimatorTransformer3DModel.from_preset("tiny", cue_modulation_dim=CUE_DIM).eval()
    if randomised:
        randomise(model, seed + 1)
    return model


def cue_inputs(model, seed: int = 0, batch: int = 2, face: bool = True) -> dict:
    cfg, c = model.config, model.latent_channels
    g = torch.Generator().manual_seed(seed)
    b, t, h, w = batch, FRAMES, HEIGHT, WIDTH
    inputs = dict(
        hidden_states=torch.randn(b, c, t, h, w, generator=g),
        timestep=torch.tensor([937.0, 41.5, 500.0][:b]),
        encoder_hidden_states=torch.randn(b, TEXT_TOKENS, cfg.text_dim, generator=g),
        ref_latents=torch.randn(b, c, 1, h, w, generator=g),
        ref_masks=torch.rand(b, cfg.mask_dim, 1 + t, h, w, generator=g),
        pose_cue_latents=torch.randn(b, c, t, h, w, generator=g),
        pose_masks=torch.rand(b, 4, t, h, w, generator=g),
        image_embeds=torch.randn(b, IMAGE_TOKENS, cfg.image_dim, generator=g),
    )
    if face:
        inputs["face_cue_latents"] = torch.randn(b, c, t, h, w, generator=g)
        inputs["face_masks"] = torch.rand(b, 4, t, h, w, generator=g)
    return inputs


def by_hand_layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


# ---------------------------------------------------------------------------------------------------------
# The CF-DiT block
# ---------------------------------------------------------------------------------------------------------


def test_cf_dit_block_equals_its_equations_by_hand():
    model = tiny_directanimator()
    block: CueFusionBlock = model.blocks[1]
    dim, b, n, start, total = model.config.dim, 2, 6, 3, 11
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, total, dim, generator=g)
    e_p, e_f = torch.randn(b, n, dim, generator=g), torch.randn(b, n, dim, generator=g)
    e_t = torch.randn(b, dim, generator=g)
    time_modulation = torch.randn(b, 6, dim, generator=g)
    context = torch.randn(b, 4, dim, generator=g)
    rope = model.rope_table(1, 1, total, 0, False, torch.device("cpu"))[:total]

    # By hand: (scale, shift, gate) x (pose, face) = MLP(SiLU(e_t)), one Linear-SiLU-Linear.
    w1, b1 = block.cue_modulation[0].weight, block.cue_modulation[0].bias
    w2, b2 = block.cue_modulation[2].weight, block.cue_modulation[2].bias
    silu = torch.nn.functional.silu
    params = silu(silu(e_t) @ w1.T + b1) @ w2.T + b2  # [B, 6 * dim]
    scale_p, shift_p, gate_p, scale_f, shift_f, gate_f = [p[:, None] for p in params.split(dim, dim=1)]
    eps = block.cue_norm.eps
    enriched_p = e_p + gate_p * (by_hand_layer_norm(e_p, eps) * (1 + scale_p) + shift_p)
    enriched_f = e_f + gate_f * (by_hand_layer_norm(e_f, eps) * (1 + scale_f) + shift_f)
    x_hand = x.clone()
    x_hand[:, start : start + n] += enriched_p + enriched_f
    with torch.no_grad():
        want = super(CueFusionBlock, block).forward(x_hand, time_modulation, context, rope, 0)
        got = block(x, time_modulation, context, rope, 0, silu(e_t), e_p, e_f, start)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, super(CueFusionBlock, block).forward(x, time_modulation, context, rope, 0))


def test_block_without_cues_is_the_scail2_block():
    model = tiny_directanimator()
    block = model.blocks[0]
    g = torch.Generator().manual_seed(2)
    x, modulation = torch.randn(2, 9, 32, generator=g), torch.randn(2, 6, 32, generator=g)
    context, rope = torch.randn(2, 3, 32, generator=g), model.rope_table(1, 1, 9, 0, False, torch.device("cpu"))[:9]
    with torch.no_grad():
        torch.testing.assert_close(
            block(x, modulation, context, rope, 0),
            super(CueFusionBlock, block).forward(x, modulation, context, rope, 0),
        )


# ---------------------------------------------------------------------------------------------------------
# Zero start and the backbone
# ---------------------------------------------------------------------------------------------------------


def plain_backbone_forward(backbone: SCAIL2Transformer3DModel, inputs: dict) -> torch.Tensor:
    """The SCAIL-2 backbone on [reference | video] alone (no driving stream), from its own modules."""
    x, ref = inputs["hidden_states"], inputs["ref_latents"]
    b, _, t, h, w = x.shape
    video = torch.cat([x, torch.zeros(b, 4, t, h, w)], 1)
    reference = torch.cat([ref, torch.ones(b, 4, 1, h, w)], 1)
    tokens = backbone.patch_embedding(torch.cat([reference, video], 2)) + backbone.patch_embedding_mask(
        inputs["ref_masks"]
    )
    tokens = tokens.flatten(2).transpose(1, 2)  # [B, (1+T) h/2 w/2, dim]
    cfg = backbone.config
    table = scail2_rope_table(t, h // 2, w // 2, 0, False, cfg.dim // cfg.num_heads, cfg.rope_theta, cfg.rope_offset)
    rope = torch.view_as_real(table[: tokens.shape[1]]).float()
    time_embedding, modulation = backbone.embed_time(inputs["timestep"])
    context = backbone.embed_context(inputs["encoder_hidden_states"], inputs["image_embeds"])
    for block in backbone.blocks:
        tokens = block(tokens, modulation, context, rope, inputs["image_embeds"].shape[1])
    video_tokens = tokens[:, (h // 2) * (w // 2) :]
    return backbone.unpatchify(backbone.head(video_tokens, time_embedding), t, h // 2, w // 2)


def test_from_scail2_with_zero_cue_modules_is_the_plain_backbone():
    backbone = tiny_model(seed=3)
    model = DirectAnimatorTransformer3DModel.from_scail2(backbone, cue_modulation_dim=CUE_DIM).eval()
    inputs = cue_inputs(model, seed=4)
    with torch.no_grad():
        got = model(**inputs).sample
        plain = plain_backbone_forward(backbone, inputs)
        cue_names = ("pose_cue_latents", "pose_masks", "face_cue_latents", "face_masks")
        without_cues = model(**{k: v for k, v in inputs.items() if k not in cue_names}).sample
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(without_cues, plain, rtol=1e-5, atol=1e-5)


def test_from_scail2_loads_every_backbone_key_but_the_driving_embedding():
    backbone = tiny_model(seed=1)
    model = DirectAnimatorTransformer3DModel.from_scail2(backbone, cue_modulation_dim=CUE_DIM)
    ours, theirs = model.state_dict(), backbone.state_dict()
    shared = set(theirs) - set(UNUSED_SCAIL2_KEYS)
    assert shared <= set(ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in shared)
    new = sorted(set(ours) - shared)
    assert all(k.startswith("cue_embedding_") or ".cue_modulation." in k for k in new)
    assert len(new) == 4 + 4 * model.config.num_layers


def test_14b_adds_the_documented_cue_parameters():
    with torch.device("meta"):
        model = DirectAnimatorTransformer3DModel.from_preset("14b")
    added = sum(p.numel() for n, p in model.named_parameters() if "cue_" in n)
    per_block = 5120 * 256 + 256 + 256 * 6 * 5120 + 6 * 5120
    assert added == 40 * per_block + 2 * (20 * 4 * 5120 + 5120)
    assert not any("patch_embedding_pose" in n for n, _ in model.named_parameters())


def test_cues_change_the_output_once_the_cue_modules_are_trained():
    model = tiny_directanimator()
    inputs = cue_inputs(model, seed=1)
    with torch.no_grad():
        full = model(**inputs).sample
        no_face = model(**{k: v for k, v in inputs.items() if not k.startswith("face")}).sample
        other_pose = model(**{**inputs, "pose_cue_latents": -inputs["pose_cue_latents"]}).sample
    assert (full - no_face).abs().max() > 1e-3
    assert (full - other_pose).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# Equivalences
# ---------------------------------------------------------------------------------------------------------


def test_batch_of_one_equals_batch_of_two():
    model = tiny_directanimator()
    inputs = cue_inputs(model, seed=7)
    with torch.no_grad():
        both = model(**inputs).sample
        for i in range(2):
            one = model(**{k: v[i : i + 1] for k, v in inputs.items()}).sample
            torch.testing.assert_close(one[0], both[i], rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_directanimator()
    model.save_pretrained(tmp_path)
    loaded = DirectAnimatorTransformer3DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.cue_modulation_dim == CUE_DIM
    inputs = cue_inputs(model, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)


def test_captured_block_states_and_the_teacher_forward_agree():
    model = tiny_directanimator()
    inputs = cue_inputs(model, seed=3)
    with torch.no_grad():
        full = model(**inputs, capture_block=1)
        teacher = model(**inputs, capture_block=1, stop_after_capture=True)
    assert full.block_hidden_states.shape == (2, FRAMES * (HEIGHT // 2) * (WIDTH // 2), model.config.dim)
    assert teacher.sample is None
    torch.testing.assert_close(teacher.block_hidden_states, full.block_hidden_states, rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_directanimator().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**cue_inputs(model, seed=4)).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_zero_started_cue_embeddings_get_gradients_at_the_first_step():
    model = tiny_directanimator(randomised=False).train()
    model.init_weights()
    model.head.head.weight.data.normal_(0, 0.1)  # a trained head, so the loss reaches the blocks
    model(**cue_inputs(model, seed=5)).sample.square().mean().backward()
    assert model.cue_embedding_pose.weight.grad.abs().sum() > 0
    assert model.cue_embedding_face.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name, change",
    [("pose_masks", lambda t: t[:, :2]), ("face_cue_latents", lambda t: t[..., :-2]), ("ref_latents", lambda t: t[:1])],
)
def test_wrong_shapes_are_named(name, change):
    model = tiny_directanimator(randomised=False)
    inputs = cue_inputs(model)
    inputs[name] = change(inputs[name])
    with pytest.raises(ValueError, match=name):
        model(**inputs)


def test_a_cue_without_its_mask_is_an_error():
    model = tiny_directanimator(randomised=False)
    inputs = cue_inputs(model)
    inputs.pop("face_masks")
    with pytest.raises(ValueError, match="face_cue_latents and face_masks"):
        model(**inputs)
