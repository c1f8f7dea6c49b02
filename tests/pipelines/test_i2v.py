"""prepare_i2v: area rule without crop, noise before conditioning, 4 mask + 16 latent channels of y."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.pipelines.stubs import StubVAE
from wan.pipelines.i2v import first_frame_mask, prepare_i2v
from wan.pipelines.images import to_tensor


@pytest.mark.parametrize('frames', [1, 5, 9, 81])
def test_mask_marks_the_first_latent_frame_only(frames):
    lat_t = (frames - 1) // 4 + 1
    mask = first_frame_mask(frames, 3, 5, 4, torch.device('cpu'))
    expected = torch.zeros(4, lat_t, 3, 5)
    expected[:, 0] = 1
    assert torch.equal(mask, expected)


def test_prepare_i2v():
    rng = np.random.RandomState(0)
    image = Image.fromarray(rng.randint(0, 256, (90, 160, 3), dtype=np.uint8))  # 16:9
    vae = StubVAE(16, (4, 8, 8))
    inputs = prepare_i2v(image, 64 * 64, 5, vae=vae, vae_stride=(4, 8, 8), patch_size=(1, 2, 2),
                         generator=torch.Generator().manual_seed(7), device=torch.device('cpu'))
    # area 4096 at 16:9: lat_h = 48 // 8 // 2 * 2 = 6, lat_w = 85.3 // 8 // 2 * 2 = 10
    assert inputs.size == (80, 48)
    assert inputs.latents.shape == (16, 2, 6, 10) and inputs.seq_len == 2 * 3 * 5
    assert torch.equal(inputs.latents, torch.randn(16, 2, 6, 10, generator=torch.Generator().manual_seed(7)))

    (video,) = vae.videos  # the image, bicubically resized (no crop, no clamp), then F-1 zero frames
    resized = F.interpolate(to_tensor(image)[None], size=(48, 80), mode='bicubic', align_corners=False)[0]
    assert video.shape == (3, 5, 48, 80)
    assert torch.equal(video[:, 0], resized) and video[:, 1:].eq(0).all()

    y = inputs.y
    assert y.shape == (20, 2, 6, 10)
    assert y[:4, 0].eq(1).all() and y[:4, 1:].eq(0).all()
    assert torch.equal(y[4:], StubVAE(16, (4, 8, 8)).encode([video])[0])
    assert inputs.token_mask is None and inputs.reimpose is None  # I2V does not force frame 0
