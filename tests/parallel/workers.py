"""What each rank runs in the multi-process tests: the same job in one process and across the ranks, the
differences written by rank 0 to a JSON file for the test to check."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scail2.parallel import ParallelLayout, UlyssesAttention, shard_transformer
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from tests.models.helpers import tiny_model

# ------------------------------------------------------------------------------------------------------------
# The transformer alone
# ------------------------------------------------------------------------------------------------------------


def transformer_inputs(model, frames: int, height: int, width: int, extra_refs=0, history=False, replace=False):
    """Random inputs of batch 2 at a latent size; `replace` may be a per-sample tensor."""
    cfg, c, b = model.config, model.latent_channels, 2
    g = torch.Generator().manual_seed(frames * 100 + height * 10 + width + extra_refs)
    t, h, w, s = frames, height, width, model.driving_scale
    inputs = dict(
        hidden_states=torch.randn(b, c, t, h, w, generator=g),
        timestep=torch.tensor([937.0, 41.5]),
        encoder_hidden_states=torch.randn(b, 5, cfg.text_dim, generator=g),
        ref_latents=torch.randn(b, c, 1, h, w, generator=g),
        ref_masks=torch.rand(b, cfg.mask_dim, 1 + t, h, w, generator=g),
        pose_latents=torch.randn(b, c, t, h // s, w // s, generator=g),
        driving_masks=torch.rand(b, cfg.mask_dim, t, h // s, w // s, generator=g),
        replace=replace,
    )
    if cfg.model_type == "i2v":
        inputs["image_embeds"] = torch.randn(b, 7, cfg.image_dim, generator=g)
    if history:
        mask = torch.zeros(b, 4, t, h, w)
        mask[:, :, :1] = 1
        inputs["history_mask"] = mask
    if extra_refs:
        inputs["extra_ref_latents"] = torch.randn(b, c, extra_refs, h, w, generator=g)
        inputs["extra_ref_masks"] = torch.rand(b, cfg.mask_dim, extra_refs, h, w, generator=g)
    return inputs


# name -> (frames, latent height, latent width, keywords): sequence lengths 114, 138, 57 (odd), ...
TRANSFORMER_CASES = {
    "animation": (3, 8, 12, {}),
    "replacement": (3, 8, 12, {"replace": True}),
    "per_sample_mode": (3, 8, 12, {"replace": torch.tensor([False, True])}),
    "history": (3, 8, 12, {"history": True}),
    "extra_refs": (3, 8, 12, {"extra_refs": 1}),
    "odd_length": (3, 12, 4, {}),
}


def transformer_worker(
    rank: int,
    world: int,
    out: str,
    heads: int,
    shard_weights: bool,
    chunked: bool,
    driving_scale: int = 2,
    driving_injection: str = "append",
) -> None:
    """Every case in one process and over all ranks (sequence parallel, weights sharded when asked)."""
    layout = ParallelLayout.from_environment("cpu")
    model = tiny_model(seed=3, num_heads=heads, driving_scale=driving_scale, driving_injection=driving_injection)
    if chunked:  # every sequence through the chunked block, in several chunks
        for block in model.blocks:
            block.chunk_min_unit_bytes = 0
    cases = {name: transformer_inputs(model, t, h, w, **kw) for name, (t, h, w, kw) in TRANSFORMER_CASES.items()}
    with torch.no_grad():
        # one process's outputs: only rank 0 needs them (the others meanwhile wait in the first collective)
        alone = {name: model(**inputs).sample for name, inputs in cases.items()} if layout.is_main else {}
        layout.make_groups(heads, guided=False)
        model.enable_sequence_parallel(UlyssesAttention(layout.ulysses_group, heads))
        if shard_weights:
            shard_transformer(model)
        together = {name: model(**inputs).sample for name, inputs in cases.items()}
    result = {name: (together[name] - alone[name]).abs().max().item() for name in alone}
    result["_ulysses"] = layout.ulysses
    result["_last_tokens"] = model.sequence_parallel.tokens  # the odd case's, which runs last
    _write(layout, out, result)


def sharded_bf16_worker(rank: int, world: int, out: str) -> None:
    """bf16 weights with their fp32-kept modules (as `--dtype bf16` loads them), sharded: the same forward."""
    from scail2.models.state_dict_io import kept_in_fp32

    layout = ParallelLayout.from_environment("cpu")
    model = tiny_model(seed=3)
    for name, param in model.named_parameters():
        keep = kept_in_fp32(name, model._keep_in_fp32_modules)
        param.data = param.data.float() if keep else param.data.to(torch.bfloat16)
    inputs = transformer_inputs(model, 3, 8, 12, extra_refs=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        alone = model(**inputs).sample
        shard_transformer(model)
        together = model(**inputs).sample
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    _write(layout, out, {"difference": (together - alone).abs().max().item(), "dtypes": dtypes})


# ------------------------------------------------------------------------------------------------------------
# The pipeline: guidance split, history, extra references
# ------------------------------------------------------------------------------------------------------------

GUIDED = SamplingSettings(sampler="unipc", steps=3, shift=5.0, guidance_scale=2.5, segment_length=9, overlap=5)


def pipeline_cases():
    from tests.pipelines.pinned.regenerate import pinned_inputs

    with_extra = pinned_inputs(5, "animate")
    with_extra.extra_references.append((with_extra.reference.flip(-1), with_extra.reference_mask.flip(-1)))
    return {
        "animation_two_segments": pinned_inputs(13, "animate"),  # the second segment has clean history
        "replacement": pinned_inputs(5, "replace"),
        "extra_refs": with_extra,
    }


def pipeline_worker(
    rank: int,
    world: int,
    out: str,
    shard_weights: bool,
    sequential: bool,
    driving_scale: int = 2,
    driving_injection: str = "append",
) -> None:
    """Each case's final latents one process alone (guidance batched and, with `sequential`, one pass after the
    other; computed on rank 0) and across the ranks (guidance split over two rank groups, and with four ranks
    sequence parallel as well)."""
    from scail2.pipelines.memory import MemorySettings
    from tests.pipelines.components import tiny_pipeline

    layout = ParallelLayout.from_environment("cpu")
    pipeline = tiny_pipeline(seed=1, driving_scale=driving_scale, driving_injection=driving_injection)
    cases = pipeline_cases()

    def latents(inputs):
        result = pipeline(inputs, GUIDED, seed=5, progress=False, output_type="latent")
        return torch.cat([latent.flatten() for latent in result.frames])

    alone = {name: latents(inputs) for name, inputs in cases.items()} if layout.is_main else {}
    by_pass = {}
    if sequential and layout.is_main:
        pipeline.enable_memory_settings(MemorySettings(cfg_mode="sequential"), "cpu")
        by_pass = {name: latents(inputs) for name, inputs in cases.items()}
    with layout.failures_shared():
        layout.apply(pipeline, guided=True, shard_weights=shard_weights)
        together = {name: latents(inputs) for name, inputs in cases.items()}
    result = {name: (together[name] - alone[name]).abs().max().item() for name in alone}
    result.update({f"{name}_vs_sequential": (together[name] - by_pass[name]).abs().max().item() for name in by_pass})
    result["_grid"] = [layout.cfg, layout.ulysses]
    _write(layout, out, result)


# ------------------------------------------------------------------------------------------------------------
# A rank that fails
# ------------------------------------------------------------------------------------------------------------


def failing_worker(rank: int, world: int, out: str) -> None:
    """Rank 1 raises in the middle of the denoising loop, while rank 0 waits in a collective for it."""
    from tests.pipelines.components import tiny_pipeline
    from tests.pipelines.pinned.regenerate import pinned_inputs

    layout = ParallelLayout.from_environment("cpu")
    pipeline = tiny_pipeline(seed=1)
    layout.apply(pipeline, guided=True)
    steps = 0

    def fail_on_rank_one(pipe, index, timestep, tensors):
        nonlocal steps
        steps += 1
        if rank == 1 and steps == 2:
            raise ValueError("rank one's velocity is broken")
        return tensors

    with layout.failures_shared():
        pipeline(pinned_inputs(5, "animate"), GUIDED, progress=False, callback_on_step_end=fail_on_rank_one)
    layout.finish()
    Path(out, f"rank{rank}-finished").touch()  # never reached: the test checks that


def _write(layout: ParallelLayout, out: str, result: dict) -> None:
    if layout.is_main:
        Path(out).write_text(json.dumps(result))
    layout.finish()
