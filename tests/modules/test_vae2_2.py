"""Wan2.2 VAE: official layout, parity with diffusers' AutoencoderKLWan (2.2 config), causality,
patchify order, shapes, errors."""
from __future__ import annotations

import pytest
import torch

from tests.modules import vae_checks as checks
from tests.modules.vae_checks import corrupt, video
from tests.tiny.vae import (
    diffusers_config,
    to_diffusers,
    vae22_tensors,
    write_vae21,
    write_vae22,
)
from wan.errors import CheckpointError, UserError
from wan.modules.vae2_2 import Wan2_2_VAE, build_vae22, infer_vae22_config
from wan.modules.vae_common import patchify, unpatchify

DIM, DEC_DIM = 8, 12


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('vae22') / 'Wan2.2_VAE.pth'
    return write_vae22(path, dim=DIM, dec_dim=DEC_DIM)


@pytest.fixture(scope='module')
def vae(ckpt):
    return Wan2_2_VAE(ckpt)


@pytest.fixture(scope='module')
def reference(ckpt):
    from diffusers import AutoencoderKLWan
    model = AutoencoderKLWan(**diffusers_config('2.2', DIM, DEC_DIM)).eval()
    model.load_state_dict(to_diffusers(torch.load(ckpt), '2.2'), strict=True)
    return model


def test_full_size_layout_matches_appendix_a2():
    with torch.device('meta'):
        model = build_vae22()
    state = model.state_dict()
    assert len(state) == 196
    assert round(sum(t.numel() for t in state.values()) / 1e6, 3) == 704.689
    # a few shapes of Appendix A.2: 12 patch channels, upsample convs keep their width
    assert state['encoder.conv1.weight'].shape == (160, 12, 3, 3, 3)
    assert state['decoder.upsamples.0.upsamples.3.resample.1.weight'].shape == (1024, 1024, 3, 3)
    assert state['decoder.upsamples.1.upsamples.3.time_conv.weight'].shape == (2048, 1024, 3, 1, 1)
    assert state['decoder.upsamples.3.upsamples.0.shortcut.weight'].shape == (256, 512, 1, 1, 1)
    assert state['decoder.head.2.weight'].shape == (12, 256, 3, 3, 3)
    assert infer_vae22_config(state, 'x') == dict(dim=160, dec_dim=256, z_dim=48,
                                                  dim_mult=(1, 2, 4, 4), num_res_blocks=2)
    assert Wan2_2_VAE.stride == (4, 16, 16) and len(Wan2_2_VAE.mean) == len(Wan2_2_VAE.std) == 48


def test_encoder_and_decoder_widths_come_from_the_checkpoint(vae):
    assert vae.model.encoder.conv1.out_channels == DIM
    assert vae.model.decoder.conv1.out_channels == 4 * DEC_DIM and vae.z_dim == 48


def test_patchify_channel_order():
    # channel c*4 + w_offset*2 + h_offset holds pixel (2h + h_offset, 2w + w_offset)  (spec 6.3)
    x = torch.randn(1, 3, 2, 6, 8)
    p = patchify(x, 2)
    assert p.shape == (1, 12, 2, 3, 4)
    for c in range(3):
        for dw in range(2):
            for dh in range(2):
                assert torch.equal(p[:, c * 4 + dw * 2 + dh], x[:, c, :, dh::2, dw::2])
    assert torch.equal(unpatchify(p, 2), x)


def test_encode_matches_diffusers(vae, reference):
    checks.assert_encode_matches_diffusers(vae, reference, video(9, 64, 64), (48, 3, 4, 4), 'wan2.2')


def test_decode_matches_diffusers(vae, reference):
    z = torch.randn(48, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    checks.assert_decode_matches_diffusers(vae, reference, z, (3, 9, 64, 64), 'wan2.2')


def test_encode_is_causal(vae):
    checks.assert_encode_is_causal(vae, video(9, 32, 32, seed=2))


def test_decode_is_causal(vae):
    checks.assert_decode_is_causal(vae, torch.randn(48, 3, 2, 2, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize('frames,height,width', [(1, 32, 32), (5, 32, 64), (9, 48, 32)])
def test_round_trip_shapes(vae, frames, height, width):
    checks.assert_round_trip_shapes(vae, frames, height, width)


@pytest.mark.parametrize('frames', [3, 4, 7, 12])
def test_frame_count_must_be_4n_plus_1(vae, frames):
    with pytest.raises(UserError, match=r'4n\+1 frames .* got ' + str(frames)):
        vae.encode([video(frames, 32, 32)])


def test_bad_inputs_are_user_errors(vae):
    with pytest.raises(UserError, match='multiples of 16'):
        vae.encode([video(5, 32, 40)])
    with pytest.raises(UserError, match=r'\[48, n, h, w\]'):
        vae.decode([torch.zeros(16, 2, 2, 2)])
    with pytest.raises(UserError, match='positive'):
        vae.decode([torch.zeros(48, 1, 2, 2)], tile=0)


@pytest.mark.parametrize('kind,key,message', [
    ('missing', 'decoder.upsamples.2.upsamples.3.resample.1.bias', 'missing tensor'),
    ('missing', 'decoder.conv1.weight', 'missing tensor'),  # needed to infer the decoder width
    ('unexpected', 'encoder.downsamples.3.downsamples.2.resample.1.weight', 'unexpected tensor'),
    ('misshaped', 'encoder.middle.1.to_qkv.weight', r'has shape \(3, 3\)'),
])
def test_load_errors_name_file_and_key(tmp_path, kind, key, message):
    tensors = vae22_tensors(DIM, DEC_DIM)
    corrupt(tensors, key, kind)
    path = tmp_path / 'bad.pth'
    torch.save(tensors, path)
    with pytest.raises(CheckpointError, match=message) as err:
        Wan2_2_VAE(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_load_errors_missing_file_and_wrong_vae(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        Wan2_2_VAE(tmp_path / 'absent.pth')
    path = write_vae21(tmp_path / 'Wan2.1_VAE.pth', dim=8)
    with pytest.raises(CheckpointError, match='Wan2.1_VAE.pth'):
        Wan2_2_VAE(path)


def test_tiled_decode_equals_untiled(vae):
    # 26 latent rows with 12-high tiles: tile 0 reads rows 0..24, a halo cut short of the frame
    # edge, so a seam is really tested; columns are one tile
    z = torch.randn(48, 2, 26, 2, generator=torch.Generator().manual_seed(4))
    full = vae.decode([z])[0]
    tiled = vae.decode([z], tile=12)[0]
    assert tiled.shape == full.shape == (3, 5, 416, 32)
    # equal up to float rounding (convolutions on other tensor sizes round differently)
    # (the Wan2.1 test shows that this geometry fails with a halo below the receptive field)
    torch.testing.assert_close(tiled, full, rtol=0, atol=5e-6)


def test_bf16_decode_is_close_to_fp32(ckpt, vae):
    z = torch.randn(48, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    checks.assert_bf16_decode_close_to_fp32(vae, Wan2_2_VAE(ckpt, dtype=torch.bfloat16), z, 'wan2.2')
