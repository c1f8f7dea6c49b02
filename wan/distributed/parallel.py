"""`Parallel`: the one object a multi-process run asks how to place and wrap its models.

    device = init_distributed()
    parallel = Parallel(ParallelConfig(ulysses_size=4, cfg_parallel=True, dit_fsdp=True), device)
    dit = parallel.parallelize_dit(WanModel.from_pretrained(folder))   # CPU weights in, ready out
    parallel.shard_text_encoder(t5.model)
    GuidedModel(..., cfg_parallel=parallel.cfg)                        # None without --cfg_parallel
    seq_len_for(shape, patch, sp_size=parallel.sp_size)

Rank layout (cfg, sp) with sp fastest: ranks 0..P-1 form the first Ulysses group (conditional pass
under CFG parallel), P..2P-1 the second. FSDP shards over all ranks. Order of application: sequence
parallel seams first (they only replace attributes), then FSDP, which moves weights to the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from ..errors import UserError
from .cfg_parallel import CfgParallel
from .fsdp import shard_dit, shard_text_encoder
from .sequence_parallel import apply_sequence_parallel
from .util import world_size

__all__ = ['ParallelConfig', 'Parallel']


@dataclass(frozen=True)
class ParallelConfig:
    ulysses_size: int = 1
    cfg_parallel: bool = False
    dit_fsdp: bool = False
    t5_fsdp: bool = False

    @property
    def degree(self) -> int:
        """Ranks one DiT forward pair (cond + uncond) is spread over."""
        return self.ulysses_size * (2 if self.cfg_parallel else 1)


class Parallel:
    def __init__(self, config: ParallelConfig, device: torch.device):
        ranks = world_size()
        if config.ulysses_size < 1:
            raise UserError(f'--ulysses_size must be at least 1, got {config.ulysses_size}')
        if config.degree > 1 and config.degree != ranks:
            cfg = ' x 2 (--cfg_parallel)' if config.cfg_parallel else ''
            raise UserError(f'--ulysses_size {config.ulysses_size}{cfg} needs {config.degree} processes, the '
                            f'launch has {ranks} (torchrun --nproc_per_node={config.degree} generate.py ...)')
        if (config.dit_fsdp or config.t5_fsdp) and ranks == 1:
            raise UserError('--dit_fsdp/--t5_fsdp need a multi-process launch '
                            '(torchrun --nproc_per_node=N generate.py ...)')
        self.config = config
        self.device = device
        self.sp_group = self.cfg_group = None
        if config.degree > 1:
            mesh = init_device_mesh(device.type, (2 if config.cfg_parallel else 1, config.ulysses_size),
                                    mesh_dim_names=('cfg', 'sp'))
            self.sp_group = mesh['sp'].get_group()
            self.cfg_group = mesh['cfg'].get_group() if config.cfg_parallel else None
        self.fsdp_mesh = (init_device_mesh(device.type, (ranks,))
                          if config.dit_fsdp or config.t5_fsdp else None)
        self.cfg = CfgParallel(self.cfg_group) if config.cfg_parallel else None

    @property
    def sp_size(self) -> int:
        """The Ulysses degree; the pipelines round seq_len up to a multiple of it (spec 3.8)."""
        return self.config.ulysses_size

    def parallelize_dit(self, model: nn.Module, param_dtype: torch.dtype | None | str = 'auto') -> nn.Module:
        """Sequence-parallel seams (Ulysses > 1), then FSDP or a plain move to the device.

        `param_dtype` is the dtype FSDP gathers weights in; 'auto' is bf16 on CUDA as the reference,
        the stored dtype elsewhere.
        """
        if self.config.ulysses_size > 1:
            apply_sequence_parallel(model, self.sp_group)
        if self.config.dit_fsdp:
            if param_dtype == 'auto':
                param_dtype = torch.bfloat16 if self.device.type == 'cuda' else None
            return shard_dit(model, self.fsdp_mesh, param_dtype)
        return model.to(self.device)

    def shard_text_encoder(self, module: nn.Module) -> nn.Module:
        """FSDP of the umT5 encoder with --t5_fsdp, else `module` unchanged (placement moves it)."""
        if self.config.t5_fsdp:
            return shard_text_encoder(module, self.fsdp_mesh)
        return module
