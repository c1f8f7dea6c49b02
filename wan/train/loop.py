"""Pieces every training loop here shares: a step/time budget, the learning-rate schedule, the
optimizer step, an EMA of the weights, and the loss log (CSV plus a PNG of the curves, drawn with PIL
alone)."""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class Budget:
    """Train until `max_steps` steps or `max_seconds` seconds, whichever comes first (None = no limit)."""
    max_steps: int | None = None
    max_seconds: float | None = None
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError('a training budget needs max_steps or max_seconds')

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        """Fraction of the budget used after `step` steps, in [0, 1]."""
        parts = []
        if self.max_steps is not None:
            parts.append(step / max(self.max_steps, 1))
        if self.max_seconds is not None:
            parts.append(self.elapsed() / self.max_seconds)
        return min(1.0, max(parts))

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def warmup_cosine(progress: float, step: int, warmup_steps: int, final_fraction: float = 0.1) -> float:
    """Learning-rate factor: linear warm-up over `warmup_steps`, then cosine from 1 to `final_fraction`."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    return warm * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, max_norm: float = 1.0) -> None:
    """One update: set the learning rate, back-propagate `loss`, clip the gradient norm of the
    optimizer's parameters to `max_norm`, step."""
    for group in optimizer.param_groups:
        group['lr'] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group['params']], max_norm)
    optimizer.step()


class EMA:
    """Exponential moving average of a model's floating-point state, kept in fp32.

    The decay ramps up as (1 + step) / (10 + step) so early weights do not linger.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        state = model.state_dict()
        keys = list(self.shadow)
        # one multi-tensor kernel instead of one per tensor (the step time of a tiny model is launches)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [state[k].detach().float() for k in keys], 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}


class LossLog:
    """Rows of (phase, step, seconds, loss, lr); written as CSV and drawn as one panel per phase."""

    columns = ('phase', 'step', 'seconds', 'loss', 'lr')

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, phase: str, step: int, seconds: float, loss: float, lr: float) -> None:
        self.rows.append(dict(phase=phase, step=step, seconds=round(seconds, 3), loss=loss, lr=lr))

    def phase(self, name: str) -> list[dict]:
        return [r for r in self.rows if r['phase'] == name]

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open('w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def write_png(self, path: str | Path, title: str = '') -> Path:
        """Loss (log scale) against step, raw in light grey and smoothed in blue, a panel per phase."""
        from PIL import Image, ImageDraw

        phases = list(dict.fromkeys(r['phase'] for r in self.rows))
        panel_w, panel_h, pad = 560, 300, 48
        img = Image.new('RGB', (panel_w, 24 + panel_h * max(len(phases), 1)), 'white')
        draw = ImageDraw.Draw(img)
        draw.text((8, 6), title, fill='black')
        for i, name in enumerate(phases):
            rows = self.phase(name)
            steps = [r['step'] for r in rows]
            logs = [math.log10(max(r['loss'], 1e-12)) for r in rows]
            top = 24 + i * panel_h
            box = (pad, top + 20, panel_w - 16, top + panel_h - pad)
            draw.rectangle(box, outline='black')
            lo, hi = min(logs), max(logs)
            hi = hi if hi > lo else lo + 1
            s0, s1 = min(steps), max(max(steps), min(steps) + 1)

            def xy(step: float, value: float) -> tuple[float, float]:
                return (box[0] + (step - s0) / (s1 - s0) * (box[2] - box[0]),
                        box[3] - (value - lo) / (hi - lo) * (box[3] - box[1]))

            smooth, smoothed = logs[0], []
            for v in logs:
                smooth = 0.95 * smooth + 0.05 * v
                smoothed.append(smooth)
            for series, colour in ((logs, (200, 200, 200)), (smoothed, (30, 80, 200))):
                if len(series) > 1:
                    draw.line([xy(s, v) for s, v in zip(steps, series)], fill=colour, width=1 if series is logs else 2)
            draw.text((box[0], top + 4), f'{name}: loss (log10) vs step; last smoothed {10 ** smoothed[-1]:.4g}',
                      fill='black')
            draw.text((4, box[1]), f'{hi:.2f}', fill='black')
            draw.text((4, box[3] - 10), f'{lo:.2f}', fill='black')
            draw.text((box[0], box[3] + 4), f'{s0}', fill='black')
            draw.text((box[2] - 40, box[3] + 4), f'{s1}', fill='black')
        path = Path(path)
        img.save(path)
        return path
