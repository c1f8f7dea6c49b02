"""Wall time and peak GPU memory per stage (load, text, denoise steps, decode, save)."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class StageTimer:
    def __init__(self, device: torch.device | None = None):
        self.cuda = device is not None and device.type == 'cuda'
        self.device = device
        self.stages: dict[str, dict[str, float]] = {}
        self.steps: list[dict[str, float | int | str]] = []

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            record = {'seconds': time.perf_counter() - start}
            if self.cuda:
                record['peak_gib'] = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.stages[name] = record

    def add_step(self, index: int, timestep: int, expert: str, seconds: float) -> None:
        self.steps.append({'index': index, 'timestep': timestep, 'expert': expert, 'seconds': seconds})

    def summary(self) -> str:
        parts = [f'{name} {rec["seconds"]:.1f}s' for name, rec in self.stages.items()]
        if self.steps:
            mean = sum(s['seconds'] for s in self.steps) / len(self.steps)
            parts.append(f'{mean:.2f}s/step')
        return ', '.join(parts)
