"""The attention kernel is chosen per model through diffusers' `set_attention_backend`; SDPA is the default."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend

from scail2.models import attention as attention_module
from scail2.models.attention import SCAIL2AttnProcessor, attention
from tests.models.helpers import tiny_inputs, tiny_model

# The diffusers backends that run on CPU in fp32 (the rest need CUDA or an extra package).
CPU_BACKENDS = ["native", "_native_math", "_native_flash", "flex"]


@pytest.fixture(autouse=True)
def quiet_diffusers(caplog):
    """`set_attention_backend` warns on every call that the API is experimental."""
    caplog.set_level(logging.ERROR, logger="diffusers")


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in float64; [B, S, heads, d] in and out."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.double()).to(v.dtype)


def processors(model) -> list[SCAIL2AttnProcessor]:
    return [module.processor for module in model.modules() if isinstance(module, AttentionModuleMixin)]


class PlainAttnProcessor(SCAIL2AttnProcessor):
    def __call__(self, q, k, v):
        return plain_attention(q, k, v)


@pytest.fixture
def kernel_calls(monkeypatch) -> list[str]:
    """The backend of every call that leaves the SDPA default (diffusers' dispatcher), in order."""
    calls: list[str] = []
    dispatch = attention_module.dispatch_attention_fn

    def spy(q, k, v, *, backend):
        calls.append(AttentionBackendName(backend).value)
        return dispatch(q, k, v, backend=backend)

    monkeypatch.setattr(attention_module, "dispatch_attention_fn", spy)
    return calls


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_every_cpu_backend_matches_plain_softmax_attention(backend):
    g = torch.Generator().manual_seed(0)
    # B=2, 7 query and 5 key tokens, 2 heads of 12: unequal, so a swapped axis fails.
    q, k, v = (torch.randn(2, n, 2, 12, generator=g) for n in (7, 5, 5))
    out = attention(q, k, v, backend)
    assert out.shape == (2, 7, 2, 12)
    torch.testing.assert_close(out, plain_attention(q, k, v), rtol=0, atol=1e-5)


def test_model_with_sdpa_equals_model_with_plain_softmax_attention():
    model = tiny_model()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        sdpa = model(**inputs).sample
        for module in model.modules():
            if isinstance(module, AttentionModuleMixin):
                module.set_processor(PlainAttnProcessor())
        plain = model(**inputs).sample
    assert all(isinstance(p, PlainAttnProcessor) for p in processors(model))
    torch.testing.assert_close(sdpa, plain, rtol=0, atol=5e-6)


def test_a_new_model_runs_sdpa_on_every_attention_module(kernel_calls):
    model = tiny_model()
    assert len(processors(model)) == 2 * len(model.blocks)  # self- and cross-attention of every block
    assert all(p._attention_backend is None for p in processors(model))
    with torch.no_grad():
        model(**tiny_inputs(model))
    assert kernel_calls == []


@pytest.mark.parametrize("backend", CPU_BACKENDS[1:])
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_two_models_in_one_process_keep_their_own_backend(backend, kernel_calls):
    default, chosen = tiny_model(), tiny_model()
    for block in chosen.blocks:
        block.chunk_units = 1e9  # the whole sequence as one chunk: one kernel call per attention
    chosen.set_attention_backend(backend)
    inputs = tiny_inputs(default)
    with torch.no_grad():
        out_default = default(**inputs).sample
        assert kernel_calls == []  # diffusers' process-wide backend changed too; our default model ignores it
        out_chosen = chosen(**inputs).sample
    calls_per_forward = 3 * len(chosen.blocks)  # self, text and CLIP-image attention (i2v)
    assert kernel_calls == [backend] * calls_per_forward
    torch.testing.assert_close(out_chosen, out_default, rtol=0, atol=1e-5)


def test_diffusers_attention_backend_context_does_not_reach_a_model_without_a_choice(kernel_calls):
    model = tiny_model()
    with torch.no_grad(), attention_backend("_native_math"):
        model(**tiny_inputs(model))
    assert kernel_calls == []


def test_reset_attention_backend_returns_to_sdpa(kernel_calls):
    model = tiny_model()
    model.set_attention_backend("_native_math")
    model.reset_attention_backend()
    with torch.no_grad():
        model(**tiny_inputs(model))
    assert kernel_calls == []


def test_one_module_can_take_its_own_backend(kernel_calls):
    model = tiny_model()
    model.blocks[0].chunk_units = 1e9  # the whole sequence as one chunk: one kernel call
    model.blocks[0].self_attn.set_attention_backend("_native_math")
    with torch.no_grad():
        model(**tiny_inputs(model))
    assert kernel_calls == ["_native_math"]


def test_an_unknown_backend_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="must be one of"):
        model.set_attention_backend("fastest")
    assert all(p._attention_backend is None for p in processors(model))
