"""prepare_ti2v: text mode is T2V; image mode uses best_output_size + LANCZOS crop, imposes frame 0."""
import numpy as np
import torch
from PIL import Image

from tests.pipelines.stubs import StubVAE
from wan.pipelines.images import resize_center_crop, to_tensor
from wan.pipelines.ti2v import prepare_ti2v

CPU = torch.device('cpu')


def prepare(image, seed=3):
    vae = StubVAE(48, (4, 16, 16))
    inputs = prepare_ti2v(image, (1280, 704), 9, vae=vae, vae_stride=(4, 16, 16), patch_size=(1, 2, 2),
                          generator=torch.Generator().manual_seed(seed), device=CPU)
    return inputs, vae


def test_text_mode_is_t2v():
    inputs, vae = prepare(None)
    assert inputs.latents.shape == (48, 3, 44, 80) and inputs.size == (1280, 704)
    assert torch.equal(inputs.latents, torch.randn(48, 3, 44, 80, generator=torch.Generator().manual_seed(3)))
    assert inputs.token_mask is None and inputs.reimpose is None and vae.videos == []


def test_image_mode():
    rng = np.random.RandomState(1)
    image = Image.fromarray(rng.randint(0, 256, (720, 1280, 3), dtype=np.uint8))
    inputs, vae = prepare(image)
    assert inputs.size == (1248, 704)  # spec 7.3: not 1280x704
    (pixels,) = vae.videos
    assert pixels.shape == (3, 1, 704, 1248)
    assert torch.equal(pixels[:, 0], to_tensor(resize_center_crop(image, 1248, 704)))

    z = StubVAE(48, (4, 16, 16)).encode([pixels])[0]  # [48, 1, 44, 78]
    noise = torch.randn(48, 3, 44, 78, generator=torch.Generator().manual_seed(3))
    assert inputs.latents.shape == (48, 3, 44, 78) and inputs.seq_len == 3 * 22 * 39
    assert torch.equal(inputs.latents[:, :1], z) and torch.equal(inputs.latents[:, 1:], noise[:, 1:])

    assert inputs.token_mask.shape == (3, 22, 39)
    assert inputs.token_mask[0].eq(0).all() and inputs.token_mask[1:].eq(1).all()
    moved = inputs.reimpose(torch.full_like(noise, 5.0))
    assert torch.equal(moved[:, :1], z) and moved[:, 1:].eq(5).all()
