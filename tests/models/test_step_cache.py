"""Step caching through diffusers' hooks: the block registration, `--cache` parsing, and First Block Cache on the
tiny pipeline (threshold 0 reproduces the uncached video exactly; a large threshold skips blocks, every segment
and every guidance pass starting afresh)."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.hooks._helpers import TransformerBlockRegistry

from scail2.errors import Scail2Error
from scail2.models import step_cache
from scail2.models.transformer_scail2 import SCAIL2TransformerBlock
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from tests.pipelines.components import tiny_pipeline
from tests.pipelines.pinned.regenerate import pinned_inputs

STEPS = 4
UNGUIDED = SamplingSettings(sampler="euler", steps=STEPS, shift=3.0, guidance_scale=1.0, segment_length=9, overlap=5)
GUIDED = SamplingSettings(sampler="unipc", steps=STEPS, shift=5.0, guidance_scale=2.5, segment_length=9, overlap=5)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline(seed=2)


def _run(pipeline, settings, spec: str, frames: int):
    inputs = pinned_inputs(frames, "animate")
    with (
        step_cache.step_cache_enabled(pipeline.transformer, spec),
        step_cache.count_block_evaluations(pipeline.transformer) as counts,
    ):
        video = pipeline(inputs, settings, seed=4, output_type="pt", progress=False).frames
    return video, counts


def test_the_block_is_registered_with_diffusers_by_its_residual_stream():
    metadata = TransformerBlockRegistry.get(SCAIL2TransformerBlock)
    assert metadata.return_hidden_states_index == 0 and metadata.return_encoder_hidden_states_index is None
    assert metadata._get_parameter_from_args_kwargs("hidden_states", ("x", "t", "c", "r", 0)) == "x"


@pytest.mark.parametrize(
    "spec, threshold",
    [
        ("none", None),
        (None, None),
        ("fbc", step_cache.FBC_DEFAULT_THRESHOLD),
        ("fbc:", step_cache.FBC_DEFAULT_THRESHOLD),
        ("fbc:0", 0.0),
        ("fbc:0.25", 0.25),
    ],
)
def test_cache_specs_parse_to_diffusers_configs(spec, threshold):
    config = step_cache.parse_step_cache(spec)
    if threshold is None:
        assert config is None
    else:
        assert isinstance(config, FirstBlockCacheConfig) and config.threshold == threshold


@pytest.mark.parametrize("spec", ["teacache", "fbc:-1", "fbc:nan", "fbc:fast", "mag:0.1"])
def test_bad_cache_specs_are_one_line_errors(spec):
    with pytest.raises(Scail2Error) as error:
        step_cache.parse_step_cache(spec)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--cache {spec!r}") and "fbc" in message


def test_threshold_zero_reproduces_the_uncached_video(pipeline):
    layers = pipeline.transformer.config.num_layers
    for settings in (UNGUIDED, GUIDED):
        uncached, plain = _run(pipeline, settings, "none", frames=13)
        cached, counts = _run(pipeline, settings, "fbc:0", frames=13)
        assert torch.equal(cached, uncached)
        assert counts.skipped == 0 and counts.forwards == plain.forwards == 2 * STEPS  # two segments
        assert counts.evaluated == 2 * STEPS * layers
    assert not pipeline.transformer.is_cache_enabled  # taken off after the run


def test_a_large_threshold_skips_all_but_the_first_block_after_each_segments_first_step(pipeline):
    layers = pipeline.transformer.config.num_layers
    uncached, _ = _run(pipeline, GUIDED, "none", frames=13)
    cached, counts = _run(pipeline, GUIDED, "fbc:1e9", frames=13)
    # each of the two segments: one full forward, then only the first block on the other steps
    assert counts.forwards == 2 * STEPS
    assert counts.evaluated == 2 * (layers + STEPS - 1)
    assert counts.skipped == 2 * (STEPS - 1) * (layers - 1)
    assert torch.isfinite(cached).all() and not torch.equal(cached, uncached)


def test_a_cache_the_caller_enabled_is_left_alone_and_not_doubled(pipeline):
    transformer = pipeline.transformer
    transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    try:
        with step_cache.step_cache_enabled(transformer, "none"):
            assert transformer.is_cache_enabled
        with pytest.raises(Scail2Error, match="already has a step cache"):
            with step_cache.step_cache_enabled(transformer, "fbc"):
                pass
        _, counts = _run(pipeline, UNGUIDED, "none", frames=5)
        assert counts.skipped == (STEPS - 1) * (transformer.config.num_layers - 1)
    finally:
        transformer.disable_cache()
