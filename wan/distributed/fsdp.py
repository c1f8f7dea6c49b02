"""FSDP2 (`fully_shard`) of the DiT and the umT5 encoder, one unit per transformer block (spec 10.1).

As the reference: every block is its own unit and the rest (embeddings, head, final norm) forms
the root unit; FSDP is used only to spread the weights over the ranks, every rank still runs the
whole computation (on its sequence part under Ulysses). A block's weights are all-gathered just
before it runs (the next block's gather is issued while it computes) and freed after.

Loading: pass a model whose weights sit on the CPU (the checkpoint's memory map, so the ranks of a
node share the page cache). `fully_shard` moves one block at a time to the device and keeps this
rank's 1/N slice, so a rank never holds more than its shards plus one full block.
The reference gathers DiT weights in bf16 (`MixedPrecision(param_dtype=bf16)`), so with DiT FSDP
even the fp32 islands see bf16-rounded weights; `param_dtype=None` keeps the stored dtype.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

try:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # torch < 2.6
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

__all__ = ['shard_model', 'shard_dit', 'shard_text_encoder', 'full_state_dict']


def shard_model(model: nn.Module, blocks: Sequence[nn.Module], mesh: DeviceMesh,
                param_dtype: torch.dtype | None = None) -> nn.Module:
    """fully_shard each of `blocks`, then `model` (the root), in place; returns `model`."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False)  # inputs keep their dtype (fp32 latents, t)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    for current, following in zip(blocks, list(blocks)[1:]):
        current.set_modules_to_forward_prefetch([following])
    return model


def shard_dit(model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype | None = torch.bfloat16
              ) -> nn.Module:
    """A WanModel sharded per `WanAttentionBlock` (the reference's `shard_model`)."""
    return shard_model(model, model.blocks, mesh, param_dtype)


def shard_text_encoder(encoder: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """A UMT5Encoder sharded per block; its bf16 weights are gathered as stored."""
    return shard_model(encoder, encoder.blocks, mesh, param_dtype=None)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of a sharded model, gathered (a collective: call on every rank)."""
    return {key: value.full_tensor() if hasattr(value, 'full_tensor') else value
            for key, value in model.state_dict().items()}
