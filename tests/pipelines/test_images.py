"""Image preprocessing rules of I2V (area, bicubic, no crop) and TI2V (best size, LANCZOS, centre crop)."""
import numpy as np
import pytest
import torch
from PIL import Image

from wan.errors import UserError
from wan.pipelines.images import (best_output_size, i2v_latent_size, load_image, resize_bicubic,
                                  resize_center_crop, to_tensor)


@pytest.mark.parametrize('size, expected', [  # spec 7.3 examples, area 704*1280 = 901120
    ((1280, 720), (1248, 704)), ((720, 1280), (704, 1248)), ((1280, 704), (1280, 704)),
    ((1024, 1024), (960, 928))])
def test_best_output_size_spec_examples(size, expected):
    assert best_output_size(*size, 32, 32, 901120) == expected


def test_best_output_size_fits_area_and_grid():
    for w, h in [(640, 480), (480, 640), (1920, 1080), (333, 777), (64, 64)]:
        ow, oh = best_output_size(w, h, 32, 32, 901120)
        assert ow % 32 == 0 and oh % 32 == 0 and ow * oh <= 901120


@pytest.mark.parametrize('image, area, expected', [  # spec 7.2 examples: (W, H) -> output (W, H)
    ((1280, 720), 921600, (1280, 720)), ((1280, 720), 399360, (832, 464)), ((1024, 1024), 921600, (960, 960))])
def test_i2v_size_rule(image, area, expected):
    lat_h, lat_w = i2v_latent_size(image[1], image[0], area, (4, 8, 8), (1, 2, 2))
    assert (lat_w * 8, lat_h * 8) == expected


def test_to_tensor_range_and_layout():
    pixels = np.array([[[0, 128, 255], [255, 0, 64]]], dtype=np.uint8)  # H=1, W=2
    x = to_tensor(Image.fromarray(pixels))
    assert x.shape == (3, 1, 2) and x.dtype == torch.float32
    expected = (torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1) / 255 - 0.5) / 0.5
    assert torch.equal(x, expected)
    assert x[0, 0, 0] == -1 and x[2, 0, 0] == 1


def test_resize_bicubic_no_clamp_no_crop():
    image = -torch.ones(3, 16, 16)
    image[:, :, 8:] = 1  # a hard edge: bicubic overshoots past [-1, 1] and nothing clamps it
    out = resize_bicubic(image, 12, 20)
    assert out.shape == (3, 12, 20)
    assert out.max() > 1 and out.min() < -1
    same = resize_bicubic(image, 16, 16)
    torch.testing.assert_close(same, image, rtol=0, atol=1e-6)


def test_resize_center_crop_keeps_centre():
    pixels = np.zeros((90, 160, 3), dtype=np.uint8)
    pixels[40:50, 75:85] = 255  # a bright square in the centre
    out = resize_center_crop(Image.fromarray(pixels), 64, 64)
    assert out.size == (64, 64)
    arr = np.asarray(out).astype(float)[..., 0]
    assert arr[28:36, 28:36].mean() > 200  # still in the middle after scale + crop
    assert np.allclose(arr, arr[::-1, ::-1], atol=2)  # symmetric input stays symmetric: crop is centred


def test_load_image_errors(tmp_path):
    with pytest.raises(UserError, match='image not found'):
        load_image(tmp_path / 'missing.png')
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not an image')
    with pytest.raises(UserError, match='cannot read image'):
        load_image(bad)
    good = tmp_path / 'good.png'
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(good)  # grayscale becomes RGB
    assert load_image(good).mode == 'RGB' and load_image(good).size == (6, 4)
