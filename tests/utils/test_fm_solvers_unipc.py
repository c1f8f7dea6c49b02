"""Flow UniPC solver (spec 8.1, 8.2, 8.4, 15.8, 15.10-12)."""

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler
from wan.utils.solvers import build_solver, expert_split

SHAPE = (1, 4, 2, 8, 8)  # [B, C, T, H, W], as the pipelines call step(v[None], t, x[None])


def randn(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(SHAPE, generator=gen)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def spec_sigmas(steps: int, shift: float) -> np.ndarray:
    """spec 8.1 / 15.11: shift(linspace(0.999 as float32, 0, N+1)[:-1]) in float64."""
    sigma = np.linspace(float(np.float32(0.999)), 0.0, steps + 1)[:-1]
    return shift * sigma / (1 + (shift - 1) * sigma)


# spec 8.4, unipc rows: (steps, shift, first σ, first 6 t, last 4 t, last σ before 0 or None)
UNIPC_TABLE = [
    (40, 12.0, 0.99992, [999, 997, 995, 993, 990, 988], [571, 492, 386, 235], 0.2351),  # t2v-A14B
    (40, 5.0, 0.99980, [999, 994, 989, 983, 978, 972], [356, 288, 208, 113], 0.1135),  # i2v-A14B
    (50, 5.0, 0.99980, [999, 995, 991, 987, 982, 978], [302, 241, 172, 92], 0.0925),  # ti2v-5B
    (40, 3.0, 0.99967, [999, 991, 982, 973, 963, 954], [249, 195, 136, 71], None),  # s2v-14B
    (20, 5.0, 0.99980, [999, 989, 978, 965, 952, 937], [555, 468, 356, 208], None),  # animate-14B
]


@pytest.mark.parametrize("steps, shift, first_sigma, first, last, last_sigma", UNIPC_TABLE)
def test_unipc_schedule_matches_spec_table(steps, shift, first_sigma, first, last, last_sigma):
    solver, timesteps = build_solver("unipc", steps, shift, "cpu")
    assert timesteps.dtype == torch.int64 and timesteps.shape == (steps,)
    assert solver.sigmas.dtype == torch.float32 and solver.sigmas.shape == (steps + 1,)
    assert round(solver.sigmas[0].item(), 5) == first_sigma and solver.sigmas[-1].item() == 0.0
    assert timesteps[:6].tolist() == first
    assert timesteps[-4:].tolist() == last
    if last_sigma is not None:
        assert round(solver.sigmas[-2].item(), 4) == last_sigma


@pytest.mark.parametrize("shift, boundary, split", [(12.0, 0.875, (26, 14)), (5.0, 0.9, (15, 25))])
def test_unipc_moe_split(shift, boundary, split):
    _, timesteps = build_solver("unipc", 40, shift, "cpu")
    assert expert_split(timesteps, boundary) == split


def test_unipc_shift_applied_once_and_timesteps_truncate():
    steps, shift = 40, 5.0
    solver, timesteps = build_solver("unipc", steps, shift, "cpu")
    sigmas = spec_sigmas(steps, shift)
    assert torch.equal(solver.sigmas, torch.tensor([*sigmas, 0.0], dtype=torch.float32))
    assert timesteps.tolist() == [int(s * 1000) for s in sigmas]  # 999, not 1000: truncation


@pytest.mark.parametrize("steps, shift", [(40, 12.0), (10, 1.0)])
def test_unipc_straight_path_is_exact(steps, shift):
    """v = noise - x0 exactly: every sample (predicted and corrected) lies on (1-σ)·x0 + σ·noise."""
    gen = torch.Generator().manual_seed(1)
    x0, noise = randn(gen), randn(gen)
    tol = 8 * torch.finfo(torch.float32).eps * max(x0.abs().max(), noise.abs().max()).item()
    solver, timesteps = build_solver("unipc", steps, shift, "cpu")
    sigmas = solver.sigmas.double()
    x = ((1 - sigmas[0]) * x0.double() + sigmas[0] * noise.double()).float()
    for i, t in enumerate(timesteps):
        x = solver.step(noise - x0, t, x, return_dict=False)[0]
        expected = (1 - sigmas[i + 1]) * x0.double() + sigmas[i + 1] * noise.double()
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=tol)
        if i > 0:  # the corrected current sample is on the path too
            expected = (1 - sigmas[i]) * x0.double() + sigmas[i] * noise.double()
            torch.testing.assert_close(solver.last_sample.double(), expected, rtol=0, atol=tol)
    torch.testing.assert_close(x, x0, rtol=0, atol=tol)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_warm_up_and_final_step(order):
    """Step 1 is an Euler step x + (σ1 - σ0)·v whatever the order, step 2 is not; the last step
    returns the x0 prediction of the *uncorrected* incoming sample (spec 15.12)."""
    steps = 10
    gen = torch.Generator().manual_seed(2)
    solver = FlowUniPCMultistepScheduler(solver_order=order)
    solver.set_timesteps(steps, shift=5.0)
    sigmas = solver.sigmas.double()
    x = randn(gen)
    for i, t in enumerate(solver.timesteps):
        v = randn(gen)
        out = solver.step(v, t, x)[0]
        assert torch.isfinite(out).all()
        euler = x.double() + (sigmas[i + 1] - sigmas[i]) * v.double()
        if i == 0:
            assert solver.this_order == 1
            torch.testing.assert_close(out.double(), euler, rtol=0, atol=1e-5)
        if i == 1:
            assert solver.this_order == 2
            assert (out.double() - euler).abs().max() > 1e-3
        if i == steps - 1:
            assert solver.this_order == 1
            assert torch.equal(out, x - solver.sigmas[i] * v)
            corrected_x0 = solver.last_sample - solver.sigmas[i] * v
            assert (out - corrected_x0).abs().max() > 1e-3  # the corrector did move the sample
        x = out


@pytest.mark.parametrize(
    "steps, shift, order", [(10, 5.0, 1), (10, 5.0, 2), (10, 5.0, 3), (20, 12.0, 2), (20, 3.0, 3)]
)
def test_unipc_matches_diffusers(steps, shift, order):
    """Parity with diffusers' UniPCMultistepScheduler (flow prediction, bh2) given the spec's sigmas.

    With use_flow_sigmas and flow_shift=1 diffusers takes the float64 sigmas as they are; its sigma
    and timestep tables must equal ours. Observed: max relative error 0 (bitwise).
    """
    ours = FlowUniPCMultistepScheduler(solver_order=order)
    ours.set_timesteps(steps, device="cpu", shift=shift)
    timesteps = ours.timesteps
    reference = UniPCMultistepScheduler(
        solver_order=order,
        prediction_type="flow_prediction",
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        flow_shift=1.0,
    )
    reference.set_timesteps(sigmas=spec_sigmas(steps, shift), device="cpu")
    assert torch.equal(ours.sigmas, reference.sigmas) and torch.equal(timesteps, reference.timesteps)

    gen = torch.Generator().manual_seed(steps + order)
    x_ours = x_ref = randn(gen)
    worst = 0.0
    for t in timesteps:
        v = randn(gen)  # random model outputs, the same for both
        x_ours = ours.step(v, t, x_ours, return_dict=False)[0]
        x_ref = reference.step(v, t, x_ref, return_dict=False)[0]
        worst = max(worst, rel_err(x_ours, x_ref))
    print(f"unipc steps={steps} order={order}: max relative error vs diffusers {worst:.3g}")
    assert worst <= 1e-6
