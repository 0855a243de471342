"""Count the bytes of live tensors while code runs: the measuring stick of the memory plan.

`LiveTensorBytes` is a `TorchDispatchMode` that sees every tensor an operator returns, counts the bytes of its
storage once (views share their base's storage), and subtracts them once the storage is freed (it holds weak
references to the storages and checks them before every operator). It sees tensors, not allocator blocks: the
scratch memory a kernel uses inside one operator (the column buffer of a CPU convolution, the tiles of a fused
attention kernel) is not counted, which is what a GPU's cuDNN and flash kernels also keep small. Tensors that
existed before the mode started (weights, inputs) are not counted, so `peak` is the growth above them.

On the meta device the same code runs without computing anything, so the activation peak of a full-size
model (the 14B transformer at 48,832 tokens, an 81-frame VAE decode) is traced in seconds on a CPU.
`meta_attention()` stands in for scaled-dot-product attention there: PyTorch has no fused meta kernel and
would trace the S x S matrix of the unfused one, which a GPU never materialises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Live and peak bytes of the storages created under this mode (optionally on one device type only)."""

    def __init__(self, device_type: str | None = None):
        super().__init__()
        self.device_type = device_type
        self.peak = 0
        self._live = 0
        # StorageImpl address -> (weak reference, bytes). A weak reference to the storage itself, not to a tensor
        # object: a storage outlives the tensor an operator returned when a parameter or a view takes it over.
        self._storages: dict[int, tuple[StorageWeakRef, int]] = {}

    @property
    def live(self) -> int:
        self._collect()
        return self._live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._collect()  # what died since the last operator, before this one allocates
        kwargs = kwargs or {}
        # An output on an input's storage (a view, an in-place result) allocates nothing.
        inputs = {value.untyped_storage()._cdata for value in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        for value in _tensors(out):
            storage = value.untyped_storage()
            if storage._cdata not in inputs and self.device_type in (None, value.device.type):
                self._count(storage)
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        known = self._storages.get(key)
        if known is not None and not known[0].expired():
            return  # several outputs on one storage
        self._storages[key] = (StorageWeakRef(storage), storage.nbytes())
        self._live += storage.nbytes() - (known[1] if known else 0)
        self.peak = max(self.peak, self._live)

    def _collect(self) -> None:
        dead = [key for key, (ref, _) in self._storages.items() if ref.expired()]
        for key in dead:
            self._live -= self._storages.pop(key)[1]


def _tensors(tree) -> list[torch.Tensor]:
    return [value for value in tree_leaves(tree) if isinstance(value, torch.Tensor)]


def _attention_output(query, key, value, *args, **kwargs) -> torch.Tensor:
    """What a fused attention kernel allocates: its output, [..., L, E_v] (plus a per-row statistic, ignored)."""
    return query.new_empty(*query.shape[:-1], value.shape[-1])


@contextlib.contextmanager
def meta_attention() -> Iterator[None]:
    """Replace `F.scaled_dot_product_attention` by its output allocation while tracing on the meta device."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _attention_output
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def peak_tensor_bytes(fn: Callable[[], object], device_type: str | None = None) -> int:
    """Peak bytes of the tensors `fn` creates (on `device_type`), under no_grad; the result is dropped first."""
    with torch.no_grad(), LiveTensorBytes(device_type) as tracker:
        fn()
    return tracker.peak


def traced_peak(fn: Callable[[], object]) -> int:
    """`peak_tensor_bytes` of `fn` run on meta tensors, with fused attention standing in for SDPA."""
    with meta_attention():
        return peak_tensor_bytes(fn, device_type="meta")
