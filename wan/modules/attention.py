"""The one attention entry of the project: `attention(q, k, v, k_lens=None, backend=None)`.

Shapes follow flash-attn: q [B, Lq, N, D], k/v [B, Lk, N, D] -> out [B, Lq, N, D] in q's dtype.
Only exact kernels are chosen automatically, once per device type (and logged once):

  CUDA: fa4 (FlashAttention-4, CuTe) -> fa3 (`flash_attn_interface` or `fa3_fwd_interface`)
        -> fa2 (`flash_attn`) -> sdpa (PyTorch SDPA preferring cuDNN, then flash, memory-efficient,
        math); on Hopper (sm90) fa3 comes first: as fast as fa4 on self-attention, faster on
        cross-attention, and nothing to compile at its first call (bench/NOTES.md, session 4)
  CPU:  sdpa (PyTorch chooses)

`backend=` or the environment variable WAN_ATTENTION_BACKEND forces one of BACKENDS, among them
the opt-in lossy `fa3_fp8`: FlashAttention-3 on FP8 (e4m3) q, k, v, one scale per sample and head,
k and v smoothed first (`fp8_inputs`), on calls with at least FP8_MIN_KEYS keys (self-attention);
its speed and error against exact attention are in bench/NOTES.md.
Precision (spec 4): on CUDA, q/k/v that are not fp16/bf16 are cast to bf16 (the reference's
`half()`), then q/k take v's dtype; elsewhere the inputs are computed in their common dtype, so
fp32 CPU runs are exact.
Key padding (`k_lens`, one length per sample) is honoured on every backend by attending only to
the first k_lens[i] keys of sample i: identical to a key mask and it keeps the fastest kernel.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['attention', 'compute_dtype', 'fp8_inputs', 'quantize_fp8', 'resolve_backend', 'resolve_in_background',
           'BACKENDS', 'ENV_VAR']

logger = logging.getLogger(__name__)

ENV_VAR = 'WAN_ATTENTION_BACKEND'
FLASH_BACKENDS = ('fa4', 'fa3', 'fa2')
SDPA_BACKENDS = ('sdpa', 'sdpa_cudnn', 'sdpa_flash', 'sdpa_efficient', 'sdpa_math')
LOSSY_BACKENDS = ('fa3_fp8',)  # never chosen automatically
BACKENDS = FLASH_BACKENDS + SDPA_BACKENDS + LOSSY_BACKENDS
CUDA_ONLY = FLASH_BACKENDS + LOSSY_BACKENDS + ('sdpa_cudnn', 'sdpa_efficient')
FP8_MAX = 448.0  # the largest float8_e4m3fn
FP8_MIN_KEYS = 4096  # shorter key sequences (cross-attention's 512 text tokens) run exact fa3: FP8 is slower there

Kernel = Callable[[Tensor, Tensor, Tensor], Tensor]  # [B, L, N, D] in and out


def _first(result: Tensor | tuple) -> Tensor:
    """Flash-attn entry points return `out` or `(out, lse, ...)` depending on the version."""
    return result[0] if isinstance(result, (tuple, list)) else result


def _load_flash(name: str) -> Kernel:
    """Import a flash-attn kernel lazily; ImportError when the package is not installed. A kernel
    without a backward pass (the forward-only FA3 wheel, FP8) has `forward_only = True`."""
    forward_only = False
    if name == 'fa4':
        # keep FA4's compiled kernels on disk (read at import): a later run skips ~1.6 s per shape
        os.environ.setdefault('FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED', '1')
        from flash_attn.cute.interface import flash_attn_func
    elif name in ('fa3', 'fa3_fp8'):  # upstream's Hopper build, else the forward-only wheel `fa3-fwd`
        try:
            from flash_attn_interface import flash_attn_func
        except ImportError:
            from fa3_fwd_interface import flash_attn_func
            forward_only = True
        if name == 'fa3_fp8':
            def fp8_kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                q8, k8, v8, q_scale, k_scale, v_scale, v_mean = fp8_inputs(q, k, v)
                out = _first(flash_attn_func(q8, k8, v8, q_descale=q_scale, k_descale=k_scale,
                                             v_descale=v_scale))
                return (out.float() + v_mean).to(v.dtype)
            fp8_kernel.forward_only = True
            return fp8_kernel
    else:  # fa2; FlashAttention-4 installs a namespace `flash_attn` without this function
        from flash_attn import flash_attn_func

    def kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _first(flash_attn_func(q, k, v))
    kernel.forward_only = forward_only
    return kernel


def quantize_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, L, N, D] -> (x / s as float8_e4m3fn, s [B, N] fp32): one scale per sample and head,
    mapping its largest magnitude to FP8_MAX. The division runs in fp32."""
    largest = torch.linalg.vector_norm(x, ord=float('inf'), dim=(1, 3))  # max |x|: exact, no temporary
    scale = largest.float().clamp(min=1e-12) / FP8_MAX
    return (x / scale[:, None, :, None]).to(torch.float8_e4m3fn), scale


