"""Ulysses attention: all-to-all from sequence shards to head shards and back (spec 10.2).

With P ranks each holding L/P tokens of all N heads, one all-to-all gives each rank all L tokens of
N/P heads; attention runs there on the whole sequence; a second all-to-all returns the output to
sequence shards. When P does not divide N, the heads are padded with zeros to a multiple of P
(zero q, k, v give a zero output, which is dropped), so any degree works: at 40 heads and P = 3 the
cost is 42/40 of the attention, where ring attention would be needed otherwise.
On CUDA q/k/v are cast to bf16 before the exchange (spec 15.22), as attention would do anyway.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..modules.attention import attention, compute_dtype

if TYPE_CHECKING:
    from .sequence_parallel import SequenceParallel

__all__ = ['UlyssesAttention', 'seq_to_heads', 'heads_to_seq']


def _all_to_all(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Exchange the P slices of x along dim 0: slice r goes to rank r, slot r of the result comes from rank r."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def seq_to_heads(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """[..., L/P, N, D] sequence-sharded -> [..., L, N/P, D] head-sharded (N divisible by P)."""
    size = dist.get_world_size(group)
    *lead, length, heads, dim = x.shape
    x = x.reshape(*lead, length, size, heads // size, dim).movedim(-3, 0)  # [P, ..., L/P, N/P, D]
    x = _all_to_all(x, group)                                             # slot r: rank r's tokens
    return x.movedim(0, -4).reshape(*lead, size * length, heads // size, dim)


def heads_to_seq(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """[..., L, N/P, D] head-sharded -> [..., L/P, N, D] sequence-sharded (the inverse)."""
    size = dist.get_world_size(group)
    *lead, length, heads, dim = x.shape
    x = x.reshape(*lead, size, length // size, heads, dim).movedim(-4, 0)  # [P, ..., L/P, N/P, D]
    x = _all_to_all(x, group)                                             # slot r: head group r
    return x.movedim(0, -3).reshape(*lead, length // size, size * heads, dim)


class UlyssesAttention:
    """A WanSelfAttention `attn_fn`: q/k/v [B, L/P, N, D] of this rank's tokens -> output likewise."""

    def __init__(self, sp: SequenceParallel, inner: Callable[..., Tensor] = attention):
        self.sp = sp
        self.inner = inner

    @torch.compiler.disable  # collectives run eagerly inside a compiled block
    def __call__(self, q: Tensor, k: Tensor, v: Tensor,
                 k_lens: Tensor | Sequence[int] | None = None) -> Tensor:
        out_dtype = q.dtype
        dtype = compute_dtype(q, k, v)  # spec 4 / 15.22: cast before the all-to-all
        batch, _, heads, _ = q.shape
        size = self.sp.size
        qkv = torch.stack([q.to(dtype), k.to(dtype), v.to(dtype)])  # [3, B, L/P, N, D]
        extra = -heads % size
        if extra:
            qkv = F.pad(qkv, (0, 0, 0, extra))
        q, k, v = seq_to_heads(qkv, self.sp.group).unbind(0)  # [B, L, N'/P, D] each
        out = self.inner(q, k, v, k_lens=self.sp.key_lengths(k_lens, batch))
        out = heads_to_seq(out, self.sp.group)  # [B, L/P, N', D]
        return out[:, :, :heads].to(out_dtype)
