"""WanModel: the Wan2.2 diffusion transformer (spec 3), single-device PyTorch.

Parameter names equal the official state dict, so released checkpoints load without renaming.
Shape legend: B batch, L tokens (the padded `seq_len`), N heads, D head dim, C model dim (`dim`),
F/H/W latent grid after patching.

Numerics (spec 3.6): the pipelines call the model inside `torch.autocast('cuda', bfloat16)`, so
the linears, convolution and attention run in bf16. The parts named in FP32_ISLANDS always compute
in fp32, whatever the weights' dtype and whatever autocast encloses them: their linears run with
autocast disabled on fp32-cast weights, the rest are elementwise ops on fp32 tensors (which
autocast leaves alone). The residual stream is fp32 from block 0's first gated add on.
On CUDA in a half type two fused paths stand in for PyTorch ops, rounding no more often: the FFN's
GELU in the first matmul's epilogue (`FeedForward`) and self-attention's q/k RMSNorm + RoPE in one
Triton pass each (`kernels.py`, used once it builds on the machine).

Sequence-parallel seams (identity here): after patch embedding every per-token tensor passes
through `self.seq_split(tensor, dim)`, and x passes through `self.seq_gather(tensor, dim)` before
the head; self-attention calls `self.attn_fn`. A multi-GPU wrapper replaces these attributes on an
instance; this file never imports torch.distributed.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError
from ..utils.checkpoint import load_into, read_sharded
from .attention import attention

__all__ = ['WanModel', 'FP32_ISLANDS', 'sinusoidal_embedding_1d', 'rope_tables', 'rope_apply']

# Always computed in fp32 (spec 3.6): the float64 sinusoidal timestep embedding (cast to fp32),
# time_embedding and time_projection, every `modulation` add and modulated norm, the gated
# residual adds, the LayerNorms/RMSNorms (fp32 inside, cast back to the input dtype) and the head.
FP32_ISLANDS = ('sinusoidal_embedding', 'time_embedding', 'time_projection', 'modulation',
                'norm', 'gated_residual', 'head')

MODEL_TYPES = ('t2v', 'i2v', 'ti2v', 's2v')
ROPE_MAX_POSITIONS = 1024  # per axis (spec 3.5)


def fp32_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """`layer(x)` in fp32 even inside a bf16 autocast region (an fp32 island)."""
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float(), layer.bias.float())


@torch.library.custom_op('wan::linear_gelu_tanh', mutates_args=())
def _linear_gelu_tanh(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """gelu_tanh(x @ weight.T + bias) with the GELU in cuBLASLt's matmul epilogue (CUDA only); an
    operator, so that torch.compile calls it as is instead of splitting it back in two."""
    out = torch._addmm_activation(bias, x.flatten(0, -2), weight.t(), use_gelu=True)
    return out.unflatten(0, x.shape[:-1])


@_linear_gelu_tanh.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.size(0))


_kernels = None  # wan.modules.kernels once a CUDA forward has loaded it; False where triton is missing
HALF_DTYPES = (torch.bfloat16, torch.float16)


def _load_kernels(device: torch.device) -> None:
    """Import the Triton kernels once (eagerly, before a compiled block is traced) and run them on
    a small input, so that a Triton that cannot build them means the PyTorch path, not an error."""
    global _kernels
    if _kernels is None:
        try:
            from . import kernels
            x = torch.randn(1, 2, 256, device=device, dtype=torch.bfloat16)
            freqs = torch.view_as_real(torch.ones(1, 2, 1, 64, dtype=torch.complex64, device=device))
            kernels.rms_norm_rope(x, torch.ones(256, device=device, dtype=torch.bfloat16), freqs, 1e-6)
            _kernels = kernels
        except ImportError:
            _kernels = False
        except Exception as exc:  # noqa: BLE001  (installed but unusable here: say so once)
            logging.getLogger(__name__).warning('Triton kernels unusable (%s); using PyTorch ops', exc)
            _kernels = False


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A small host tensor to `device` without waiting: a CUDA copy from pinned memory is queued."""
    if device.type == 'cuda' and tensor.device.type == 'cpu':
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def sinusoidal_embedding_1d(dim: int, position: Tensor) -> Tensor:
    """[len(position), dim] float64: cos then sin of position * 10000^(-k/(dim/2)) (spec 3.3)."""
    half = dim // 2
    position = position.to(torch.float64)
    freq = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, freq)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_tables(head_dim: int, max_positions: int = ROPE_MAX_POSITIONS, theta: float = 10000.0
                ) -> Tensor:
    """[max_positions, head_dim/2] complex64 table: the t/h/w tables side by side (spec 3.5).

    Each axis has its own exponent denominator (44, 42, 42 for head_dim 128). Angles, cos and
    sin are computed in float64 on the CPU, then rounded once to fp32 (complex64).
    """
    axis_dims = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    positions = torch.arange(max_positions, dtype=torch.float64, device='cpu')
    angles = torch.cat([
        torch.outer(positions, 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64,
                                                            device='cpu') / d))
        for d in axis_dims], dim=1)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def rope_apply(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2j], x[2j+1]) of x [B, L, N, D] by per-token angles, in fp32.

    freqs: fp32 [B or 1, L, 1, D/2, 2], (cos, sin) of each angle; rows (1, 0) (padding) leave x
    unchanged.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():  # real arithmetic, one pointwise expression inductor fuses
        cos, sin = freqs[..., :1], freqs[..., 1:]  # (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)
        return (pairs * cos + pairs.flip(-1) * torch.cat([-sin, sin], dim=-1)).flatten(3)
    # eagerly one complex multiply: x[2j] + i x[2j+1] times cos + i sin
    return torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(freqs)).flatten(3)


