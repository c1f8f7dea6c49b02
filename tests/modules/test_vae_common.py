"""Shared VAE blocks and the opt-in decode levers (`DecodeOptions`, issue 8): each lever against the
default decode of the same tiny VAE, in fp32 (equal up to fp32 rounding) and in bf16 (no larger
error against the fp32 decode than the default bf16 decode has)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.modules.vae_checks import rel_err
from tests.tiny.vae import vae21_tensors, vae22_tensors
from wan.modules import vae_common
from wan.modules.vae2_1 import Wan2_1_VAE
from wan.modules.vae2_2 import Wan2_2_VAE
from wan.modules.vae_common import (
    CausalConv3d,
    DecodeOptions,
    interleave_time,
    rms_norm,
)

VAES = {'2.1': (Wan2_1_VAE, lambda: vae21_tensors(8), (16, 3, 6, 4)),
        '2.2': (Wan2_2_VAE, lambda: vae22_tensors(8, 12), (48, 3, 3, 2))}
LEVERS = {'channels_last': DecodeOptions(channels_last=True), 'lean': DecodeOptions(norm='lean'),
          'channels_last+lean': DecodeOptions(channels_last=True, norm='lean'),
          'cudnn_benchmark': DecodeOptions(cudnn_benchmark=True)}


@pytest.fixture(scope='module', params=list(VAES))
def case(request):
    cls, tensors, latent = VAES[request.param]
    tensors = tensors()
    z = torch.randn(latent, generator=torch.Generator().manual_seed(11))
    ref32 = cls.from_tensors(tensors).decode([z])[0]
    ref16 = cls.from_tensors(tensors, dtype=torch.bfloat16).decode([z])[0]
    assert 0.5 < ref32.abs().lt(1).float().mean()  # mostly unclamped: a meaningful compare
    return request.param, cls, tensors, z, ref32, ref16


def decode(case, options: DecodeOptions, dtype: torch.dtype) -> torch.Tensor:
    _, cls, tensors, z, _, _ = case
    return cls.from_tensors(tensors, dtype=dtype, options=options).decode([z])[0]


def check_lever(case, name: str, out32: torch.Tensor, out16: torch.Tensor) -> None:
    version, _, _, _, ref32, ref16 = case
    rel, max_abs = rel_err(out32, ref32)
    rel16, _ = rel_err(out16, ref32)
    base16, _ = rel_err(ref16, ref32)
    print(f'wan{version} {name}: fp32 vs default rel {rel:.2e} max abs {max_abs:.2e}; '
          f'bf16 vs fp32 rel {rel16:.2e} (default bf16 {base16:.2e})')
    # fp32: only the order of fp32 roundings changes (convolution layout, norm product order)
    assert rel < 1e-5 and max_abs < 1e-5
    # bf16: the error is bf16 rounding noise; a lever that keeps the numerics adds none
    assert rel16 < 1.2 * base16


@pytest.mark.parametrize('lever', list(LEVERS))
def test_lever_keeps_the_decode(case, lever):
    options = LEVERS[lever]
    check_lever(case, lever, decode(case, options, torch.float32),
                decode(case, options, torch.bfloat16))


def test_compiled_norm_matches_eager(case, monkeypatch):
    # Inductor's build is too slow for the CPU suite: the graph dynamo captures (norm, SiLU,
    # concatenation with the kept frames) runs through aot_eager here, which must give exactly
    # the default decode; the GPU benchmark reports inductor's error.
    build = vae_common.compiled_padded_norm_silu
    monkeypatch.setattr(vae_common, 'compiled_padded_norm_silu', lambda: build('aot_eager'))
    options = DecodeOptions(norm='compiled')
    _, _, _, _, ref32, ref16 = case
    assert torch.equal(decode(case, options, torch.float32), ref32)
    assert torch.equal(decode(case, options, torch.bfloat16), ref16)


def test_channels_last_reaches_the_convolutions(case, monkeypatch):
    _, cls, tensors, z, _, _ = case
    vae = cls.from_tensors(tensors, options=DecodeOptions(channels_last=True))
    assert vae.model.decoder.middle[0].residual[2].weight.is_contiguous(
        memory_format=torch.channels_last_3d)
    seen = []  # the layout of every time-padded conv input (the CPU's conv may return contiguous)
    convolve = CausalConv3d.convolve

    def spy(conv, buf, cache):
        seen.append(not buf.is_contiguous()
                    and buf.is_contiguous(memory_format=torch.channels_last_3d))
        return convolve(conv, buf, cache)
    monkeypatch.setattr(CausalConv3d, 'convolve', spy)
    vae.decode([z])
    assert len(seen) > 20 and all(seen)


def test_cudnn_benchmark_is_set_for_the_decode_only(case):
    _, cls, tensors, z, _, _ = case
    vae = cls.from_tensors(tensors, options=DecodeOptions(cudnn_benchmark=True))
    during = []
    hook = vae.model.decoder.register_forward_pre_hook(
        lambda m, i: during.append(torch.backends.cudnn.benchmark))
    before = torch.backends.cudnn.benchmark
    vae.decode([z])
    hook.remove()
    assert during and all(during) and torch.backends.cudnn.benchmark == before


def test_unknown_norm_variant():
    with pytest.raises(ValueError, match="norm must be one of"):
        DecodeOptions(norm='fast')


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_rms_norm_is_normalize_times_scale_times_gamma(dtype):
    x = torch.randn(2, 6, 3, 5, 7).to(dtype)
    gamma = 1 + 0.1 * torch.randn(6, 1, 1, 1)
    expected = (F.normalize(x.float(), dim=1) * 6 ** 0.5 * gamma).to(dtype)
    assert torch.equal(rms_norm(x, gamma, 6 ** 0.5), expected)
    frames_major = x.transpose(1, 2).contiguous().transpose(1, 2)  # as per_frame leaves it
    assert torch.equal(rms_norm(frames_major, gamma, 6 ** 0.5), expected)


@pytest.mark.parametrize('channels_last', [False, True])
def test_interleave_time(channels_last):
    x = torch.randn(1, 8, 3, 4, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    out = interleave_time(x)
    # channel halves are frames 2t and 2t+1 (spec 6.1, upsample3d)
    assert torch.equal(out[:, :, 0::2], x[:, :4]) and torch.equal(out[:, :, 1::2], x[:, 4:])
    assert out.is_contiguous(memory_format=torch.channels_last_3d if channels_last
                             else torch.contiguous_format)


def test_decode_hands_over_each_chunk_as_it_is_written(case):
    """on_frames sees 1 + 4 + 4 ... frames in order; together they are the returned video."""
    _, cls, tensors, z, ref32, _ = case
    chunks = []
    (video,) = cls.from_tensors(tensors).decode([z], on_frames=lambda frames: chunks.append(frames.clone()))
    assert [c.shape[1] for c in chunks] == [1] + [4] * (z.shape[1] - 1)
    assert torch.equal(torch.cat(chunks, 1), video) and torch.equal(video, ref32)
    tiled = []
    cls.from_tensors(tensors).decode([z], tile=2, on_frames=tiled.append)
    assert len(tiled) == 1 and tiled[0].shape == video.shape  # tiles span all frames: one hand-over
