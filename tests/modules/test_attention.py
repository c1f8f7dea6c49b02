"""attention(): every available backend against a float64 softmax(QK^T)V, with key-padding masks."""
import logging
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from wan.modules import attention as attention_module
from wan.modules.attention import (BACKENDS, ENV_VAR, FP8_MAX, LOSSY_BACKENDS, attention, flash_order, fp8_inputs,
                                  quantize_fp8, resolve_backend)

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
# CUDA computes in bf16 (the reference's half()); the CPU keeps fp32
TOL = dict(rtol=2e-2, atol=2e-2) if DEVICE == 'cuda' else dict(rtol=1e-5, atol=1e-5)


def available_backends() -> list[str]:
    names = []
    for name in BACKENDS:
        if name in LOSSY_BACKENDS:  # tested on their own below, against their own error bound
            continue
        try:
            resolve_backend(DEVICE, name)
        except ValueError:
            continue
        names.append(name)
    return names


def reference(q, k, v, k_lens=None):
    """Plain softmax(q k^T / sqrt(D)) v in float64, keys at positions >= k_lens[i] masked."""
    q, k, v = (u.double().transpose(1, 2) for u in (q, k, v))  # [B, N, L, D]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if k_lens is not None:
        masked = torch.arange(k.size(2))[None] >= torch.as_tensor(k_lens)[:, None]  # [B, Lk]
        scores = scores.masked_fill(masked[:, None, None, :].to(scores.device), float('-inf'))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def random_qkv(batch=3, len_q=11, len_k=13, heads=2, head_dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, n, heads, head_dim, generator=gen) for n in (len_q, len_k, len_k))
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


@pytest.mark.parametrize('k_lens', [None, [13, 13, 13], [9, 9, 9], [5, 13, 8]])
@pytest.mark.parametrize('backend', available_backends())
def test_backend_matches_reference(backend, k_lens):
    q, k, v = random_qkv()
    if k_lens is not None:  # garbage beyond each length must not leak into the output
        for i, n in enumerate(k_lens):
            k[i, n:] = 1e3
            v[i, n:] = 1e3
    out = attention(q, k, v, k_lens=None if k_lens is None else torch.tensor(k_lens), backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), reference(q, k, v, k_lens), **TOL)


def test_lengths_as_list_equal_tensor():
    q, k, v = random_qkv()
    assert torch.equal(attention(q, k, v, k_lens=[5, 13, 8]),
                       attention(q, k, v, k_lens=torch.tensor([5, 13, 8], dtype=torch.int32)))


def test_automatic_choice_and_logged_once(monkeypatch, caplog):
    monkeypatch.delenv(ENV_VAR, raising=False)
    attention_module._select.cache_clear()
    q, k, v = random_qkv()
    with caplog.at_level(logging.INFO, logger=attention_module.__name__):
        attention(q, k, v)
        attention(q, k, v)
    records = [r for r in caplog.records if 'attention backend' in r.getMessage()]
    assert len(records) == 1
    if DEVICE == 'cpu':
        assert resolve_backend('cpu') == 'sdpa'


