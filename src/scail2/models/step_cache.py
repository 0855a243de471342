"""Step caching: skip transformer blocks between denoising steps through diffusers' cache hooks (`--cache`).

`fbc[:THRESHOLD]` is diffusers' First Block Cache. Each step runs the first block; when its residual changed by
less than THRESHOLD (mean absolute change over mean absolute residual) since the last full step, the remaining
blocks are skipped and their residual from that step is added instead. THRESHOLD 0 never skips, so the output is
exactly the uncached one; larger values skip more and drift further (benchmarks/bench_cache.py measures both).

`SCAIL2TransformerBlock` is registered with diffusers' block registry in `transformer_scail2`, and the model has
diffusers' `CacheMixin`, so `transformer.enable_cache(FirstBlockCacheConfig(threshold=...))` works as on
diffusers' own models. The cache state belongs to one denoising trajectory: the pipeline runs every transformer
call inside `cache_pass` (diffusers' `cache_context`, one name per guidance pass) and calls `reset_step_cache`
before each segment, so nothing carries over between segments or videos.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from scail2.errors import Scail2Error

# `fbc` without a threshold. On the demo model (benchmarks/bench_cache.py) 0.1 keeps the video within 39-40 dB
# PSNR of the uncached one while skipping 20% of the block evaluations at 10 Euler steps and 55% at 30 (finer
# schedules change less per step); diffusers' default, 0.05, skips nothing at 10 steps.
FBC_DEFAULT_THRESHOLD = 0.1
CACHE_HELP = "none, or fbc[:THRESHOLD] (First Block Cache; THRESHOLD >= 0, default 0.1)"


def parse_step_cache(spec: str | None):
    """`--cache` -> a diffusers cache config (`FirstBlockCacheConfig`), or None for "none"; one-line errors."""
    from diffusers.hooks import FirstBlockCacheConfig

    if spec is None or spec == "none":
        return None
    kind, _, value = spec.partition(":")
    if kind != "fbc":
        raise Scail2Error(f"--cache {spec!r} is not one of: {CACHE_HELP}")
    if not value:
        return FirstBlockCacheConfig(threshold=FBC_DEFAULT_THRESHOLD)
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if not threshold >= 0:  # also refuses nan
        raise Scail2Error(f"--cache {spec!r}: the threshold must be a number >= 0, as in fbc:0.1")
    return FirstBlockCacheConfig(threshold=threshold)


@contextlib.contextmanager
def step_cache_enabled(transformer, spec: str | None) -> Iterator[object]:
    """Enable the cache `spec` names on `transformer` while the context is open, then take it off again; "none"
    leaves the transformer as it is (a cache the caller enabled stays). Yields the config or None."""
    config = parse_step_cache(spec)
    if config is None:
        yield None
        return
    if getattr(transformer, "is_cache_enabled", False):
        raise Scail2Error(f"--cache {spec}: the transformer already has a step cache; disable_cache() it first")
    transformer.enable_cache(config)
    try:
        yield config
    finally:
        transformer.disable_cache()


def cache_pass(transformer, name: str) -> contextlib.AbstractContextManager:
    """The context one transformer call runs in: diffusers' `cache_context(name)` when a cache is enabled (each
    guidance pass keeps its own state under its own name), else nothing."""
    if getattr(transformer, "is_cache_enabled", False):
        return transformer.cache_context(name)
    return contextlib.nullcontext()


def reset_step_cache(transformer) -> None:
    """Forget the cached residuals: a new trajectory (segment) starts."""
    if getattr(transformer, "is_cache_enabled", False):
        transformer._reset_stateful_cache()


@dataclass
class BlockEvaluations:
    """Counts of one run: transformer forwards, and blocks evaluated over all of them."""

    num_layers: int
    forwards: int = 0
    evaluated: int = 0

    @property
    def skipped(self) -> int:
        return self.forwards * self.num_layers - self.evaluated

    @property
    def skipped_fraction(self) -> float:
        total = self.forwards * self.num_layers
        return self.skipped / total if total else 0.0

    def as_dict(self) -> dict[str, int]:
        return {"forwards": self.forwards, "blocks_evaluated": self.evaluated, "blocks_skipped": self.skipped}


@contextlib.contextmanager
def count_block_evaluations(transformer) -> Iterator[BlockEvaluations]:
    """Count transformer forwards and real block evaluations while the context is open.

    A block counts as evaluated when its own forward runs: a cache that skips the block returns before its
    original forward. With autograd the forward calls the self-attention module (hooked here); without it the block
    runs `forward_chunked` (wrapped here for the time of the context).
    """
    counts = BlockEvaluations(num_layers=len(transformer.blocks))

    def forward_done(*_):
        counts.forwards += 1

    def block_done(*_):
        counts.evaluated += 1

    def counted(chunked):
        def run(*args, **kwargs):
            block_done()
            return chunked(*args, **kwargs)

        return run

    handles = [transformer.register_forward_hook(forward_done)]
    handles += [block.self_attn.register_forward_hook(block_done) for block in transformer.blocks]
    for block in transformer.blocks:
        block.forward_chunked = counted(block.forward_chunked)  # an instance attribute over the method
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()
        for block in transformer.blocks:
            del block.forward_chunked
