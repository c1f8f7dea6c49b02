"""Wan2.1 VAE: official layout, parity with diffusers' AutoencoderKLWan, causality, shapes,
errors, tiling."""
from __future__ import annotations

import pytest
import torch

from tests.modules import vae_checks as checks
from tests.modules.vae_checks import corrupt, video
from tests.tiny.vae import (
    diffusers_config,
    to_diffusers,
    vae21_tensors,
    write_vae21,
    write_vae22,
)
from wan.errors import CheckpointError, UserError
from wan.modules.vae2_1 import Wan2_1_VAE, build_vae21, infer_vae21_config
from wan.modules.vae_common import DECODER_HALO, Upsample2x

DIM = 8


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    return write_vae21(tmp_path_factory.mktemp('vae21') / 'Wan2.1_VAE.pth', dim=DIM, seed=0)


@pytest.fixture(scope='module')
def vae(ckpt):
    return Wan2_1_VAE(ckpt)


@pytest.fixture(scope='module')
def reference(ckpt):
    from diffusers import AutoencoderKLWan
    model = AutoencoderKLWan(**diffusers_config('2.1', DIM)).eval()
    model.load_state_dict(to_diffusers(torch.load(ckpt), '2.1'), strict=True)
    return model


def test_full_size_layout_matches_appendix_a1():
    with torch.device('meta'):
        model = build_vae21()
    state = model.state_dict()
    assert len(state) == 194
    assert round(sum(t.numel() for t in state.values()) / 1e6, 3) == 126.893
    # a few shapes of Appendix A.1, including the halving upsample convs
    assert state['decoder.upsamples.3.resample.1.weight'].shape == (192, 384, 3, 3)
    assert state['decoder.upsamples.3.time_conv.weight'].shape == (768, 384, 3, 1, 1)
    assert state['decoder.upsamples.4.shortcut.weight'].shape == (384, 192, 1, 1, 1)
    assert state['decoder.upsamples.11.resample.1.weight'].shape == (96, 192, 3, 3)
    assert state['encoder.downsamples.8.time_conv.weight'].shape == (384, 384, 3, 1, 1)
    assert state['encoder.middle.1.to_qkv.weight'].shape == (1152, 384, 1, 1)
    assert infer_vae21_config(state, 'x') == dict(dim=96, z_dim=16, dim_mult=(1, 2, 4, 4),
                                                  num_res_blocks=2)
    assert Wan2_1_VAE.stride == (4, 8, 8) and len(Wan2_1_VAE.mean) == len(Wan2_1_VAE.std) == 16


def test_widths_come_from_the_checkpoint(tmp_path):
    vae = Wan2_1_VAE(write_vae21(tmp_path / 'w12.pth', dim=12))
    assert vae.model.encoder.conv1.out_channels == 12
    assert vae.model.decoder.conv1.out_channels == 48 and vae.z_dim == 16
    assert vae.decode([torch.randn(16, 2, 2, 3)])[0].shape == (3, 5, 16, 24)


def test_encode_matches_diffusers(vae, reference):
    checks.assert_encode_matches_diffusers(vae, reference, video(9, 32, 48), (16, 3, 4, 6), 'wan2.1')


def test_decode_matches_diffusers(vae, reference):
    z = torch.randn(16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    checks.assert_decode_matches_diffusers(vae, reference, z, (3, 9, 32, 48), 'wan2.1')


def test_encode_is_causal(vae):
    checks.assert_encode_is_causal(vae, video(9, 16, 24, seed=2))


def test_decode_is_causal(vae):
    checks.assert_decode_is_causal(vae, torch.randn(16, 3, 2, 3, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize('frames,height,width', [(1, 16, 16), (5, 16, 32), (9, 24, 40)])
def test_round_trip_shapes(vae, frames, height, width):
    checks.assert_round_trip_shapes(vae, frames, height, width)


@pytest.mark.parametrize('frames', [2, 4, 8, 10])
def test_frame_count_must_be_4n_plus_1(vae, frames):
    with pytest.raises(UserError, match=r'4n\+1 frames .* got ' + str(frames)):
        vae.encode([video(frames, 16, 16)])


def test_bad_inputs_are_user_errors(vae):
    with pytest.raises(UserError, match='multiples of 8'):
        vae.encode([video(5, 20, 16)])
    with pytest.raises(UserError, match=r'\[3, T, H, W\]'):
        vae.encode([video(5, 16, 16)[:2]])
    with pytest.raises(UserError, match=r'\[16, n, h, w\]'):
        vae.decode([torch.zeros(48, 2, 2, 2)])
    with pytest.raises(TypeError):
        vae.encode(video(5, 16, 16))


@pytest.mark.parametrize('kind,key,message', [
    ('missing', 'decoder.head.2.bias', 'missing tensor'),
    ('missing', 'encoder.conv1.weight', 'missing tensor'),  # needed to infer the widths
    ('unexpected', 'decoder.extra.weight', 'unexpected tensor'),
    ('misshaped', 'decoder.upsamples.3.time_conv.weight', r'has shape \(3, 3\)'),
])
def test_load_errors_name_file_and_key(tmp_path, kind, key, message):
    tensors = vae21_tensors(DIM)
    corrupt(tensors, key, kind)
    path = tmp_path / 'bad.pth'
    torch.save(tensors, path)
    with pytest.raises(CheckpointError, match=message) as err:
        Wan2_1_VAE(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_load_errors_missing_file_and_wrong_vae(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        Wan2_1_VAE(tmp_path / 'absent.pth')
    path = write_vae22(tmp_path / 'Wan2.2_VAE.pth', dim=8, dec_dim=8)
    with pytest.raises(CheckpointError, match='Wan2.2_VAE.pth'):
        Wan2_1_VAE(path)


def test_tiled_decode_equals_untiled(vae):
    # 26 latent columns with 12-wide tiles: tile 0 reads columns 0..24 (its halo is cut short of
    # the frame edge), so a seam is really tested; rows are one tile
    z = torch.randn(16, 2, 2, 26, generator=torch.Generator().manual_seed(4))
    full = vae.decode([z])[0]
    tiled = vae.decode([z], tile=12)[0]
    assert tiled.shape == full.shape == (3, 5, 16, 208)
    # equal up to float rounding: convolutions on other tensor sizes round differently (observed
    # 1.5e-6, the same for halos 13 and 16, so it is not receptive-field leakage)
    torch.testing.assert_close(tiled, full, rtol=0, atol=5e-6)
    # with a halo below the receptive field the seam shows: the check above can fail
    raw = (z / vae._inv_std + vae._mean)[None]
    short = vae.model.decode_tiled(raw, 12, halo=DECODER_HALO - 9)[0]
    assert (short - full).abs().max() > 1e-5


def test_bf16_decode_is_close_to_fp32(ckpt, vae):
    z = torch.randn(16, 2, 2, 3, generator=torch.Generator().manual_seed(5))
    checks.assert_bf16_decode_close_to_fp32(vae, Wan2_1_VAE(ckpt, dtype=torch.bfloat16), z, 'wan2.1')


def test_upsample_in_bf16_equals_fp32_upsample():
    x = torch.randn(2, 4, 5, 7).bfloat16()
    assert torch.equal(Upsample2x()(x), Upsample2x()(x.float()).bfloat16())
