"""Triton kernels for the DiT's memory-bound fp32 islands on CUDA. Imported lazily (needs triton);
`model.py` keeps the plain PyTorch path for every other case.

`rms_norm_rope(x, weight, freqs, eps)`: self-attention's q/k RMSNorm followed by RoPE (spec 3.5),
one read and one write of x instead of the several passes PyTorch (or inductor) makes. It rounds
where the reference rounds: the normalised row to x's half type, the weight product to the half
type when the weight is one, the rotation computed in fp32 and rounded once to x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rms_norm_rope_kernel(x_ptr, weight_ptr, freqs_ptr, out_ptr, tokens_per_sample, freqs_sample_stride,
                          eps, C: tl.constexpr, HALF_HEAD: tl.constexpr, BLOCK: tl.constexpr,
                          HALF_WEIGHT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # one token: C channels = heads x head_dim, as pairs (2p, 2p+1)
    pair = tl.arange(0, BLOCK)
    mask = pair < C // 2
    offsets = 2 * pair[:, None] + tl.arange(0, 2)[None, :]  # [BLOCK, 2], contiguous in memory
    x = tl.load(x_ptr + row * C + offsets, mask=mask[:, None], other=0.0)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(tl.sum(xf * xf, axis=1), axis=0) / C + eps)
    y = (xf * rstd).to(x.dtype).to(tl.float32)  # F.rms_norm(x.float()).type_as(x)
    w = tl.load(weight_ptr + offsets, mask=mask[:, None], other=0.0)
    y = y * w.to(tl.float32)
    if HALF_WEIGHT:  # half * half rounds to the half type; an fp32 weight keeps the product fp32
        y = y.to(x.dtype).to(tl.float32)
    even, odd = tl.split(y)
    # RoPE table row of this token: (cos, sin) per pair of the head dim, the same for every head
    sample = row // tokens_per_sample
    token = row % tokens_per_sample
    angle = freqs_ptr + sample * freqs_sample_stride + token * (2 * HALF_HEAD) + 2 * (pair % HALF_HEAD)
    cos = tl.load(angle, mask=mask, other=1.0)
    sin = tl.load(angle + 1, mask=mask, other=0.0)
    out = tl.join(even * cos - odd * sin, even * sin + odd * cos)
    tl.store(out_ptr + row * C + offsets, out.to(out_ptr.dtype.element_ty), mask=mask[:, None])


@torch.library.custom_op('wan::rms_norm_rope', mutates_args=())
def rms_norm_rope(x: Tensor, weight: Tensor, freqs: Tensor, eps: float) -> Tensor:
    """x [B, L, C] half type (contiguous), weight [C], freqs fp32 [B or 1, L, 1, D/2, 2] (cos, sin)
    -> RoPE(RMSNorm(x) * weight) [B, L, C] in x's dtype."""
    batch, tokens, channels = x.shape
    half_head = freqs.size(-2)
    assert x.is_contiguous() and freqs.is_contiguous() and freqs.size(1) == tokens
    assert freqs.dtype == torch.float32 and channels % (2 * half_head) == 0
    out = torch.empty_like(x)
    block = triton.next_power_of_2(channels // 2)
    _rms_norm_rope_kernel[(batch * tokens,)](
        x, weight, freqs, out, tokens, freqs.stride(0) if freqs.size(0) > 1 else 0, eps,
        C=channels, HALF_HEAD=half_head, BLOCK=block, HALF_WEIGHT=weight.dtype == x.dtype,
        num_warps=8 if block <= 2048 else 16)
    return out


@rms_norm_rope.register_fake
def _(x: Tensor, weight: Tensor, freqs: Tensor, eps: float) -> Tensor:
    return torch.empty_like(x)
