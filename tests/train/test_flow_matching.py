"""Flow-matching objective: the sampler's shift, the interpolation and velocity target, per-token
timesteps and the image-mode frame, text dropout, the reference init, and a loss that goes down."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from wan.modules.model import WanModel
from wan.train.flow_matching import FlowMatching, init_dit_weights, shift_sigmas
from wan.utils.solvers import build_solver

TINY = dict(model_type='ti2v', text_len=8, in_dim=48, out_dim=48, dim=32, ffn_dim=64, num_heads=2, num_layers=2)


def test_shift_is_the_solvers_shift():
    """UniPC's schedule is shift(linspace(0.999, 0, N+1)[:-1]) (spec 8.1): the same function."""
    steps, shift = 25, 3.0
    solver, _ = build_solver('unipc', steps, shift, 'cpu')
    base = torch.linspace(0.999, 0, steps + 1, dtype=torch.float64)[:-1]
    assert torch.allclose(shift_sigmas(base, shift).float(), solver.sigmas[:-1].float(), atol=1e-6)


def test_sigmas_follow_the_shifted_uniform():
    objective = FlowMatching(shift=5.0)
    sigmas = objective.sample_sigmas(200_000, torch.Generator().manual_seed(0))
    assert float(sigmas.min()) > 0 and float(sigmas.max()) < 1
    for q in (0.1, 0.5, 0.9):  # quantiles of shift(U) are shift of the uniform's quantiles
        assert float(sigmas.quantile(q)) == pytest.approx(float(shift_sigmas(torch.tensor(q), 5.0)), abs=5e-3)


class Spy(nn.Module):
    """Records what the objective feeds a DiT and predicts zero velocity."""
    patch_size = (1, 2, 2)

    def forward(self, x, t, context, seq_len):
        self.seen = dict(x=torch.stack(x), t=t, context=context, seq_len=seq_len)
        return [torch.zeros_like(u) for u in x]


@pytest.mark.parametrize('image_prob', [0.0, 0.5, 1.0])
def test_inputs_targets_and_image_mode(image_prob):
    b, c, f, h, w = 16, 48, 3, 4, 6
    x0 = torch.randn(b, c, f, h, w, generator=torch.Generator().manual_seed(1))
    context = [torch.randn(3, 4096)] * b
    spy = Spy()
    loss = FlowMatching(shift=3.0, image_prob=image_prob).loss(spy, x0, context, torch.Generator().manual_seed(2))
    seen = spy.seen
    tokens = (h // 2) * (w // 2)
    assert seen['seq_len'] == f * tokens and seen['t'].shape == (b, f * tokens) and seen['context'] is context
    t = seen['t'].view(b, f, tokens)
    sigma = t[:, -1, 0] / 1000
    assert bool((t[:, 1:] == t[:, -1:, :1]).all()), 'one timestep for every noised token of a sample'
    given = t[:, 0, 0] == 0
    assert bool((t[~given, 0] == t[~given, -1:, 0]).all())
    if image_prob == 0.0:
        assert not bool(given.any())
    if image_prob == 1.0:
        assert bool(given.all())
    # frame 0 of an image-mode sample is the clean latent; every noised frame is (1-s) x0 + s noise
    assert torch.equal(seen['x'][given, :, 0], x0[given, :, 0])
    s = sigma.view(b, 1, 1, 1, 1)
    noise = (seen['x'] - (1 - s) * x0) / s
    keep = torch.ones(b, 1, f, 1, 1)
    keep[given, :, 0] = 0
    # zero prediction: the loss is the mean squared target (noise - x0) over the scored frames
    expected = ((noise - x0).pow(2) * keep).sum() / (keep.sum() * c * h * w)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert float(noise[:, :, 1:].std()) == pytest.approx(1.0, abs=0.05)


def test_text_dropout_rate():
    texts = [f'caption {i}' for i in range(4000)]
    g = torch.Generator().manual_seed(3)
    assert FlowMatching(text_drop=0.0).drop_text(texts, '', g) == texts
    assert FlowMatching(text_drop=1.0).drop_text(texts, 'neg', g) == ['neg'] * len(texts)
    dropped = FlowMatching(text_drop=0.1).drop_text(texts, '', g)
    assert sum(d == '' for d in dropped) == pytest.approx(400, abs=60)
    assert all(d in ('', t) for d, t in zip(dropped, texts))


def test_reference_init_gives_zero_velocity():
    torch.manual_seed(0)
    model = WanModel(**TINY)
    init_dit_weights(model)
    assert model.head.head.weight.abs().max().item() == 0
    assert model.text_embedding[0].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].self_attn.q.bias.abs().max().item() == 0
    out = model([torch.randn(48, 2, 4, 4)], t=torch.tensor([500.0]), context=[torch.randn(3, 4096)], seq_len=8)
    # only the head's bias (zero) survives a zero head weight
    assert out[0].abs().max().item() == 0


def test_training_lowers_the_loss_and_uses_the_text():
    torch.manual_seed(0)
    model = WanModel(**TINY)
    init_dit_weights(model)
    # two latent 'classes', told apart only by their caption embedding
    g = torch.Generator().manual_seed(4)
    means = torch.randn(2, 48, 1, 1, 1, generator=g)
    texts = torch.randn(2, 3, 4096, generator=g)
    objective = FlowMatching(shift=1.0, image_prob=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(n: int):
        label = torch.randint(2, (n,), generator=g)
        return label, means[label] + 0.1 * torch.randn(n, 48, 2, 2, 2, generator=g)

    losses = []
    for step in range(60):
        label, x0 = batch(8)
        loss = objective.loss(model, x0, list(texts[label]), g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    # same noise and timesteps, right vs swapped captions: the right ones fit much better
    label, x0 = batch(64)
    with torch.no_grad():
        right = objective.loss(model, x0, list(texts[label]), torch.Generator().manual_seed(5))
        swapped = objective.loss(model, x0, list(texts[1 - label]), torch.Generator().manual_seed(5))
    assert float(right) < 0.8 * float(swapped), (float(right), float(swapped))