Runs = list[tuple[int, int, int]]  # (row, start, end): tokens start..end-1 use row `row`


def token_runs(index: Tensor) -> Runs:
    """Runs of consecutive equal entries of index [1, L], the longest first.

    Per-token timesteps take few distinct values in long runs (TI2V: the first latent frame at
    t = 0, every other token at t), so modulation rows are kept once per distinct value.
    """
    row = index[0]
    starts = [0] + (torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()
    ends = starts[1:] + [row.numel()]
    rows = row[starts].tolist()
    return sorted(zip(rows, starts, ends), key=lambda run: run[1] - run[2])


def _by_runs(runs: Runs | None, fn) -> Tensor:
    """fn(tokens, rows) over all tokens; with runs, each run gets its own broadcast row.

    The longest run's row is applied to every token first, then each other run overwrites its
    slice: elementwise the same arithmetic as gathering one row per token, without the gather.
    """
    if runs is None:
        return fn(slice(None), slice(None))
    (row, _, _), *rest = runs
    out = fn(slice(None), slice(row, row + 1))
    for row, start, end in rest:
        out[:, start:end] = fn(slice(start, end), slice(row, row + 1))
    return out


def modulate(x: Tensor, shift: Tensor, scale: Tensor, runs: Runs | None = None) -> Tensor:
    """x * (1 + scale) + shift in fp32 (spec 3.4); shift/scale [B, L or 1, C], or rows per run."""
    return _by_runs(runs, lambda tokens, rows: x[:, tokens] * (1 + scale[:, rows]) + shift[:, rows])


def gated_add(x: Tensor, y: Tensor, gate: Tensor, runs: Runs | None = None) -> Tensor:
    """The gated residual x + y * gate in fp32 (spec 3.4), gate as in `modulate`."""
    return _by_runs(runs, lambda tokens, rows: x[:, tokens] + y[:, tokens] * gate[:, rows])


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, result cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dim in fp32, cast back to the input dtype, then times `weight`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # x * rsqrt(mean(x^2) + eps) in fp32, as one fused kernel
        return F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).type_as(x) * self.weight


