"""The one attention call site of the project's transformers, and the per-module choice of kernel.

`attention(q, k, v, backend)` takes [B, S, heads, head_dim] tensors (the layout the projections produce) and
returns the same layout. Every attention module of a model owns an `SCAIL2AttnProcessor` that holds its
backend, so diffusers' own `model.set_attention_backend(name)` / `model.reset_attention_backend()` choose
the kernel of one model, and two models in one process can use different kernels:

- None (the default) or "native": torch's scaled_dot_product_attention, which picks flash / memory-efficient
  kernels on GPU;
- any other diffusers backend ("_native_math", "flash", "_flash_3", "sage", "xformers", ...), dispatched
  through `diffusers.models.attention_dispatch` when that backend is installed.

A module whose backend was never set runs SDPA, whatever diffusers' process-wide backend is (its
`attention_backend` context or DIFFUSERS_ATTN_BACKEND): nothing outside the model decides its kernel.

`set_attention(model, name, device)` is that choice by name for the command line (`--attention`), checked
against what is installed and the device.

There is never a mask: SCAIL-2 attends to every token, padded text rows included (as upstream).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

from scail2.errors import Scail2Error


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: AttentionBackendName | str | None = None
) -> torch.Tensor:
    """Full bidirectional attention over [B, S, heads, head_dim] tensors with the given kernel."""
    if backend is None or backend == AttentionBackendName.NATIVE:
        # SDPA wants [B, heads, S, d].
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return dispatch_attention_fn(q, k, v, backend=AttentionBackendName(backend))


class SCAIL2AttnProcessor:
    """The kernel choice of one attention module (diffusers' processor protocol).

    `ModelMixin.set_attention_backend` writes `_attention_backend` (an `AttentionBackendName`) on the
    processor of every `AttentionModuleMixin` module; None means SDPA.
    """

    _attention_backend: AttentionBackendName | None = None
    _parallel_config = None  # read by set_attention_backend; SCAIL-2 has no context-parallel plan

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, self._attention_backend)


# The name that selects PyTorch's SDPA (diffusers calls it "native").
SDPA = "sdpa"
# Backends that run on a CPU; every other one needs a GPU (and its package).
CPU_BACKENDS = {SDPA, "native", "_native_math", "_native_flash", "flex"}


def check_attention(name: str | None, device: torch.device) -> None:
    """Raise a one-line Scail2Error, before any weights are loaded, for an unknown kernel name, a GPU-only
    kernel on CPU or a kernel whose package is not installed."""
    known = [backend.value for backend in AttentionBackendName]
    if name is None or name == SDPA:
        return
    if name not in known:
        raise Scail2Error(f"--attention {name!r} is not one of {SDPA}, {', '.join(known)}")
    if device.type == "cpu" and name not in CPU_BACKENDS:
        raise Scail2Error(f"--attention {name} needs a GPU; on cpu use one of {', '.join(sorted(CPU_BACKENDS))}")
    # the check `set_attention_backend` makes, where this diffusers version exposes it
    requirements = getattr(attention_dispatch, "_check_attention_backend_requirements", None)
    if requirements is not None:
        try:
            requirements(AttentionBackendName(name))
        except (RuntimeError, ImportError) as error:
            raise _unusable(name, error) from None


def set_attention(model, name: str | None, device: torch.device) -> None:
    """Give every attention module of `model` the kernel `name` ("sdpa", the default, or any diffusers backend:
    "flash", "_flash_3", "sage", "flex", "xformers", ...), or raise a one-line Scail2Error that says what to
    install or choose instead."""
    check_attention(name, device)
    with _quiet_diffusers_modeling():
        if name is None or name == SDPA:
            model.reset_attention_backend()
            return
        try:
            model.set_attention_backend(name)
        except (RuntimeError, ImportError, OSError, ValueError) as error:  # missing package, kernel download
            raise _unusable(name, error) from None


def _unusable(name: str, error: Exception) -> Scail2Error:
    return Scail2Error(f"--attention {name}: {str(error).splitlines()[0]} (or use --attention {SDPA})")


@contextlib.contextmanager
def _quiet_diffusers_modeling():
    """Without diffusers' "attention backends are an experimental feature" warning on every run."""
    modeling_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = modeling_logger.level
    modeling_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        modeling_logger.setLevel(level)
