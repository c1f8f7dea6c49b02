"""Flow-matching DPM-Solver++ and the schedule both flow solvers share (spec 8.1, 8.3).

DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095): multistep data-prediction solver, order 2 by the
midpoint rule. On the rectified-flow path x_σ = (1-σ)·x0 + σ·noise we have α = 1-σ, the log-SNR
λ(σ) = log(1-σ) - log σ, and the model's velocity v ≈ noise - x0 gives x0 = x - σ·v.

Matches the reference `FlowDPMSolverMultistepScheduler` (ODE `dpmsolver++`, `midpoint`,
`final_sigmas_type='zero'`) step for step: scalars are float32 0-d CPU tensors, the sample math is
float32, and the step index is found from the first timestep as the reference does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class StepOutput(NamedTuple):
    """`solver.step(...)[0]` and `solver.step(...).prev_sample` both give the next sample."""

    prev_sample: Tensor


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """σ' = shift·σ / (1 + (shift-1)·σ) (spec 8.1); shift = 1 is the exact identity."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def get_sampling_sigmas(steps: int, shift: float) -> np.ndarray:
    """The DPM++ path's float64 sigmas: linspace(1, 0, steps+1)[:steps], shifted; starts at exactly 1."""
    return shift_sigmas(np.linspace(1, 0, steps + 1)[:steps], shift)


def retrieve_timesteps(
    solver: FlowMultistepSolver,
    num_inference_steps: int | None = None,
    device: torch.device | str | None = None,
    sigmas: np.ndarray | None = None,
) -> tuple[Tensor, int]:
    """Set the solver's schedule from `sigmas` (used as given) or a step count; -> (timesteps, count)."""
    solver.set_timesteps(num_inference_steps, device=device, sigmas=sigmas)
    return solver.timesteps, len(solver.timesteps)


def log_snr(sigma: Tensor) -> Tensor:
    """λ(σ) = log(1-σ) - log σ: -inf at σ = 1, +inf at σ = 0 (spec 8.2)."""
    return torch.log(1 - sigma) - torch.log(sigma)


