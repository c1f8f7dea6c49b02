"""Text-to-video: pure noise of the target shape (spec 7.1)."""
from __future__ import annotations

import torch

from .denoise import DenoiseInputs, seq_len_for


def latent_frames(frame_num: int, temporal_stride: int) -> int:
    return (frame_num - 1) // temporal_stride + 1


def prepare_t2v(size: tuple[int, int], frame_num: int, *, z_dim: int, vae_stride: tuple[int, int, int],
                patch_size: tuple[int, int, int], generator: torch.Generator, device: torch.device,
                sp_size: int = 1) -> DenoiseInputs:
    """`size` is (width, height) in pixels; noise is fp32 from `generator` on `device`."""
    width, height = size
    shape = (z_dim, latent_frames(frame_num, vae_stride[0]), height // vae_stride[1], width // vae_stride[2])
    noise = torch.randn(shape, dtype=torch.float32, device=device, generator=generator)
    return DenoiseInputs(latents=noise, seq_len=seq_len_for(shape, patch_size, sp_size), size=(width, height))