def fp8_inputs(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """FP8 q, k, v, their scales, and v's mean for `fa3_fp8`. k and v lose their means over the keys
    first, which changes nothing once v's mean is added back to the output: each of a query's scores
    shifts by the same q.mean(k), which softmax ignores, and each row of probabilities sums to 1, so
    P v = P (v - mean) + mean. The narrower ranges quantize better (SageAttention's smoothing)."""
    q8, q_scale = quantize_fp8(q)
    k8, k_scale = quantize_fp8(k - k.mean(dim=1, keepdim=True, dtype=torch.float32))  # one fp32 copy at a time
    v_mean = v.mean(dim=1, keepdim=True, dtype=torch.float32)  # [B, 1, N, D]
    v8, v_scale = quantize_fp8(v - v_mean)
    return q8, k8, v8, q_scale, k_scale, v_scale, v_mean


def _sdpa_kernel(name: str, device_type: str) -> Kernel:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = {
        'sdpa': [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                 SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        'sdpa_cudnn': [SDPBackend.CUDNN_ATTENTION],
        'sdpa_flash': [SDPBackend.FLASH_ATTENTION],
        'sdpa_efficient': [SDPBackend.EFFICIENT_ATTENTION],
        'sdpa_math': [SDPBackend.MATH],
    }[name]

    # the order is a priority where PyTorch supports it (>= 2.6): PyTorch would try flash first
    priority = {'set_priority': True} if 'set_priority' in inspect.signature(sdpa_kernel).parameters else {}

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # SDPA wants [B, N, L, D]
        if name == 'sdpa' and device_type != 'cuda':
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            with sdpa_kernel(order, **priority):
                out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2)
    return run


def _probe(kernel: Kernel, device_type: str) -> None:
    """Run a kernel once on a small input so that a broken install is found at selection time."""
    q = torch.randn(1, 128, 2, 128, device=device_type, dtype=torch.bfloat16)
    kernel(q, q, q)


@functools.cache
def _select(name: str | None, device_type: str) -> tuple[str, Kernel]:
    """Resolve a backend name (None = automatic) to a kernel. Cached: runs once per pair."""
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f'unknown attention backend {name!r}; choose one of {", ".join(BACKENDS)}')
        if name in CUDA_ONLY and device_type != 'cuda':
            raise ValueError(f'attention backend {name!r} needs a CUDA device, got {device_type!r}')
        if name in FLASH_BACKENDS + LOSSY_BACKENDS:
            try:
                kernel = _load_flash(name)
            except ImportError as exc:
                raise ValueError(f'attention backend {name!r} is not installed: {exc}') from exc
        else:
            kernel = _sdpa_kernel(name, device_type)
        logger.info('attention backend: %s on %s (forced%s)', name, device_type,
                    '; lossy: FP8 inputs' if name in LOSSY_BACKENDS else '')
        return name, kernel
    if device_type == 'cuda':
        for candidate in flash_order(torch.cuda.get_device_capability()):
            try:
                kernel = _load_flash(candidate)
                _probe(kernel, device_type)
            except ImportError:
                continue
            except Exception as exc:  # installed but unusable on this GPU: say so, try the next
                logger.warning('attention backend %s is installed but failed (%s); trying the next',
                               candidate, exc)
                continue
            logger.info('attention backend: %s on %s', candidate, device_type)
            return candidate, kernel
    logger.info('attention backend: sdpa on %s%s', device_type,
                ' (cuDNN first)' if device_type == 'cuda' else '')
    return 'sdpa', _sdpa_kernel('sdpa', device_type)


def flash_order(capability: tuple[int, int]) -> tuple[str, ...]:
    """The flash backends to try, fastest first, on a GPU of compute `capability`."""
    return ('fa3', 'fa4', 'fa2') if capability[0] == 9 else FLASH_BACKENDS