class _Projections(nn.Module):
    """q, k, v, o linears and the q/k RMSNorms shared by self- and cross-attention."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        # RMSNorm over the full dim, across heads, before the head split (spec 3.1)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def heads(self, x: Tensor) -> Tensor:
        return x.unflatten(2, (self.num_heads, -1))  # [B, L, C] -> [B, L, N, D]


class WanSelfAttention(_Projections):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.attn_fn = attention  # seam: sequence parallelism substitutes an all-to-all wrapper

    def forward(self, x: Tensor, freqs: Tensor, k_lens: Tensor | None) -> Tensor:
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):  # the cast autocast makes for each of q, k, v, once
            x = x.to(torch.get_autocast_dtype(device_type))
        q, k, v = self.q(x), self.k(x), self.v(x)
        if (_kernels and q.is_cuda and q.dtype in HALF_DTYPES and k.dtype == v.dtype == q.dtype
                and isinstance(self.norm_q, WanRMSNorm) and freqs.is_contiguous()
                and not torch.is_grad_enabled()):  # inference only: the kernel has no backward
            # one Triton pass each for norm + RoPE, rounding where the lines below round
            q = torch.ops.wan.rms_norm_rope(q, self.norm_q.weight, freqs, self.norm_q.eps)
            k = torch.ops.wan.rms_norm_rope(k, self.norm_k.weight, freqs, self.norm_k.eps)
            q, k, v = self.heads(q), self.heads(k), self.heads(v)
        else:
            q, k, v = self.heads(self.norm_q(q)), self.heads(self.norm_k(k)), self.heads(v)
            # q/k in v's dtype: what attention casts them to on CUDA anyway (spec 4), so its output
            # needs no fp32 round trip before `o`
            q, k = rope_apply(q, freqs).type_as(v), rope_apply(k, freqs).type_as(v)
        return self.o(self.attn_fn(q, k, v, k_lens=k_lens).flatten(2))


class WanCrossAttention(_Projections):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """Attends to every context row, the zero-padded ones included (spec 3.3 step 5)."""
        v = self.heads(self.v(context))
        q = self.heads(self.norm_q(self.q(x))).type_as(v)
        k = self.heads(self.norm_k(self.k(context))).type_as(v)
        return self.o(attention(q, k, v).flatten(2))


class FeedForward(nn.Sequential):
    """Linear, tanh GELU, Linear (state-dict keys `0.*` and `2.*`, as the reference's Sequential).

    On CUDA in bf16/fp16, without gradients, the GELU runs in the first matmul's epilogue: one pass
    over the [L, ffn_dim] activation instead of three, rounded to the half type once (after the
    GELU) instead of twice, so closer to the fp32 result than the unfused pair.
    """

    def forward(self, x: Tensor) -> Tensor:
        first, _, second = self
        dtype = torch.get_autocast_dtype('cuda') if torch.is_autocast_enabled('cuda') else x.dtype
        if not x.is_cuda or dtype not in HALF_DTYPES or torch.is_grad_enabled():  # fused: inference only
            return super().forward(x)
        return second(_linear_gelu_tanh(x.to(dtype), first.weight.to(dtype), first.bias.to(dtype)))


class WanAttentionBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True,
                 cross_attn_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = FeedForward(nn.Linear(dim, ffn_dim), nn.GELU(approximate='tanh'), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, e0: Tensor, freqs: Tensor, context: Tensor,
                k_lens: Tensor | None, runs: Runs | None = None) -> Tensor:
        """x [B, L, C]; e0 [B, L or 1, 6, C] fp32, or one row per run of `runs` [1, R, 6, C];
        freqs [B or 1, L, 1, D/2, 2] RoPE cos/sin; context [B, text_len, C] (spec 3.4)."""
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = \
            (self.modulation.float() + e0).unbind(2)  # each [B, L or 1 or R, C] fp32
        y = self.self_attn(modulate(self.norm1(x).float(), shift_msa, scale_msa, runs), freqs, k_lens)
        x = gated_add(x, y, gate_msa, runs)  # fp32 from here on
        x = x + self.cross_attn(self.norm3(x), context)
        y = self.ffn(modulate(self.norm2(x).float(), shift_ffn, scale_ffn, runs))
        return gated_add(x, y, gate_ffn, runs)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor, runs: Runs | None = None) -> Tensor:
        """x [B, L, C], e [B, L or 1, C] or rows per run (the time embedding before projection)
        -> fp32."""
        shift, scale = (self.modulation.float() + e.unsqueeze(2)).unbind(2)
        return fp32_linear(modulate(self.norm(x).float(), shift, scale, runs), self.head)


class WanModel(nn.Module):
    """The DiT of Wan2.2 T2V/I2V (A14B experts) and TI2V-5B; constructor as the reference's."""

    def __init__(self, model_type: str = 't2v', patch_size: tuple[int, int, int] = (1, 2, 2),
                 text_len: int = 512, in_dim: int = 16, dim: int = 2048, ffn_dim: int = 8192,
                 freq_dim: int = 256, text_dim: int = 4096, out_dim: int = 16, num_heads: int = 16,
                 num_layers: int = 32, window_size: tuple[int, int] = (-1, -1), qk_norm: bool = True,
                 cross_attn_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f'model_type must be one of {", ".join(MODEL_TYPES)}, got {model_type!r}')
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f'dim {dim} must split into {num_heads} heads of an even size')
        if tuple(window_size) != (-1, -1):
            raise ValueError(f'only global attention (window_size (-1, -1)) is supported, got {window_size}')
        self.config = dict(model_type=model_type, patch_size=tuple(patch_size), text_len=text_len,
                           in_dim=in_dim, dim=dim, ffn_dim=ffn_dim, freq_dim=freq_dim,
                           text_dim=text_dim, out_dim=out_dim, num_heads=num_heads,
                           num_layers=num_layers, window_size=tuple(window_size),
                           qk_norm=qk_norm, cross_attn_norm=cross_attn_norm, eps=eps)
        for name, value in self.config.items():  # model.dim, model.patch_size, ... as the reference
            setattr(self, name, value)

        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate='tanh'),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList([
            WanAttentionBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
            for _ in range(num_layers)])
        self.head = Head(dim, out_dim, self.patch_size, eps)
        self._rope: dict[torch.device, Tensor] = {}  # RoPE table per device, not in the state dict
        self._rope_rows: tuple[tuple, Tensor] | None = None  # the last rope() request and its result

    # -- sequence-parallel seams: identity on one device ------------------------------------
    def seq_split(self, tensor: Tensor, dim: int) -> Tensor:
        """This device's part of a per-token tensor along `dim`."""
        return tensor

    def seq_gather(self, tensor: Tensor, dim: int) -> Tensor:
        """The whole sequence back from every device's part along `dim`."""
        return tensor

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: list[Tensor], t: Tensor, context: list[Tensor], seq_len: int,
                y: list[Tensor] | None = None) -> list[Tensor]:
        """Velocity for each latent (spec 3.3).

        x: B latents [C_in, F, H, W]; t: [B] or per token [B, seq_len]; context: B text
        embeddings [L_i <= text_len, text_dim]; seq_len: padded token count; y: optional
        conditioning latents concatenated after x on channels. Returns B fp32 [out_dim, F, H, W].
        """
        if self.model_type == 'i2v' and y is None:
            raise ValueError('an i2v model needs the conditioning latents y')
        if y is not None:
            x = [torch.cat([u, v]) for u, v in zip(x, y, strict=True)]

        if x[0].is_cuda:
            _load_kernels(x[0].device)
        patches = [self.patch_embedding(u.unsqueeze(0)) for u in x]  # [1, C, F, H, W] each
        grids = [tuple(p.shape[2:]) for p in patches]
        seq_lens = [math.prod(g) for g in grids]
        if max(seq_lens) > seq_len:
            raise ValueError(f'seq_len {seq_len} is shorter than the {max(seq_lens)} tokens of the input')
        x = torch.cat([F.pad(p.flatten(2).transpose(1, 2), (0, 0, 0, seq_len - n))
                       for p, n in zip(patches, seq_lens)])  # [B, L, C]

        e, e0, index = self.time_embeddings(t, seq_len, x.device)
        context = self.text_embedding(torch.stack([self._pad_context(u) for u in context]))
        freqs = self.rope(grids, seq_len, x.device)  # [B or 1, L, 1, D/2, 2] fp32 cos/sin
        # keys beyond each sample's tokens are masked only when there is padding
        k_lens = torch.tensor(seq_lens, dtype=torch.int32) if min(seq_lens) < seq_len else None

        x = self.seq_split(x, 1)
        freqs = self.seq_split(freqs, 1)
        block_e0 = self.seq_split(e0, 1) if index is None and e0.size(1) > 1 else e0
        block_runs = None if index is None else token_runs(self.seq_split(index, 1))
        for block in self.blocks:
            x = block(x, block_e0, freqs, context, k_lens, block_runs)
        x = self.seq_gather(x, 1)
        return self.unpatchify(self.head(x, e, None if index is None else token_runs(index)), grids)

    def time_embeddings(self, t: Tensor, seq_len: int, device: torch.device | None = None
                        ) -> tuple[Tensor, Tensor, Tensor | None]:
        """e and e0 = time_projection(e) in fp32 on `device` (spec 3.3 step 4), and a row index.

        Each distinct timestep value is embedded once. Returns e [B, 1 or L, C], e0 [B, 1 or L,
        6, C] and None when t is one value per sample or differs between samples; when every
        sample has the same per-token t: one row per distinct value, e [1, R, C], e0 [1, R, 6, C],
        and index [1, L] on the CPU, each token's row.
        The analysis of t runs on the CPU: given t there, the forward never waits for the GPU.
        """
        device = t.device if device is None else device
        t = t.cpu()
        if t.dim() == 1:
            t = t.unsqueeze(1)
        elif t.shape[1] != seq_len:
            raise ValueError(f'per-token timesteps have {t.shape[1]} entries, expected seq_len {seq_len}')
        elif bool((t == t[:, :1]).all()):
            t = t[:, :1]
        values, index = torch.unique(t, return_inverse=True)
        sinusoid = sinusoidal_embedding_1d(self.freq_dim, _to_device(values, device)).float()
        e = fp32_linear(F.silu(fp32_linear(sinusoid, self.time_embedding[0])), self.time_embedding[2])
        e0 = fp32_linear(F.silu(e), self.time_projection[1]).unflatten(1, (6, self.dim))
        if t.size(1) > 1 and bool((t == t[:1]).all()):
            return e[None], e0[None], index[:1]
        index = _to_device(index, device)
        return e[index], e0[index], None

    def rope(self, grids: list[tuple[int, int, int]], seq_len: int, device: torch.device) -> Tensor:
        """fp32 [B or 1, seq_len, 1, D/2, 2] (cos, sin) rotations of the global (unsplit) padded
        sequence.

        Token (f, h, w) of a grid takes row f of the t-table, h of the h-table and w of the
        w-table (positions from 0); padding rows are 1 (no rotation). The last result is kept:
        every step of a generation asks for the same one.
        """
        key = (tuple(grids), seq_len, device)
        if self._rope_rows is None or self._rope_rows[0] != key:
            self._rope_rows = key, self._build_rope(grids, seq_len, device)
        return self._rope_rows[1]

    def _build_rope(self, grids: list[tuple[int, int, int]], seq_len: int, device: torch.device) -> Tensor:
        if device not in self._rope:
            self._rope[device] = rope_tables(self.dim // self.num_heads).to(device)
        table = self._rope[device]
        half = table.size(1)
        t_part, h_part, w_part = table.split([half - 2 * (half // 3), half // 3, half // 3], dim=1)

        def rows(grid: tuple[int, int, int]) -> Tensor:
            f, h, w = grid
            if max(grid) > ROPE_MAX_POSITIONS:
                raise ValueError(f'latent grid {grid} exceeds {ROPE_MAX_POSITIONS} positions per axis')
            full = torch.cat([t_part[:f, None, None].expand(f, h, w, -1),
                              h_part[None, :h, None].expand(f, h, w, -1),
                              w_part[None, None, :w].expand(f, h, w, -1)], dim=-1).reshape(f * h * w, half)
            return torch.cat([full, full.new_ones(seq_len - f * h * w, half)])[:, None]  # [L, 1, D/2]

        return torch.view_as_real(torch.stack([rows(g) for g in (grids[:1] if len(set(grids)) == 1 else grids)]))

    def unpatchify(self, x: Tensor, grids: list[tuple[int, int, int]]) -> list[Tensor]:
        """[B, L, prod(patch)*C_out] -> B tensors [C_out, F*pt, H*ph, W*pw] fp32 (C_out fastest)."""
        pt, ph, pw = self.patch_size
        out = []
        for u, (f, h, w) in zip(x, grids):
            u = u[:f * h * w].view(f, h, w, pt, ph, pw, self.out_dim)
            out.append(u.permute(6, 0, 3, 1, 4, 2, 5).reshape(self.out_dim, f * pt, h * ph, w * pw).float())
        return out

    def _pad_context(self, context: Tensor) -> Tensor:
        if context.size(0) > self.text_len:
            raise ValueError(f'context has {context.size(0)} rows, more than text_len {self.text_len}')
        return torch.cat([context, context.new_zeros(self.text_len - context.size(0), context.size(1))])

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device = 'cpu') -> WanModel:
        """Load `config.json` + `diffusion_pytorch_model*.safetensors` from `folder` (spec 3.9).

        Built on the meta device and assigned the read tensors (one copy in memory). Weights keep
        their stored dtype unless `dtype` is given. Returns an eval-mode model without gradients.
        """
        folder = Path(folder)
        config_path = folder / 'config.json'
        config = read_config(config_path)
        try:
            with torch.device('meta'):
                model = cls(**config)
        except ValueError as exc:
            raise CheckpointError(f'{config_path}: {exc}') from exc
        tensors, sources = read_sharded(folder)
        if dtype is not None:  # convert one tensor at a time so that the stored copy is freed
            for key, value in tensors.items():
                if value.is_floating_point():
                    tensors[key] = value.to(dtype)
        load_into(model, tensors, sources)
        del tensors
        return model.to(device).eval().requires_grad_(False)


_CONFIG_TYPES = {'model_type': str, 'patch_size': tuple, 'text_len': int, 'in_dim': int, 'dim': int,
                 'ffn_dim': int, 'freq_dim': int, 'text_dim': int, 'out_dim': int, 'num_heads': int,
                 'num_layers': int, 'window_size': tuple, 'qk_norm': bool, 'cross_attn_norm': bool,
                 'eps': float}
assert set(_CONFIG_TYPES) == set(inspect.signature(WanModel.__init__).parameters) - {'self'}


def read_config(path: Path) -> dict:
    """WanModel kwargs from a diffusers-style config.json; keys starting with '_' are ignored."""
    if not path.is_file():
        raise CheckpointError(f'model config not found: {path}')
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f'cannot parse {path}: {exc}') from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f'{path}: expected a JSON object')
    config = {}
    for key, value in raw.items():
        if key.startswith('_'):
            continue
        kind = _CONFIG_TYPES.get(key)
        if kind is None:
            raise CheckpointError(f'{path}: unknown key {key!r} (a WanModel config has '
                                  f'{", ".join(_CONFIG_TYPES)})')
        if kind is tuple and isinstance(value, list) and all(type(v) is int for v in value):
            value = tuple(value)
        elif kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise CheckpointError(f'{path}: key {key!r} must be {kind.__name__}, got {value!r}')
        config[key] = value
    return config
