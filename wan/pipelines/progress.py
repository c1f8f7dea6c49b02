"""A tqdm progress bar driven by the denoise loop's per-step callback (step, expert, time left)."""
from __future__ import annotations

from .denoise import DENSE, StepInfo


class ProgressBar:
    def __init__(self, total: int, disable: bool = False):
        from tqdm import tqdm  # lazy: only the command line draws a bar
        self.bar = tqdm(total=total, desc='denoise', unit='step', disable=disable, dynamic_ncols=True)

    def __call__(self, step: StepInfo) -> None:
        if step.expert != DENSE:
            self.bar.set_postfix_str(f'{step.expert}-noise expert, t={step.timestep}', refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