_select_lock = threading.Lock()


def _selected(name: str | None, device_type: str) -> tuple[str, Kernel]:
    """`_select`, one caller at a time: a call made while the background selection runs waits for it."""
    with _select_lock:
        return _select(name, device_type)


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The backend name `attention` uses on `device` (argument, else env var, else automatic)."""
    device_type = torch.device(device).type
    return _selected(backend or os.environ.get(ENV_VAR) or None, device_type)[0]


def resolve_in_background(device: torch.device | str) -> None:
    """Select the CUDA backend on a daemon thread: importing FA4 and loading its kernel takes
    seconds, which loading the models then hides. Nothing to do off CUDA."""
    device = torch.device(device)
    if device.type != 'cuda':
        return

    def select() -> None:
        torch.cuda.set_device(device)  # this thread's probe runs on the device of the run
        start = time.perf_counter()
        try:
            name = resolve_backend(device)
        except Exception as exc:  # noqa: BLE001  (the first attention call raises it again)
            logger.debug('background attention selection failed: %s', exc)
            return
        logger.info('attention backend %s ready after %.1f s (selected while models load)', name,
                    time.perf_counter() - start)
    threading.Thread(target=select, name='attention-select', daemon=True).start()


def compute_dtype(q: Tensor, k: Tensor, v: Tensor) -> torch.dtype:
    """The dtype attention runs in (spec 4): on CUDA v's half type (the reference's `half()`, bf16
    unless v is fp16), which q and k take too; elsewhere the three inputs' common dtype."""
    if q.is_cuda:
        return v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | Sequence[int] | None = None,
              backend: str | None = None) -> Tensor:
    """Softmax(q k^T / sqrt(D)) v per head; keys at positions >= k_lens[i] are ignored."""
    assert q.dim() == 4 and k.dim() == 4 and v.dim() == 4, 'expected [B, L, N, D] tensors'
    if torch.compiler.is_compiling():  # one opaque op: the compiled graph runs on around it
        if torch.is_grad_enabled():  # the op has no backward: the kernel runs eagerly (a graph break)
            return _attention_eager(q, k, v, k_lens, backend)
        if k_lens is not None and not isinstance(k_lens, Tensor):
            k_lens = torch.tensor(list(k_lens), dtype=torch.int32)
        return _attention_op(q, k, v, k_lens, backend)
    return _attention(q, k, v, k_lens, backend)


@torch.library.custom_op('wan::attention', mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None, backend: str | None) -> Tensor:
    """`attention` as an operator torch.compile does not trace into: the chosen kernel runs as is,
    and a compiled block is not cut in two around it."""
    return _attention(q, k, v, k_lens, backend).contiguous()


@_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None, backend: str | None) -> Tensor:
    return q.new_empty(*q.shape[:-1], v.size(-1))


def _attention(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | Sequence[int] | None,
               backend: str | None) -> Tensor:
    device_type = q.device.type
    name, kernel = _selected(backend or os.environ.get(ENV_VAR) or None, device_type)
    if name in LOSSY_BACKENDS and k.size(1) < FP8_MIN_KEYS:
        name, kernel = _selected('fa3', device_type)
    if getattr(kernel, 'forward_only', False) and torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad):  # training: an exact kernel with a backward
        name, kernel = _selected('sdpa', device_type)
    out_dtype = q.dtype
    dtype = compute_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

    num_keys = k.size(1)
    lens = None if k_lens is None else [int(n) for n in
                                        (k_lens.tolist() if isinstance(k_lens, Tensor) else k_lens)]
    if lens is not None and (len(lens) != q.size(0) or not all(0 < n <= num_keys for n in lens)):
        raise ValueError(f'k_lens {lens} must hold {q.size(0)} lengths in 1..{num_keys}')
    if lens is None or all(n == num_keys for n in lens):
        out = kernel(q, k, v)
    elif len(set(lens)) == 1:  # one length for the whole batch: a single call on the valid keys
        out = kernel(q, k[:, :lens[0]], v[:, :lens[0]])
    else:
        out = torch.cat([kernel(q[i:i + 1], k[i:i + 1, :n], v[i:i + 1, :n])
                         for i, n in enumerate(lens)])
    return out.to(out_dtype)


_attention_eager = torch.compiler.disable(_attention)
