"""Training-loop pieces: budget, learning-rate schedule, optimizer step, EMA, loss log files."""
from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from wan.train.loop import EMA, Budget, LossLog, optimizer_step, warmup_cosine


def test_budget_by_steps_or_time():
    steps = Budget(max_steps=10)
    assert steps.progress(5) == 0.5 and not steps.done(9) and steps.done(10)
    timed = Budget(max_seconds=1e-9)
    assert timed.done(0)
    assert Budget(max_steps=4, max_seconds=1e6).progress(2) == 0.5
    with pytest.raises(ValueError, match='max_steps or max_seconds'):
        Budget()


def test_warmup_then_cosine():
    assert warmup_cosine(0.0, 0, 10) == pytest.approx(0.1)
    assert warmup_cosine(0.0, 9, 10) == pytest.approx(1.0)
    assert warmup_cosine(0.5, 100, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(1.0, 100, 10) == pytest.approx(0.1)


def test_optimizer_step_sets_lr_clears_old_grads_and_clips():
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=99.0)
    gradient = torch.tensor([3.0, 4.0, 0.0])  # norm 5
    weight.grad = torch.full((3,), 1e3)  # stale: must not be added
    optimizer_step(optimizer, (gradient * weight).sum(), lr=0.5, max_norm=1.0)
    assert optimizer.param_groups[0]['lr'] == 0.5
    assert torch.allclose(weight.detach(), -0.5 * gradient / 5)  # clipped to norm 1
    before = weight.detach().clone()
    optimizer_step(optimizer, (gradient * weight).sum(), lr=0.1, max_norm=10.0)
    assert torch.allclose(weight.detach(), before - 0.1 * gradient)  # under max_norm: unchanged


def test_ema_follows_the_ramped_decay():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.999)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)  # decay min(0.999, 1/10) = 0.1
    assert torch.allclose(ema.state_dict()['weight'], 0.1 * start + 0.9 * (start + 1))
    for step in range(1, 5000):
        ema.update(model, step)
    assert torch.allclose(ema.state_dict()['weight'], model.weight, atol=1e-3)


def test_loss_log_files(tmp_path):
    log = LossLog()
    for step in range(50):
        log.add('vae', step, step * 0.1, 1.0 / (step + 1), 1e-3)
        log.add('dit', step, step * 0.2, 2.0 - step / 50, 5e-4)
    rows = list(csv.DictReader(log.write_csv(tmp_path / 'l.csv').open()))
    assert len(rows) == 100 and rows[0] == {'phase': 'vae', 'step': '0', 'seconds': '0.0', 'loss': '1.0',
                                             'lr': '0.001'}
    with Image.open(log.write_png(tmp_path / 'l.png', title='t')) as img:
        assert img.size == (560, 24 + 2 * 300)
        assert len(img.getcolors(100_000)) > 3  # something was drawn
