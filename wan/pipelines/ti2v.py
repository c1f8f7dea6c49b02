"""Text/image-to-video 5B (spec 7.3). Text mode is T2V; image mode imposes the image latent on latent
frame 0 at the start and after every step, and gives that frame's tokens t = 0."""
from __future__ import annotations

import torch
from PIL import Image

from .denoise import DenoiseInputs, seq_len_for
from .images import best_output_size, resize_center_crop, to_tensor
from .t2v import latent_frames, prepare_t2v


def prepare_ti2v(image: Image.Image | None, size: tuple[int, int], frame_num: int, *, vae,
                 vae_stride: tuple[int, int, int], patch_size: tuple[int, int, int],
                 generator: torch.Generator, device: torch.device, sp_size: int = 1) -> DenoiseInputs:
    """`size` (width, height) is the output size in text mode and only an area in image mode."""
    if image is None:
        return prepare_t2v(size, frame_num, z_dim=vae.z_dim, vae_stride=vae_stride, patch_size=patch_size,
                           generator=generator, device=device, sp_size=sp_size)

    # output size: multiples of patch * stride (32 px) within the area, LANCZOS + centre crop
    width, height = best_output_size(image.width, image.height, patch_size[2] * vae_stride[2],
                                     patch_size[1] * vae_stride[1], size[0] * size[1])
    pixels = to_tensor(resize_center_crop(image, width, height)).to(device).unsqueeze(1)  # [3, 1, H, W]
    shape = (vae.z_dim, latent_frames(frame_num, vae_stride[0]), height // vae_stride[1], width // vae_stride[2])
    noise = torch.randn(shape, dtype=torch.float32, device=device, generator=generator)
    image_latent = vae.encode([pixels])[0].to(noise.dtype)  # [C, 1, h, w], broadcast over time

    mask = torch.ones_like(noise)
    mask[:, 0] = 0

    def reimpose(latents: torch.Tensor) -> torch.Tensor:
        return (1. - mask) * image_latent + mask * latents

    return DenoiseInputs(latents=reimpose(noise), seq_len=seq_len_for(shape, patch_size, sp_size),
                         token_mask=mask[0][:, ::patch_size[1], ::patch_size[2]], reimpose=reimpose,
                         size=(width, height), condition=pixels[:, 0])
