"""DPM++ flow solver, the shared schedule, and the solver factory (spec 8.1, 8.3, 8.4, 15.8, 15.10-11)."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from wan.errors import UserError
from wan.utils.fm_solvers import FlowDPMSolverMultistepScheduler, get_sampling_sigmas, retrieve_timesteps
from wan.utils.solvers import SOLVERS, build_solver, expert_split

SHAPE = (1, 4, 2, 8, 8)  # [B, C, T, H, W], as the pipelines call step(v[None], t, x[None])


def randn(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(SHAPE, generator=gen)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


# spec 8.4, dpm++ rows: (steps, shift, boundary, first 6 t, last 4 t, (n_high, n_low))
DPM_TABLE = [
    (40, 12.0, 0.875, [1000, 997, 995, 993, 990, 988], [571, 493, 387, 235], (26, 14)),  # t2v-A14B
    (40, 5.0, 0.9, [1000, 994, 989, 984, 978, 972], [357, 288, 208, 113], (15, 25)),  # i2v-A14B
]


@pytest.mark.parametrize("steps, shift, boundary, first, last, split", DPM_TABLE)
def test_dpm_schedule_matches_spec_table(steps, shift, boundary, first, last, split):
    solver, timesteps = build_solver("dpm++", steps, shift, "cpu")
    assert timesteps.dtype == torch.int64 and timesteps.shape == (steps,)
    assert solver.sigmas.dtype == torch.float32 and solver.sigmas.shape == (steps + 1,)
    assert solver.sigmas[0].item() == 1.0 and solver.sigmas[-1].item() == 0.0
    assert timesteps[:6].tolist() == first
    assert timesteps[-4:].tolist() == last
    assert expert_split(timesteps, boundary) == split


def test_dpm_shift_applied_once_and_timesteps_truncate():
    steps, shift = 40, 5.0
    solver, timesteps = build_solver("dpm++", steps, shift, "cpu")
    # spec 8.1 / 15.11: shift(linspace(1, 0, N+1)[:N]) in float64; set_timesteps adds shift=1 only.
    sigma = np.linspace(1, 0, steps + 1)[:steps]
    shifted = shift * sigma / (1 + (shift - 1) * sigma)
    assert torch.equal(solver.sigmas, torch.tensor([*shifted, 0.0], dtype=torch.float32))
    assert timesteps.tolist() == [int(s * 1000) for s in shifted]  # truncation toward zero


def test_retrieve_timesteps_uses_sigmas_as_given():
    solver = FlowDPMSolverMultistepScheduler()
    sigmas = get_sampling_sigmas(12, 3.0)
    timesteps, count = retrieve_timesteps(solver, device="cpu", sigmas=sigmas)
    assert count == 12 and timesteps is solver.timesteps
    assert torch.equal(solver.sigmas[:-1], torch.from_numpy(sigmas).float())


def test_expert_split_boundary_is_inclusive():
    assert expert_split(torch.tensor([901, 900, 899]), 0.9) == (2, 1)
    assert expert_split([875, 874], 0.875) == (1, 1)


def test_build_solver_rejects_unknown_name_and_zero_steps():
    with pytest.raises(UserError, match=r"unknown sample solver 'euler': choose one of unipc, dpm\+\+"):
        build_solver("euler", 40, 5.0, "cpu")
    assert SOLVERS == ("unipc", "dpm++")
    with pytest.raises(UserError, match="at least 1"):
        build_solver("dpm++", 0, 5.0, "cpu")


def test_dpm_rejects_bad_order_and_misuse():
    with pytest.raises(ValueError, match="solver_order"):
        FlowDPMSolverMultistepScheduler(solver_order=4)
    solver = FlowDPMSolverMultistepScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        solver.step(x, 999, x)
    solver.set_timesteps(sigmas=get_sampling_sigmas(10, 5.0))
    with pytest.raises(ValueError, match="not in this solver's schedule"):
        solver.step(x, 12345, x)


@pytest.mark.parametrize("steps, shift", [(40, 12.0), (10, 1.0)])
def test_dpm_straight_path_is_exact(steps, shift):
    """v = noise - x0 exactly: every sample lies on (1-σ)·x0 + σ·noise, the last one is x0."""
    gen = torch.Generator().manual_seed(1)
    x0, noise = randn(gen), randn(gen)
    tol = 8 * torch.finfo(torch.float32).eps * max(x0.abs().max(), noise.abs().max()).item()
    solver, timesteps = build_solver("dpm++", steps, shift, "cpu")
    sigmas = solver.sigmas.double()
    x = noise.clone()  # σ0 = 1
    for i, t in enumerate(timesteps):
        x = solver.step(noise - x0, t, x, return_dict=False)[0]
        expected = (1 - sigmas[i + 1]) * x0.double() + sigmas[i + 1] * noise.double()
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=tol)
    torch.testing.assert_close(x, x0, rtol=0, atol=tol)


def test_dpm_first_two_and_last_steps_are_first_order():
    """σ0 = 1 makes steps 1 and 2 Euler steps x + (σ_next - σ)·v (no NaN); the last returns x - σ·v."""
    steps = 12
    gen = torch.Generator().manual_seed(2)
    solver, timesteps = build_solver("dpm++", steps, 5.0, "cpu")
    sigmas = solver.sigmas.double()
    x = randn(gen)
    for i, t in enumerate(timesteps):
        v = randn(gen)
        out = solver.step(v, t, x).prev_sample
        assert torch.isfinite(out).all()
        euler = x.double() + (sigmas[i + 1] - sigmas[i]) * v.double()
        if i in (0, 1):
            torch.testing.assert_close(out.double(), euler, rtol=0, atol=1e-5)
        elif i == 2:  # the midpoint term is active from here on
            assert (out.double() - euler).abs().max() > 1e-3
        if i == steps - 1:
            assert torch.equal(out, x - solver.sigmas[i] * v)
        x = out


def run_against_diffusers(solver, reference, timesteps, gen) -> float:
    x_ours = x_ref = randn(gen)
    worst = 0.0
    for t in timesteps:
        v = randn(gen)  # random model outputs, the same for both
        x_ours = solver.step(v, t, x_ours, return_dict=False)[0]
        x_ref = reference.step(v, t, x_ref, return_dict=False)[0]
        worst = max(worst, rel_err(x_ours, x_ref))
    return worst


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("steps, shift", [(10, 5.0), (20, 12.0)])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_matches_diffusers(steps, shift, order):
    """Parity with diffusers' DPMSolverMultistepScheduler (flow prediction, flow sigmas).

    diffusers' flow schedule starts at shift(0.999), not at 1, and cannot take custom sigmas, so
    its sigma/timestep tables are replaced by the spec's (float32 sigmas, int64 truncated t) before
    stepping; the step math then runs on the same state. Observed: max relative error 0 (bitwise).
    """
    ours = FlowDPMSolverMultistepScheduler(solver_order=order)
    timesteps, _ = retrieve_timesteps(ours, device="cpu", sigmas=get_sampling_sigmas(steps, shift))
    sigma = np.linspace(1, 0, steps + 1)[:steps]
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    reference = DPMSolverMultistepScheduler(
        solver_order=order,
        prediction_type="flow_prediction",
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        flow_shift=1.0,
    )
    reference.set_timesteps(steps)
    reference.sigmas = torch.from_numpy(np.append(sigma, 0.0).astype(np.float32))
    reference.timesteps = torch.from_numpy(sigma * 1000).to(torch.int64)
    assert torch.equal(ours.sigmas, reference.sigmas) and torch.equal(timesteps, reference.timesteps)

    worst = run_against_diffusers(ours, reference, timesteps, torch.Generator().manual_seed(steps + order))
    print(f"dpm++ steps={steps} order={order}: max relative error vs diffusers {worst:.3g}")
    assert worst <= 1e-6


def test_set_timesteps_resets_multistep_state():
    gen = torch.Generator().manual_seed(3)
    x, vs = randn(gen), [randn(gen) for _ in range(8)]
    solver = FlowDPMSolverMultistepScheduler()
    results = []
    for _ in range(2):
        timesteps, _ = retrieve_timesteps(solver, sigmas=get_sampling_sigmas(8, 5.0))
        out = x
        for t, v in zip(timesteps, vs):
            out = solver.step(v, t, out)[0]
        results.append(out)
    assert torch.equal(results[0], results[1])