def _record_sdpa_flags(monkeypatch):
    """Record which SDPA kernels are enabled when scaled_dot_product_attention is called."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append({'math': torch.backends.cuda.math_sdp_enabled(),
                     'flash': torch.backends.cuda.flash_sdp_enabled()})
        return original(*args, **kwargs)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    return seen


@pytest.mark.parametrize('how', ['argument', 'env'])
def test_forcing_sdpa_math(monkeypatch, how):
    seen = _record_sdpa_flags(monkeypatch)
    q, k, v = random_qkv()
    if how == 'env':
        monkeypatch.setenv(ENV_VAR, 'sdpa_math')
        assert resolve_backend(DEVICE) == 'sdpa_math'
        out = attention(q, k, v)
    else:
        monkeypatch.delenv(ENV_VAR, raising=False)
        out = attention(q, k, v, backend='sdpa_math')
    assert seen == [{'math': True, 'flash': False}]
    torch.testing.assert_close(out.double(), reference(q, k, v), **TOL)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the call


def test_argument_overrides_env(monkeypatch):
    monkeypatch.setenv(ENV_VAR, 'no_such_backend')
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match="unknown attention backend 'no_such_backend'"):
        attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, backend='sdpa_math').double(), reference(q, k, v), **TOL)


def test_unknown_backend_is_an_error():
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash9'; choose one of fa4, fa3"):
        attention(q, k, v, backend='flash9')


@pytest.mark.skipif(DEVICE == 'cuda', reason='checks the CPU refusal of CUDA-only kernels')
@pytest.mark.parametrize('backend', ['fa4', 'fa3', 'fa2', 'fa3_fp8', 'sdpa_cudnn', 'sdpa_efficient'])
def test_cuda_only_backend_refused_on_cpu(backend):
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match=f"'{backend}' needs a CUDA device"):
        attention(q, k, v, backend=backend)


def test_fa3_loads_from_the_forward_only_wheel_when_upstream_is_missing(monkeypatch):
    import sys
    import types
    calls = []

    def flash_attn_func(q, k, v):
        calls.append((q, k, v))
        return q + 1, None  # (out, lse) as FA3 returns it

    monkeypatch.setitem(sys.modules, 'flash_attn_interface', None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, 'fa3_fwd_interface',
                        types.SimpleNamespace(flash_attn_func=flash_attn_func))
    q = torch.zeros(1, 2, 1, 4)
    kernel = attention_module._load_flash('fa3')
    out = kernel(q, q, q)
    assert len(calls) == 1 and torch.equal(out, q + 1)
    assert kernel.forward_only  # this wheel has no backward
    monkeypatch.setitem(sys.modules, 'fa3_fwd_interface', None)
    with pytest.raises(ImportError):
        attention_module._load_flash('fa3')


@pytest.mark.parametrize('capability, installed, expected', [
    ((9, 0), {'fa4', 'fa3', 'fa2'}, 'fa3'), ((9, 0), {'fa4', 'fa2'}, 'fa4'),
    ((10, 0), {'fa4', 'fa3', 'fa2'}, 'fa4'), ((8, 0), {'fa3', 'fa2'}, 'fa3'), ((8, 9), set(), 'sdpa')])
def test_automatic_cuda_choice_by_compute_capability(monkeypatch, capability, installed, expected):
    def load(name):
        if name not in installed:
            raise ImportError(name)
        return lambda q, k, v: q
    monkeypatch.setattr(attention_module, '_load_flash', load)
    monkeypatch.setattr(attention_module, '_probe', lambda kernel, device_type: None)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    attention_module._select.cache_clear()
    try:
        assert attention_module._select(None, 'cuda')[0] == expected
    finally:
        attention_module._select.cache_clear()


def test_lossy_backends_are_never_chosen_automatically():
    for capability in ((8, 0), (9, 0), (10, 0), (12, 0)):
        assert not set(flash_order(capability)) & set(LOSSY_BACKENDS)


def test_quantize_fp8_one_scale_per_sample_and_head_within_e4m3_rounding():
    q = random_qkv(batch=2, len_q=40, heads=3, head_dim=16)[0].cpu()
    q[1, :, 2] *= 100  # one head far larger: its own scale
    q8, scale = quantize_fp8(q)
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == q.shape and scale.shape == (2, 3)
    back = q8.float() * scale[:, None, :, None]
    assert torch.equal(q8.float().abs().amax(dim=(1, 3)), torch.full((2, 3), FP8_MAX))
    # e4m3 keeps 3 mantissa bits: half a step is 2^-4 relative; below 2^-6 it is subnormal (step 2^-9)
    bound = torch.maximum(q.abs() / 16, scale[:, None, :, None] * 2.0**-10)
    assert ((back - q).abs() <= bound * (1 + 1e-6)).all()


def test_fp8_inputs_emulated_error_against_exact_attention():
    """What fa3_fp8 computes, emulated on the CPU in float64 from the dequantized FP8 inputs (the
    kernel also rounds the probabilities to FP8): within a few percent, and the smoothing helps."""
    q, k, v = (u.cpu() for u in random_qkv(batch=2, len_q=64, len_k=80, heads=2, head_dim=32))
    bias = torch.randn(2, 1, 1, 2, 32, generator=torch.Generator().manual_seed(1))
    k, v = k + 3.0 * bias[0], v + 3.0 * bias[1]  # a bias per channel, as projections give
    exact = reference(q, k, v)
    q8, k8, v8, qs, ks, vs, v_mean = fp8_inputs(q, k, v)
    deq = [u.double() * s.double()[:, None, :, None] for u, s in ((q8, qs), (k8, ks), (v8, vs))]
    err = ((reference(*deq) + v_mean.double() - exact).norm() / exact.norm()).item()
    plain = [quantize_fp8(u) for u in (q, k, v)]
    plain_deq = [u.double() * s.double()[:, None, :, None] for u, s in plain]
    plain_err = ((reference(*plain_deq) - exact).norm() / exact.norm()).item()
    assert err < 0.01 and err < plain_err / 2


def test_fa3_fp8_runs_exact_fa3_on_short_key_sequences(monkeypatch):
    calls = []

    def select(name, device_type):
        return name, lambda q, k, v: calls.append((name, k.size(1))) or q
    monkeypatch.setattr(attention_module, '_select', select)
    q = torch.zeros(1, 8, 1, 4)
    for keys in (attention_module.FP8_MIN_KEYS - 1, attention_module.FP8_MIN_KEYS):
        attention(q, torch.zeros(1, keys, 1, 4), torch.zeros(1, keys, 1, 4), backend='fa3_fp8')
    assert calls == [('fa3', attention_module.FP8_MIN_KEYS - 1), ('fa3_fp8', attention_module.FP8_MIN_KEYS)]


def test_forward_only_kernels_give_way_to_sdpa_when_gradients_are_needed(monkeypatch):
    """The forward-only FA3 wheel and FP8 have no backward: a call that needs gradients (training)
    runs SDPA, exact and differentiable; inference keeps the fast kernel."""
    calls = []

    def forward_only(q, k, v):
        calls.append('fa3')
        return q.detach().clone()
    forward_only.forward_only = True
    sdpa = attention_module._sdpa_kernel('sdpa', 'cpu')

    def select(name, device_type):
        if name == 'sdpa':
            return name, lambda q, k, v: calls.append('sdpa') or sdpa(q, k, v)
        return 'fa3', forward_only
    monkeypatch.setattr(attention_module, '_select', select)
    q, k, v = (u.cpu().requires_grad_() for u in random_qkv())
    attention(q, k, v).sum().backward()
    assert calls == ['sdpa'] and q.grad is not None
    with torch.no_grad():
        attention(q, k, v)
    attention(q.detach(), k.detach(), v.detach())
    assert calls == ['sdpa', 'fa3', 'fa3']


@pytest.mark.skipif(DEVICE != 'cuda', reason='FlashAttention-3 FP8 runs on a GPU')
def test_fa3_fp8_within_its_error_bound():
    try:
        resolve_backend('cuda', 'fa3_fp8')
    except ValueError:
        pytest.skip('FlashAttention-3 not installed')
    q, k, v = random_qkv(batch=2, len_q=256, len_k=attention_module.FP8_MIN_KEYS, heads=2, head_dim=128)
    bias = torch.randn(2, 1, 1, 2, 128, generator=torch.Generator().manual_seed(1)).cuda()
    k, v = k + 3.0 * bias[0], v + 3.0 * bias[1]
    out = attention(q, k, v, backend='fa3_fp8')
    assert out.shape == q.shape and out.dtype == q.dtype
    exact = reference(q, k, v)
    err = ((out.double() - exact).norm() / exact.norm()).item()
    exact_err = ((attention(q, k, v, backend='fa3').double() - exact).norm() / exact.norm()).item()
    print(f'fa3_fp8 relative error {err:.2e} (fa3 {exact_err:.2e})')
    assert err < 0.02
    short = k[:, :attention_module.FP8_MIN_KEYS - 1], v[:, :attention_module.FP8_MIN_KEYS - 1]
    assert torch.equal(attention(q, *short, backend='fa3_fp8'), attention(q, *short, backend='fa3'))  # exact


@pytest.mark.parametrize('k_lens', [[0, 13, 13], [14, 13, 13], [13, 13]])
def test_bad_lengths(k_lens):
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match='k_lens'):
        attention(q, k, v, k_lens=k_lens)


def test_mixed_dtypes_return_q_dtype():
    q, k, v = random_qkv()
    out = attention(q, k, v.to(torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(q, k, v.to(torch.bfloat16)), **TOL)


def test_cuda_backend_selected_on_a_background_thread_on_the_run_device(monkeypatch):
    import threading
    from unittest import mock
    calls = []

    def fake_select(name, device_type):
        calls.append((name, device_type, threading.current_thread().name))
        return 'fa4', None
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(attention_module, '_select', fake_select)
    with mock.patch('torch.cuda.set_device') as set_device:
        attention_module.resolve_in_background('cpu')  # nothing to select ahead off CUDA
        assert not [t for t in threading.enumerate() if t.name == 'attention-select']
        attention_module.resolve_in_background(torch.device('cuda', 1))
        for thread in [t for t in threading.enumerate() if t.name == 'attention-select']:
            thread.join()
    set_device.assert_called_once_with(torch.device('cuda', 1))
    assert calls == [(None, 'cuda', 'attention-select')]


@pytest.mark.skipif(shutil.which('cc') is None, reason='torch.compile on the CPU needs a C compiler')
def test_compiled_attention_keeps_gradients():
    """Under torch.compile without gradients attention is one opaque op; with gradients (training)
    it runs eagerly inside the compiled function, so backward works as without compile."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16, 2, 8, requires_grad=True) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: attention(q, k, v).square().sum(), dynamic=False)
    compiled(q, k, v).backward()
    grads = [u.grad.clone() for u in (q, k, v)]
    for u in (q, k, v):
        u.grad = None
    attention(q, k, v).square().sum().backward()
    for got, expected in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(got, expected)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v), attention(q, k, v).square().sum())
