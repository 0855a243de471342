"""Several processes for one video (torchrun): guidance split across ranks, Ulysses sequence parallelism inside
self-attention, FSDP2 weight sharding, shared failures, and the plan's per-GPU prediction for N GPUs.

    torchrun --nproc_per_node 8 -m scail2.cli animate --model models/scail2 ... --out out.mp4

`ParallelLayout` (layout.py) sets up the process groups and applies them to a pipeline; `UlyssesAttention`
(ulysses.py) is the transformer's sequence-parallel plan; `scaling` predicts memory and time per GPU.
"""

from scail2.parallel.layout import FailureWatch, ParallelLayout, grid_shape, shard_transformer, valid_process_counts
from scail2.parallel.ulysses import UlyssesAttention, check_heads

__all__ = [
    "FailureWatch",
    "ParallelLayout",
    "UlyssesAttention",
    "check_heads",
    "grid_shape",
    "shard_transformer",
    "valid_process_counts",
]
