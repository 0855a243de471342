"""Ulysses sequence parallelism of the SCAIL-2 transformer's self-attention over one process group.

The transformer holds this plan (`SCAIL2Transformer3DModel.enable_sequence_parallel`) and calls it at four
points of its forward; everything between them runs on the rank's own tokens:

    shard        after the patch embedding: every rank keeps S/N consecutive tokens of the joint sequence
                 [extra refs | reference | video | driving] (no driving tokens when they are added to the video's)
                 and the same rows of the RoPE table; the sequence is
                 padded at the end to a multiple of N (zero tokens, identity rotations)
    keys_values  inside self-attention, after q/k RMSNorm and RoPE: keys and values go from [B, S/N, H, D] to
                 [B, S, H/N, D] (one all-to-all each) and the padded keys are dropped, so no query ever sees them
    attention    queries go the same way, the kernel runs on H/N heads over the whole sequence, and the output
                 comes back to [B, S/N, H, D] (the padded queries' rows are computed and later discarded)
    gather       before the head: the ranks' tokens are gathered and the padding dropped

Cross-attention, the FFN and the modulation are row-wise, so they stay local. N must divide the head count.
Inference only: the collectives are not differentiable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from scail2.errors import Scail2Error


def check_heads(num_heads: int, size: int) -> None:
    """Raise a one-line Scail2Error when `size` ranks cannot split `num_heads` heads between them."""
    if num_heads % size:
        divisors = [n for n in range(1, num_heads + 1) if num_heads % n == 0]
        raise Scail2Error(
            f"sequence parallelism over {size} processes needs the process count to divide the model's "
            f"{num_heads} attention heads; use one of {', '.join(map(str, divisors))} sequence-parallel processes"
        )


def sequence_to_heads(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """[B, s, H, D] (this rank's s tokens, all heads) -> [B, size*s, H/size, D] (every rank's tokens, in rank
    order, of this rank's share of the heads)."""
    b, s, h, d = x.shape
    send = x.reshape(b, s, size, h // size, d).permute(2, 0, 1, 3, 4).contiguous()  # [N, B, s, H/N, D]
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)  # received[i]: rank i's tokens of my heads
    return received.permute(1, 0, 2, 3, 4).reshape(b, size * s, h // size, d)


def heads_to_sequence(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """The inverse of `sequence_to_heads`: [B, size*s, H/size, D] -> [B, s, H, D]."""
    b, total, heads, d = x.shape
    s = total // size
    send = x.reshape(b, size, s, heads, d).transpose(0, 1).contiguous()  # [N, B, s, H/N, D]
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)  # received[i]: my tokens of rank i's heads
    return received.permute(1, 2, 0, 3, 4).reshape(b, s, size * heads, d)


def pad_rotations(rope: torch.Tensor, pad: int) -> torch.Tensor:
    """A RoPE table [S, D/2, 2] or [B, S, D/2, 2] with `pad` identity rotations, (re, im) = (1, 0), appended."""
    shape = list(rope.shape)
    shape[-3] = pad
    identity = rope.new_zeros(shape)
    identity[..., 0] = 1
    return torch.cat([rope, identity], dim=-3)


class UlyssesAttention:
    """The sequence-parallel plan of one transformer over `group` (see the module note)."""

    def __init__(self, group, num_heads: int):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        check_heads(num_heads, self.size)
        self.tokens: int | None = None  # the real sequence length of the forward in progress

    def local_rows(self, tokens: int) -> slice:
        """This rank's rows of the sequence padded to a multiple of the group size."""
        per_rank = -(-tokens // self.size)
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def shard(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, dim] and rope [S, D/2, 2] or [B, S, D/2, 2] -> this rank's rows of both, padded."""
        if torch.is_grad_enabled():
            raise Scail2Error("sequence parallelism runs without autograd only (wrap the call in torch.no_grad())")
        self.tokens = x.shape[1]
        pad = -self.tokens % self.size
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))  # zero tokens at the end
        rope = pad_rotations(rope, pad)
        rows = self.local_rows(self.tokens)
        return x[:, rows], rope[rows] if rope.ndim == 3 else rope[:, rows]

    def keys_values(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, S/N, H, D] of this rank's tokens -> [B, S, H/N, D] of every real token."""
        k = sequence_to_heads(k, self.group, self.size)[:, : self.tokens]
        v = sequence_to_heads(v, self.group, self.size)[:, : self.tokens]
        return k, v

    def attention(self, processor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Queries [B, s, H, D] of this rank's tokens over `keys_values`' output -> [B, s, H, D]."""
        out = processor(sequence_to_heads(q, self.group, self.size), k, v)
        return heads_to_sequence(out, self.group, self.size)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's tokens [B, S/N, dim] -> the whole sequence [B, S, dim] on every rank."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, : self.tokens]
