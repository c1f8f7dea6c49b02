"""The one denoise loop: CFG, the A14B expert switch, per-token timesteps, re-imposition, interruption."""
import pytest
import torch
from torch import nn

from wan.pipelines.denoise import (DENSE, HIGH, LOW, GenerationInterrupted, GuidedModel, denoise,
                                   expert_for, seq_len_for)
from wan.utils.solvers import build_solver, expert_split


class StubExpert(nn.Module):
    """Velocity = `cond` for the positive context, `uncond` for the negative one; records its calls."""

    def __init__(self, cond: float, uncond: float, context: torch.Tensor, fail_at: int | None = None):
        super().__init__()
        self.cond, self.uncond, self.context = cond, uncond, context
        self.calls = []
        self.fail_at = fail_at

    def forward(self, x, t, context, seq_len, y=None):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        self.calls.append(dict(t=t.clone(), seq_len=seq_len, y=y, positive=context[0] is self.context))
        value = self.cond if context[0] is self.context else self.uncond
        return [torch.full_like(x[0], value)]


def guided(experts, ctx, **kw):
    return GuidedModel(lambda name: experts[name], context=ctx, context_null=torch.zeros(3, 8),
                       seq_len=kw.pop('seq_len', 8), **kw)


def test_seq_len_for_spec_shapes():
    assert seq_len_for((16, 21, 90, 160), (1, 2, 2)) == 75600
    assert seq_len_for((48, 31, 44, 80), (1, 2, 2)) == 27280
    assert seq_len_for((16, 21, 60, 104), (1, 2, 2)) == 32760
    assert seq_len_for((16, 21, 58, 104), (1, 2, 2), sp_size=8) == 31672  # 31668 rounded up to 8


def test_boundary_rule():
    assert expert_for(875, 875.0) == HIGH and expert_for(874, 875.0) == LOW
    assert expert_for(999, None) == DENSE


def test_cfg_uses_the_expert_and_scale_of_each_timestep():
    ctx = torch.ones(5, 8)
    experts = {HIGH: StubExpert(2.0, 1.0, ctx), LOW: StubExpert(5.0, 1.0, ctx)}
    fn = guided(experts, ctx, guide_scale=(3.0, 4.0), boundary=875.0)  # (low, high)
    x = torch.zeros(4, 2, 2, 2)
    assert torch.all(fn(x, torch.tensor(900)) == 1 + 4.0 * (2 - 1))
    assert torch.all(fn(x, torch.tensor(875)) == 1 + 4.0 * (2 - 1))
    assert torch.all(fn(x, torch.tensor(874)) == 1 + 3.0 * (5 - 1))
    # cond first, then uncond, as two separate forwards with the same t
    assert [c['positive'] for c in experts[HIGH].calls] == [True, False, True, False]
    assert [c['positive'] for c in experts[LOW].calls] == [True, False]


def test_timestep_scalar_and_per_token():
    ctx = torch.ones(5, 8)
    expert = StubExpert(0.0, 0.0, ctx)
    t = torch.tensor(937)
    guided({DENSE: expert}, ctx, guide_scale=(5.0, 5.0))(torch.zeros(4, 2, 4, 4), t)
    scalar = expert.calls[0]['t']
    assert scalar.shape == (1,) and scalar.dtype == torch.int64 and scalar.item() == 937

    mask = torch.ones(4, 2, 4, 4)
    mask[:, 0] = 0
    token_mask = mask[0][:, ::2, ::2]  # [T, h/2, w/2]
    expert.calls.clear()
    guided({DENSE: expert}, ctx, guide_scale=(5.0, 5.0), token_mask=token_mask, seq_len=10)(
        torch.zeros(4, 2, 4, 4), t)
    per_token = expert.calls[0]['t']
    assert per_token.shape == (1, 10)
    assert per_token[0, :4].eq(0).all()       # first latent frame: t = 0
    assert per_token[0, 4:].eq(937).all()     # later frames and the 2 padding positions: t


@pytest.mark.parametrize('steps, shift, boundary, split', [
    (40, 12.0, 0.875, (26, 14)),   # t2v-A14B defaults (spec 7.1)
    (40, 5.0, 0.900, (15, 25)),    # i2v-A14B defaults
])
def test_expert_split_on_the_default_schedules(steps, shift, boundary, split):
    solver, timesteps = build_solver('unipc', steps, shift, 'cpu')
    ctx = torch.ones(5, 8)
    experts = {HIGH: StubExpert(0.0, 0.0, ctx), LOW: StubExpert(0.0, 0.0, ctx)}
    fn = guided(experts, ctx, guide_scale=(3.0, 4.0), boundary=boundary * 1000)
    denoise(fn, torch.randn(4, 1, 2, 2), solver, timesteps)
    n_high, n_low = len(experts[HIGH].calls) // 2, len(experts[LOW].calls) // 2
    assert (n_high, n_low) == split == expert_split(timesteps, boundary)
    # every high-noise step comes before every low-noise step: one swap at the boundary
    high_t = [c['t'].item() for c in experts[HIGH].calls]
    low_t = [c['t'].item() for c in experts[LOW].calls]
    assert min(high_t) >= boundary * 1000 > max(low_t)


class RecordingSolver:
    """sample - 0.1 * v; records what it is given."""

    def __init__(self):
        self.calls = []

    def step(self, model_output, timestep, sample, return_dict=False, generator=None):
        self.calls.append((model_output.shape, int(timestep), sample.shape, generator))
        return (sample - 0.1 * model_output,)


def test_loop_reimposes_and_reports_every_step():
    ctx = torch.ones(5, 8)
    fn = guided({DENSE: StubExpert(1.0, 0.5, ctx)}, ctx, guide_scale=(2.0, 2.0))
    image_latent = torch.full((4, 1, 2, 2), 7.0)

    def reimpose(x):
        return torch.cat([image_latent, x[:, 1:]], dim=1)

    steps = []
    solver = RecordingSolver()
    timesteps = torch.tensor([999, 800, 500])
    gen = torch.Generator()
    out = denoise(fn, torch.zeros(4, 3, 2, 2), solver, timesteps, generator=gen, reimpose=reimpose,
                  callback=steps.append)
    assert [s.index for s in steps] == [0, 1, 2] and all(s.total == 3 for s in steps)
    assert [s.timestep for s in steps] == [999, 800, 500] and all(s.expert == DENSE for s in steps)
    assert all(torch.equal(s.latents[:, :1], image_latent) for s in steps)
    # velocity = 0.5 + 2 * (1 - 0.5) = 1.5 each step on the frames that are not re-imposed
    torch.testing.assert_close(out[:, 1:], torch.full((4, 2, 2, 2), -0.45))
    # the solver got a batch of one and the generator, nothing else
    assert solver.calls[0] == (torch.Size([1, 4, 3, 2, 2]), 999, torch.Size([1, 4, 3, 2, 2]), gen)


def test_ctrl_c_stops_with_the_step_reached():
    ctx = torch.ones(5, 8)
    expert = StubExpert(1.0, 0.0, ctx, fail_at=4)  # third step's cond forward
    fn = guided({DENSE: expert}, ctx, guide_scale=(1.0, 1.0))
    with pytest.raises(GenerationInterrupted) as info:
        denoise(fn, torch.zeros(4, 1, 2, 2), RecordingSolver(), torch.tensor([999, 900, 800, 700]))
    assert (info.value.step, info.value.total) == (2, 4)