class FlowMultistepSolver:
    """Schedule, step index and x0 history shared by the flow UniPC and DPM++ solvers (spec 8.1).

    After `set_timesteps`: `timesteps` (int64, on the requested device) is what the model sees;
    `sigmas` (float32, CPU, N+1 values, last 0) is what the update uses.
    """

    def __init__(
        self, num_train_timesteps: int = 1000, solver_order: int = 2, lower_order_final: bool = True
    ) -> None:
        if solver_order < 1:
            raise ValueError(f"solver_order must be >= 1, got {solver_order}")
        self.num_train_timesteps = num_train_timesteps
        self.solver_order = solver_order
        self.lower_order_final = lower_order_final
        # The training table 1 - linspace(1, 1/T, T)[::-1] is stored in float32: [0.999, ..., 0].
        self.sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
        self.sigma_min = 0.0
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.model_outputs: list[Tensor | None] = [None] * self.solver_order  # x0 predictions, newest last
        self.lower_order_nums = 0  # steps taken so far, capped at solver_order (multistep warm-up)
        self._step_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        sigmas: np.ndarray | None = None,
        shift: float = 1.0,
    ) -> None:
        """Build the schedule and reset the multistep state (spec 8.1).

        Without `sigmas`: linspace(0.999, 0, N+1)[:-1] (float64). `shift` is applied to either.
        """
        if sigmas is None:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or sigmas")
            sigmas = np.linspace(self.sigma_max, self.sigma_min, num_inference_steps + 1)[:-1]
        sigmas = shift_sigmas(np.asarray(sigmas), shift)
        # The model sees int64 truncations of σ·T (999, not 999.8); the update uses float σ (spec 15.8).
        timesteps = torch.from_numpy(sigmas * self.num_train_timesteps)
        self.timesteps = timesteps.to(device=device, dtype=torch.int64)
        self.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
        self.num_inference_steps = len(sigmas)
        self._reset()

    def _begin_step(self, timestep: int | Tensor) -> int:
        """The current index; on the first step, found from `timestep` (2nd match if repeated)."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps before step")
        if self._step_index is None:
            t = torch.as_tensor(timestep, device=self.timesteps.device)
            matches = (self.timesteps == t).nonzero().flatten()
            if len(matches) == 0:
                raise ValueError(f"timestep {int(t)} is not in this solver's schedule")
            self._step_index = int(matches[1 if len(matches) > 1 else 0])
        return self._step_index

    def _push(self, x0: Tensor) -> None:
        self.model_outputs = self.model_outputs[1:] + [x0]

    def _end_step(self) -> None:
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        self._step_index += 1


class FlowDPMSolverMultistepScheduler(FlowMultistepSolver):
    """DPM-Solver++ (order 1-3, midpoint 2nd order) for flow matching (spec 8.3).

    The first sample sits at σ = 1 (α = 0, λ = -inf): the first update degenerates to σ_t·x + α_t·x0,
    and on the second step the infinite previous interval zeroes the second-order term, so both
    steps are first order with no NaN. The last step (to σ = 0) is first order and returns x0.
    """

    def __init__(
        self, num_train_timesteps: int = 1000, solver_order: int = 2, lower_order_final: bool = True
    ) -> None:
        if solver_order > 3:
            raise ValueError(f"DPM-Solver++ supports solver_order 1, 2 or 3, got {solver_order}")
        super().__init__(num_train_timesteps, solver_order, lower_order_final)

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        return_dict: bool = False,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One update from σ[i] to σ[i+1] given the velocity at `sample`.

        `return_dict` and `generator` exist for call-site compatibility with the reference; the
        ODE solver draws no noise, and the result is a tuple that also has `.prev_sample`.
        """
        i = self._begin_step(timestep)
        n = len(self.timesteps)
        last = i == n - 1  # always first order: the final σ is 0
        second_last_lowered = i == n - 2 and self.lower_order_final and n < 15
        x0 = sample - self.sigmas[i] * model_output
        self._push(x0)
        sample = sample.to(torch.float32)
        if self.solver_order == 1 or self.lower_order_nums < 1 or last:
            prev = self._first_order(sample)
        elif self.solver_order == 2 or self.lower_order_nums < 2 or second_last_lowered:
            prev = self._second_order(sample)
        else:
            prev = self._third_order(sample)
        self._end_step()
        return StepOutput(prev.to(x0.dtype))

    def _lambdas(self, count: int) -> tuple[list[Tensor], list[Tensor]]:
        """σ and λ at t = i+1, s0 = i, s1 = i-1, ... (`count` values)."""
        i = self._step_index
        sigmas = [self.sigmas[i + 1 - k] for k in range(count)]
        return sigmas, [log_snr(s) for s in sigmas]

    def _first_order(self, x: Tensor) -> Tensor:
        (sigma_t, sigma_s), (lam_t, lam_s) = self._lambdas(2)
        h = lam_t - lam_s
        return (sigma_t / sigma_s) * x - ((1 - sigma_t) * (torch.exp(-h) - 1.0)) * self.model_outputs[-1]

    def _second_order(self, x: Tensor) -> Tensor:
        (sigma_t, sigma_s0, _), (lam_t, lam_s0, lam_s1) = self._lambdas(3)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        r0 = h_0 / h
        d1 = (1.0 / r0) * (m0 - m1)  # 0 when the previous step started at σ = 1 (r0 = inf)
        phi = (1 - sigma_t) * (torch.exp(-h) - 1.0)
        return (sigma_t / sigma_s0) * x - phi * m0 - 0.5 * phi * d1

    def _third_order(self, x: Tensor) -> Tensor:
        (sigma_t, sigma_s0, _, _), (lam_t, lam_s0, lam_s1, lam_s2) = self._lambdas(4)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lam_t - lam_s0, lam_s0 - lam_s1, lam_s1 - lam_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        alpha_t, em1 = 1 - sigma_t, torch.exp(-h) - 1.0
        return (
            (sigma_t / sigma_s0) * x
            - (alpha_t * em1) * m0
            + (alpha_t * (em1 / h + 1.0)) * d1
            - (alpha_t * ((em1 + h) / h**2 - 0.5)) * d2
        )
