"""CFG parallelism: the conditional and unconditional forwards of a step on two halves of the ranks.

Not in the reference (which runs both passes one after the other on every rank). Ranks are
arranged as a (cfg=2, sp=P) grid: ranks 0..P-1 run the conditional pass, ranks P..2P-1 the
unconditional one, each half with Ulysses over its own P ranks. After the forward each rank swaps
its velocity with its partner in the other half (an all_gather over the 2-rank cfg group), so every
rank holds both and takes the same solver step. The model itself is unchanged; the split lives in
the denoise loop's model_fn (`GuidedModel`), which calls this object instead of running both passes.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ['CfgParallel']

Context = TypeVar('Context')


class CfgParallel:
    """`cfg(run, context, context_null) -> (cond, uncond)`, running only this rank's half."""

    def __init__(self, group: dist.ProcessGroup | None):
        if dist.get_world_size(group) != 2:
            raise ValueError(f'a cfg group has 2 ranks, got {dist.get_world_size(group)}')
        self.group = group
        self.index = dist.get_rank(group)  # 0: conditional pass, 1: unconditional pass

    def __call__(self, run: Callable[[Context], Tensor], context: Context, context_null: Context
                 ) -> tuple[Tensor, Tensor]:
        mine = run(context if self.index == 0 else context_null).contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=self.group)
        return both[0], both[1]
