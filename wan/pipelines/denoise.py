"""The one denoise loop every task runs, and `GuidedModel`: the model_fn holding CFG and the expert switch.

    for t in timesteps:
        v = model_fn(latents, t)                 # expert = high if t >= boundary else low; CFG
        latents = solver.step(v, t, latents)
        latents = reimpose(latents)              # TI2V image mode: latent frame 0 back to the image

The solver sees only (velocity, t, sample); the model knows nothing of guidance (spec 7).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

HIGH, LOW, DENSE = 'high', 'low', 'dit'  # expert names; DENSE is the single model of TI2V-5B


@dataclass
class DenoiseInputs:
    """What a task's prepare_*() hands to the loop."""
    latents: torch.Tensor                     # [C, T, h, w] fp32: the starting latent (noise, image imposed)
    seq_len: int                              # tokens, rounded up to the sequence-parallel degree
    size: tuple[int, int]                     # output (width, height) in pixels
    y: torch.Tensor | None = None             # I2V conditioning [4 + z_dim, T, h, w]
    token_mask: torch.Tensor | None = None    # [T, h/2, w/2]: per-token timestep factor, 0 = frame given
    reimpose: Callable[[torch.Tensor], torch.Tensor] | None = None  # applied after every step
    condition: torch.Tensor | None = None     # [3, H, W]: the conditioning image as prepared (I2V, TI2V)


@dataclass
class StepInfo:
    """Passed to the per-step callback after each solver step."""
    index: int          # 0-based step just finished
    total: int
    timestep: int
    expert: str
    seconds: float      # wall time of this step
    latents: torch.Tensor


class GenerationInterrupted(Exception):
    """Ctrl-C during sampling; carries how far it got."""

    def __init__(self, step: int, total: int):
        super().__init__(f'interrupted during step {step + 1}/{total}')
        self.step, self.total = step, total


def seq_len_for(latent_shape: tuple[int, ...], patch_size: tuple[int, int, int], sp_size: int = 1) -> int:
    """Token count of a [C, T, h, w] latent, rounded up to a multiple of `sp_size` (spec 3.8)."""
    _, t, h, w = latent_shape
    tokens = t // patch_size[0] * (h // patch_size[1]) * (w // patch_size[2])
    return -(-tokens // sp_size) * sp_size


def expert_for(timestep: int, boundary: float | None) -> str:
    """A14B picks the high-noise expert while t >= boundary (boundary = config.boundary * 1000, spec 15.10)."""
    if boundary is None:
        return DENSE
    return HIGH if timestep >= boundary else LOW


class GuidedModel:
    """model_fn(latents, t) -> velocity: expert choice and classifier-free guidance around the DiT.

    Two separate forwards per step (cond, then uncond; never batched), `uncond + g * (cond - uncond)`
    with g = guide_scale[1] on the high-noise expert and guide_scale[0] otherwise (spec 7.1).
    `activate(name)` returns the expert, made resident on the device (placement decides how).
    `cfg_parallel(run, context, context_null) -> (cond, uncond)` runs the two passes on two groups
    of ranks instead (wan.distributed.cfg_parallel).
    """

    def __init__(self, activate: Callable[[str], nn.Module], *, context: torch.Tensor,
                 context_null: torch.Tensor, seq_len: int, guide_scale: tuple[float, float],
                 boundary: float | None = None, y: torch.Tensor | None = None,
                 token_mask: torch.Tensor | None = None, autocast_dtype: torch.dtype | None = None,
                 cfg_parallel: Callable | None = None):
        self.activate = activate
        self.context, self.context_null = context, context_null
        self.seq_len = seq_len
        self.guide_scale = guide_scale
        self.boundary = boundary
        self.y = y
        # per-token timesteps are built on the host, so the model's forward never waits for the GPU
        self.token_mask_host = None if token_mask is None else token_mask.cpu()
        self.autocast_dtype = autocast_dtype
        # wan.distributed.CfgParallel: each half of the ranks runs one of the two passes, then they swap
        self.cfg_parallel = cfg_parallel

    def expert_for(self, t: torch.Tensor) -> str:
        return expert_for(t.item(), self.boundary)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """[1] (one t for all tokens) or, with a token mask, [1, seq_len] (spec 3.7); on the CPU."""
        t = t.cpu()
        if self.token_mask_host is None:
            return torch.stack([t])
        per_token = (self.token_mask_host * t).flatten()
        padding = per_token.new_ones(self.seq_len - per_token.numel()) * t
        return torch.cat([per_token, padding]).unsqueeze(0)

    def __call__(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        name = self.expert_for(t)
        model = self.activate(name)
        scale = self.guide_scale[1] if name == HIGH else self.guide_scale[0]
        timestep = self.timestep(t)
        y = None if self.y is None else [self.y]
        autocast = (torch.autocast(latents.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())

        def run(context: torch.Tensor) -> torch.Tensor:
            return model([latents], t=timestep, context=[context], seq_len=self.seq_len, y=y)[0]
        with autocast:
            if self.cfg_parallel is None:
                cond, uncond = run(self.context), run(self.context_null)
            else:
                cond, uncond = self.cfg_parallel(run, self.context, self.context_null)
        return uncond + scale * (cond - uncond)


def denoise(model_fn: GuidedModel, latents: torch.Tensor, solver, timesteps: torch.Tensor, *,
            generator: torch.Generator | None = None,
            reimpose: Callable[[torch.Tensor], torch.Tensor] | None = None,
            callback: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
    """Run the sampler from `latents` over `timesteps`; Ctrl-C raises GenerationInterrupted."""
    total = len(timesteps)
    index = 0
    try:
        for index, t in enumerate(timesteps):
            start = time.perf_counter()
            velocity = model_fn(latents, t)
            latents = solver.step(velocity[None], t, latents[None], return_dict=False,
                                  generator=generator)[0][0]
            if reimpose is not None:
                latents = reimpose(latents)
            if callback is not None:
                if latents.is_cuda:
                    torch.cuda.synchronize(latents.device)
                callback(StepInfo(index, total, int(t.item()), model_fn.expert_for(t),
                                  time.perf_counter() - start, latents))
    except KeyboardInterrupt:
        raise GenerationInterrupted(index, total) from None
    return latents
