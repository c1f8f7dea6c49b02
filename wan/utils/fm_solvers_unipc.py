"""Flow-matching UniPC, the default solver (spec 8.2).

UniPC (Zhao et al. 2023, arXiv:2302.04867): a multistep predictor (UniP) plus a corrector (UniC)
that reuses the next model evaluation, here the B(h) = e^h - 1 ("bh2") variant on x0 predictions.
On the flow path α = 1-σ, λ(σ) = log(1-σ) - log σ and x0 = x - σ·v.

Matches the reference `FlowUniPCMultistepScheduler` (predict_x0, bh2, lower_order_final, no
disabled corrector steps) step for step: scalars are float32 0-d CPU tensors, the sample math is in
the sample's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wan.utils.fm_solvers import FlowMultistepSolver, StepOutput, log_snr


class FlowUniPCMultistepScheduler(FlowMultistepSolver):
    """UniPC-p with order warm-up (order 1 on the first step) and order 1 on the last step.

    Each step: x0 from the incoming (uncorrected) sample; UniC corrects that sample with the new x0
    (from the second step on); UniP predicts the next sample from the corrected one. The final step
    lands on σ = 0 where the update returns the x0 prediction itself (spec 15.12).
    """

    def _reset(self) -> None:
        super()._reset()
        self.last_sample: Tensor | None = None  # the sample the last predictor started from
        self.this_order: int | None = None  # the order the last predictor used

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
        result is a tuple that also has `.prev_sample`.
        """
        i = self._begin_step(timestep)
        x0 = sample - self.sigmas[i] * model_output
        if i > 0 and self.last_sample is not None:
            sample = self._update(self.last_sample, i, self.this_order, x0_at_target=x0)
        self._push(x0)
        order = self.solver_order
        if self.lower_order_final:
            order = min(order, len(self.timesteps) - i)
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev = self._update(sample, i + 1, self.this_order)
        self._end_step()
        return StepOutput(prev)

    def _update(self, x: Tensor, target: int, order: int, x0_at_target: Tensor | None = None) -> Tensor:
        """UniP (predictor) or, given the x0 prediction at the target, UniC (corrector), bh2.

        Moves `x` from σ[target-1] to σ[target] using the newest `order` x0 predictions in
        `model_outputs` (newest at σ[target-1]); k-th older sits at σ[target-1-k].
        """
        s0 = target - 1
        sigma_t, sigma_s0 = self.sigmas[target], self.sigmas[s0]
        alpha_t = 1 - sigma_t
        lam_s0 = log_snr(sigma_s0)
        h = log_snr(sigma_t) - lam_s0
        m0 = self.model_outputs[-1]
        rks, d1s = [], []
        for k in range(1, order):
            rk = (log_snr(self.sigmas[s0 - k]) - lam_s0) / h
            rks.append(rk)
            d1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        rks.append(torch.ones(()))
        hh = -h
        h_phi_1 = torch.expm1(hh)  # h·φ1(h) = e^h - 1, with h -> -h for the x0 form
        b_h = torch.expm1(hh)  # B(h) for bh2
        # On the last step σ_t = 0: λ_t = +inf, h_phi_1 = -1, σ_t/σ_s0 = 0, so this is m0 exactly.
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0

        if x0_at_target is None:  # predictor
            if order == 1:
                return x_t.to(x.dtype)
            if order == 2:
                rhos = torch.tensor([0.5])
            else:
                rhos = _solve_rhos(rks, hh, h_phi_1, b_h, order, predictor=True)
            res = _weighted_sum(rhos.to(x.dtype), d1s)
        else:  # corrector: the last coefficient weighs the new x0 against m0
            if order == 1:
                rhos = torch.tensor([0.5])
            else:
                rhos = _solve_rhos(rks, hh, h_phi_1, b_h, order, predictor=False)
            rhos = rhos.to(x.dtype)
            res = _weighted_sum(rhos[:-1], d1s) + rhos[-1] * (x0_at_target - m0)
        return (x_t - alpha_t * b_h * res).to(x.dtype)


def _solve_rhos(
    rks: list[Tensor], hh: Tensor, h_phi_1: Tensor, b_h: Tensor, order: int, predictor: bool
) -> Tensor:
    """Solve R·ρ = b, R[k] = r^k, b[k] = h_phi_{k+1}·(k+1)!/B(h), h_phi by its recursion (spec 8.2).

    The predictor drops the last row and column (it has no model output at the target yet).
    """
    r = torch.stack(rks)
    rows, b = [], []
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    for k in range(1, order + 1):
        rows.append(torch.pow(r, k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = torch.stack(rows), torch.stack(b)
    if predictor:
        R, b = R[:-1, :-1], b[:-1]
    return torch.linalg.solve(R, b)


def _weighted_sum(weights: Tensor, tensors: list[Tensor]) -> Tensor | int:
    return sum((w * t for w, t in zip(weights, tensors)), 0)
