"""Sequence parallelism for an unchanged WanModel, through its seams (spec 10.2, 15.22).

WanModel calls `self.seq_split(tensor, dim)` on every per-token tensor right after patch embedding
(x, the RoPE cos/sin tables, per-token modulation), `self.seq_gather(x, dim)` before the head, and
`block.self_attn.attn_fn(q, k, v, k_lens)` for self-attention. On one device all three are the
identity / plain attention. `apply_sequence_parallel` replaces them on one model instance:

    split   pad the sequence with zeros to a multiple of P, keep this rank's contiguous 1/P
    attn    Ulysses all-to-all (ulysses.py): sequence-sharded q/k/v -> head-sharded, attend over
            the whole sequence with the keys beyond the true length masked, and back
    gather  all_gather the P parts, concatenate, drop the padding

The pipelines already round `seq_len` up to a multiple of P (spec 3.8), so the model's own padding
and key lengths (`k_lens`, the global true token count) normally make the split even; the padding
here only covers a `seq_len` that is not a multiple of P, and its rows are then masked as keys.
Cross-attention and the FFN are per token, so they run on the local part unchanged.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .ulysses import UlyssesAttention

__all__ = ['SequenceParallel', 'apply_sequence_parallel']


class SequenceParallel:
    """Split/gather of one model's token sequence over a process group of P ranks.

    One forward at a time: `split` records the global length of the sequence it last split, which
    `gather` and the attention's key lengths use.
    """

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.length: int | None = None  # global (unpadded) length of the current forward's sequence

    def padded(self, length: int) -> int:
        return -(-length // self.size) * self.size

    def split(self, tensor: Tensor, dim: int) -> Tensor:
        """This rank's contiguous part of `tensor` along `dim`, after zero padding to a multiple of P."""
        self.length = length = tensor.size(dim)
        extra = self.padded(length) - length
        if extra:
            pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [0, extra]
            tensor = F.pad(tensor, pad)
        part = tensor.size(dim) // self.size
        return tensor.narrow(dim, self.rank * part, part)

    def gather(self, tensor: Tensor, dim: int) -> Tensor:
        """The whole sequence from every rank's part, padding dropped."""
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        full = torch.cat(parts, dim)
        return full.narrow(dim, 0, self.length) if self.length is not None else full

    def key_lengths(self, k_lens: Tensor | None, batch: int) -> Tensor | None:
        """Key lengths for attention over the padded global sequence.

        The model passes the true token counts when it padded the sequence itself; padding added
        by `split` must be masked as well, so None becomes the pre-split length.
        """
        if k_lens is not None or self.length is None or self.padded(self.length) == self.length:
            return k_lens
        return torch.full((batch,), self.length, dtype=torch.int32)


def apply_sequence_parallel(model: nn.Module, group: dist.ProcessGroup | None = None) -> SequenceParallel:
    """Install Ulysses sequence parallelism on `model` (a WanModel) over `group`; returns its state.

    Replaces the instance's `seq_split`/`seq_gather` seams and every self-attention's `attn_fn`;
    the class and its forward are untouched, and a model with P = 1 is left as it is.
    """
    sp = SequenceParallel(group)
    if sp.size == 1:
        return sp
    if any(isinstance(block.self_attn.attn_fn, UlyssesAttention) for block in model.blocks):
        raise ValueError('sequence parallelism is already applied to this model')
    model.seq_split = sp.split
    model.seq_gather = sp.gather
    for block in model.blocks:
        attn = block.self_attn
        attn.attn_fn = UlyssesAttention(sp, inner=attn.attn_fn)
    return sp
