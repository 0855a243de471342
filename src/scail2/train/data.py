"""Deterministic batches from a latent cache, identical whatever the number of processes.

Step s always takes the same global batch: samples are bucketed by latent shape (a batch never mixes
shapes), each epoch shuffles every bucket with (seed, epoch), cuts it into global batches and shuffles the
batches. Process r of W takes the r-th of W equal slices. Every random draw of a sample (noise, sigma,
history, text dropout, augmentation) comes from a generator seeded by (seed, step, sample index), so one
process and two processes see exactly the same numbers.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from scail2.errors import Scail2Error


class BatchPlan:
    def __init__(self, shapes: list[tuple[int, ...]], batch_size: int, seed: int):
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for index, shape in enumerate(shapes):
            buckets[tuple(shape)].append(index)
        self.buckets = [np.array(buckets[key]) for key in sorted(buckets)]
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = sum(len(b) // batch_size for b in self.buckets)
        if self.batches_per_epoch == 0:
            raise Scail2Error(
                f"the cache holds no {batch_size} samples of one latent shape; lower train.batch_size "
                f"(largest bucket: {max(len(b) for b in self.buckets)} samples)"
            )
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for bucket in self.buckets:
                order = rng.permutation(bucket)
                usable = len(order) // self.batch_size * self.batch_size
                batches.extend(order[:usable].reshape(-1, self.batch_size))
            self._epoch_cache = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._epoch_cache[1]

    def global_batch(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.batches_per_epoch)
        return [int(i) for i in self._epoch(epoch)[position]]

    def local_batch(self, step: int, rank: int, world_size: int) -> list[int]:
        batch = self.global_batch(step)
        if len(batch) % world_size:
            raise Scail2Error(f"train.batch_size {len(batch)} does not split evenly over {world_size} processes")
        per_rank = len(batch) // world_size
        return batch[rank * per_rank : (rank + 1) * per_rank]


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator of one sample at one step (independent of process count and batch position)."""
    state = np.random.SeedSequence([seed, step, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def pad_and_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack [L_i, D] text features zero-padded to the longest (the model zero-pads to text_len anyway)."""
    longest = max(t.shape[0] for t in tensors)
    return torch.stack([torch.nn.functional.pad(t, (0, 0, 0, longest - t.shape[0])) for t in tensors])
