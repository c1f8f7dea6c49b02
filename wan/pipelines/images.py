"""Conditioning-image preprocessing, exactly as the reference does it (spec 7.2, 7.3, 15.3, 15.27)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, or raise a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'image not found: {path} (pass an existing file with --image)')
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except Exception as exc:  # PIL raises several types for unreadable files
        raise UserError(f'cannot read image {path}: {exc} (pass a PNG/JPEG file with --image)') from exc


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float32 in [-1, 1], as torchvision's to_tensor then (x - 0.5) / 0.5."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    return x.to(torch.float32).div(255).sub_(0.5).div_(0.5)


def i2v_latent_size(height: int, width: int, max_area: int, vae_stride: tuple[int, int, int],
                    patch_size: tuple[int, int, int]) -> tuple[int, int]:
    """Latent (h, w) of I2V-A14B: keep the image's aspect ratio within `max_area` pixels (spec 7.2).

    Floor to a multiple of the patch size in latent space, with numpy float64 floor division.
    """
    aspect_ratio = height / width
    lat_h = round(np.sqrt(max_area * aspect_ratio) // vae_stride[1] // patch_size[1] * patch_size[1])
    lat_w = round(np.sqrt(max_area / aspect_ratio) // vae_stride[2] // patch_size[2] * patch_size[2])
    return int(lat_h), int(lat_w)


def resize_bicubic(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, H, W] -> [3, height, width]: bicubic on the CPU in fp32, no antialias, no clamp, no crop."""
    return F.interpolate(image[None].cpu(), size=(height, width), mode='bicubic')[0]


def best_output_size(width: int, height: int, dw: int, dh: int, max_area: int) -> tuple[int, int]:
    """TI2V output (width, height): multiples of (dw, dh) within `max_area`, aspect ratio closest (spec 7.3).

    Two candidates, width-first and height-first; ties go to the height-first one.
    """
    ratio = width / height
    ow = (max_area * ratio) ** 0.5
    oh = max_area / ow

    ow1 = int(ow // dw * dw)
    oh1 = int(max_area / ow1 // dh * dh)
    ratio1 = ow1 / oh1

    oh2 = int(oh // dh * dh)
    ow2 = int(max_area / oh2 // dw * dw)
    ratio2 = ow2 / oh2

    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def resize_center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale with PIL LANCZOS so the image covers (width, height), then crop the centre (spec 7.3)."""
    scale = max(width / img.width, height / img.height)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    left = (img.width - width) // 2
    top = (img.height - height) // 2
    return img.crop((left, top, left + width, top + height))

