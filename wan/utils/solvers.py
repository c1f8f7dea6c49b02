"""Build a flow-matching solver and its schedule by its command-line name (spec 7, 8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wan.errors import UserError
from wan.utils.fm_solvers import FlowDPMSolverMultistepScheduler, get_sampling_sigmas, retrieve_timesteps
from wan.utils.fm_solvers_unipc import FlowUniPCMultistepScheduler

SOLVERS = ("unipc", "dpm++")

Solver = FlowUniPCMultistepScheduler | FlowDPMSolverMultistepScheduler


def build_solver(
    name: str, steps: int, shift: float, device: torch.device | str | None, num_train_timesteps: int = 1000
) -> tuple[Solver, Tensor]:
    """-> (solver, timesteps: int64 [steps] on `device`), built as the reference pipelines do (spec 7).

    The shift is applied exactly once (spec 15.11): UniPC shifts linspace(0.999, 0, N+1)[:-1]
    (first t = 999); DPM++ shifts linspace(1, 0, N+1)[:N] (first t = 1000).
    """
    if name not in SOLVERS:
        raise UserError(f"unknown sample solver {name!r}: choose one of {', '.join(SOLVERS)}")
    if steps < 1:
        raise UserError(f"the number of sampling steps must be at least 1, got {steps}")
    if name == "unipc":
        solver = FlowUniPCMultistepScheduler(num_train_timesteps)
        solver.set_timesteps(steps, device=device, shift=shift)
        return solver, solver.timesteps
    solver = FlowDPMSolverMultistepScheduler(num_train_timesteps)
    timesteps, _ = retrieve_timesteps(solver, device=device, sigmas=get_sampling_sigmas(steps, shift))
    return solver, timesteps


def expert_split(
    timesteps: Tensor | Sequence[int], boundary: float, num_train_timesteps: int = 1000
) -> tuple[int, int]:
    """(n_high, n_low): steps for the high-noise expert (t >= boundary·T, spec 15.10) and the rest."""
    timesteps = torch.as_tensor(timesteps)
    n_high = int((timesteps >= boundary * num_train_timesteps).sum())
    return n_high, len(timesteps) - n_high
