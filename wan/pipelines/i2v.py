"""Image-to-video A14B: noise, then `y` = 4 mask channels + the VAE latent of (image, F-1 zero frames) (spec 7.2)."""
from __future__ import annotations

import torch
from PIL import Image

from .denoise import DenoiseInputs, seq_len_for
from .images import i2v_latent_size, resize_bicubic, to_tensor
from .t2v import latent_frames


def first_frame_mask(frame_num: int, lat_h: int, lat_w: int, temporal_stride: int,
                     device: torch.device) -> torch.Tensor:
    """[stride, T_lat, h, w]: the `stride` pixel frames folded into latent frame 0 are given, no other (spec 15.18).

    Built as the reference builds it: a per-pixel-frame mask (1 for frame 0), frame 0 repeated
    `stride` times, folded into latent frames of `stride` pixel frames each.
    """
    mask = torch.ones(1, frame_num, lat_h, lat_w, device=device)
    mask[:, 1:] = 0
    mask = torch.cat([mask[:, :1].repeat_interleave(temporal_stride, dim=1), mask[:, 1:]], dim=1)
    mask = mask.view(1, mask.shape[1] // temporal_stride, temporal_stride, lat_h, lat_w)
    return mask.transpose(1, 2)[0]


def prepare_i2v(image: Image.Image, max_area: int, frame_num: int, *, vae, vae_stride: tuple[int, int, int],
                patch_size: tuple[int, int, int], generator: torch.Generator, device: torch.device,
                sp_size: int = 1) -> DenoiseInputs:
    """The output keeps the image's aspect ratio within `max_area`; the image is resized, never cropped."""
    pixels = to_tensor(image)
    lat_h, lat_w = i2v_latent_size(pixels.shape[1], pixels.shape[2], max_area, vae_stride, patch_size)
    height, width = lat_h * vae_stride[1], lat_w * vae_stride[2]
    shape = (vae.z_dim, latent_frames(frame_num, vae_stride[0]), lat_h, lat_w)

    # drawn before any conditioning work, as the reference does (spec 15.15)
    noise = torch.randn(shape, dtype=torch.float32, device=device, generator=generator)

    mask = first_frame_mask(frame_num, lat_h, lat_w, vae_stride[0], device)
    first = resize_bicubic(pixels, height, width)[:, None]
    video = torch.cat([first, torch.zeros(3, frame_num - 1, height, width)], dim=1).to(device)
    image_latent = vae.encode([video])[0]
    y = torch.cat([mask, image_latent.to(mask.dtype)])
    return DenoiseInputs(latents=noise, seq_len=seq_len_for(shape, patch_size, sp_size), y=y,
                         size=(width, height), condition=first[:, 0])
