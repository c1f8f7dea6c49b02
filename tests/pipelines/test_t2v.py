"""prepare_t2v: target shape from a W*H size, seq_len, seeded fp32 noise."""
import pytest
import torch

from wan.pipelines.t2v import prepare_t2v


@pytest.mark.parametrize('size, frames, z_dim, stride, shape, seq_len', [
    ((832, 480), 81, 16, (4, 8, 8), (16, 21, 60, 104), 32760),      # spec 2.4
    ((480, 832), 5, 16, (4, 8, 8), (16, 2, 104, 60), 3120),         # W*H: portrait
    ((1280, 704), 121, 48, (4, 16, 16), (48, 31, 44, 80), 27280),   # ti2v text mode
])
def test_shape_and_seq_len(size, frames, z_dim, stride, shape, seq_len):
    inputs = prepare_t2v(size, frames, z_dim=z_dim, vae_stride=stride, patch_size=(1, 2, 2),
                         generator=torch.Generator().manual_seed(0), device=torch.device('cpu'))
    assert inputs.latents.shape == shape and inputs.latents.dtype == torch.float32
    assert inputs.seq_len == seq_len and inputs.size == size
    assert inputs.y is None and inputs.token_mask is None and inputs.reimpose is None


def test_noise_is_the_seeded_generators_first_draw():
    def make(seed, sp_size=1):
        return prepare_t2v((64, 32), 5, z_dim=16, vae_stride=(4, 8, 8), patch_size=(1, 2, 2),
                           generator=torch.Generator().manual_seed(seed), device=torch.device('cpu'),
                           sp_size=sp_size)
    expected = torch.randn(16, 2, 4, 8, generator=torch.Generator().manual_seed(42))
    assert torch.equal(make(42).latents, expected)
    assert not torch.equal(make(43).latents, expected)
    assert make(42, sp_size=3).seq_len == 18  # 16 tokens rounded up to the SP degree
