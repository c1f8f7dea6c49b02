"""The one place deciding what sits on which device: T5, the DiT experts, offloading (spec 7, 15.21).

Rules of the reference, on one GPU:
- T5 encodes on the GPU (or on the CPU with `t5_cpu`, its outputs then moved to the GPU) and goes
  back to the CPU after encoding when `offload_model`.
- DiT weights are loaded on the CPU (`init_on_cpu`); an expert moves to the GPU when first used and
  the other expert leaves first, so two A14B experts are never on the GPU together; the swap happens
  once, at the boundary. After sampling, `offload_model` sends them back to the CPU.
- The VAE lives on the GPU.
With FSDP or sequence parallelism (`init_on_cpu=False`) models are placed on the device once and stay.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

CPU = torch.device('cpu')


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else CPU


def module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else CPU


@dataclass
class Placement:
    device: torch.device
    offload_model: bool = False
    t5_cpu: bool = False
    init_on_cpu: bool = True

    @property
    def dit_load_device(self) -> torch.device:
        return CPU if self.init_on_cpu else self.device

    def _empty_cache(self) -> None:
        if self.device.type == 'cuda' and torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def text_encoder(self, module: nn.Module) -> Iterator[torch.device]:
        """Yield the device to encode on, with `module` placed there for the duration."""
        if self.t5_cpu:
            yield CPU
            return
        module.to(self.device)
        try:
            yield self.device
        finally:
            if self.offload_model:
                module.to(CPU)
                self._empty_cache()

    def activate(self, experts: dict[str, nn.Module], name: str) -> nn.Module:
        """Return expert `name` on the device; on one GPU every other expert leaves it first."""
        wanted = experts[name]
        if self.offload_model or self.init_on_cpu:
            for other, module in experts.items():
                if other != name and module_device(module) != CPU and module is not wanted:
                    module.to(CPU)
                    self._empty_cache()
            if module_device(wanted) != self.device:
                wanted.to(self.device)
        return wanted

    def release(self, experts: dict[str, nn.Module]) -> None:
        """After sampling: with `offload_model`, every expert back to the CPU."""
        if self.offload_model:
            for module in experts.values():
                module.to(CPU)
            if self.device.type == 'cuda' and torch.cuda.is_available():
                torch.cuda.synchronize(self.device)
            self._empty_cache()
