"""Wan2.1 VAE: causal 3D VAE, 16 latent channels, stride 4x8x8, `Wan2.1_VAE.pth` (spec 6.2).

Used by t2v-A14B, i2v-A14B, s2v-14B and animate-14B. Module names equal the official state dict
(Appendix A.1); the widths are read from the checkpoint, so small test files load the same way.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .vae_common import (CausalDecoder, CausalEncoder, CausalVAEModel, Resample, ResidualBlock,
                         WanVAE, tensor_shape)

__all__ = ['Wan2_1_VAE', 'build_vae21']

TEMPORAL_DOWNSAMPLE = (False, True, True)  # the `_video_vae` factory's value (spec 6.2)
STRIDE = (4, 8, 8)  # time, height, width of one latent pixel


def build_vae21(dim: int = 96, z_dim: int = 16, dim_mult: tuple[int, ...] = (1, 2, 4, 4),
                num_res_blocks: int = 2) -> CausalVAEModel:
    """The Wan2.1 `WanVAE_` layout: flat `downsamples`/`upsamples` lists (spec 6.2)."""
    if len(dim_mult) != 4:
        raise ValueError(f'the Wan2.1 VAE has 4 levels, got dim_mult={dim_mult}')
    dims = [dim * m for m in (1, *dim_mult)]
    blocks = []
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if i < 3:
            mode = 'downsample3d' if TEMPORAL_DOWNSAMPLE[i] else 'downsample2d'
            blocks.append(Resample(out_dim, mode))
    encoder = CausalEncoder(3, dims[0], nn.Sequential(*blocks), dims[-1], z_dim * 2)

    temporal_upsample = TEMPORAL_DOWNSAMPLE[::-1]
    dims = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
    blocks = []
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0:
            in_dim //= 2  # the previous level's upsample conv halved the width
        for _ in range(num_res_blocks + 1):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if i < 3:
            mode = 'upsample3d' if temporal_upsample[i] else 'upsample2d'
            blocks.append(Resample(out_dim, mode, out_dim=out_dim // 2))
    decoder = CausalDecoder(z_dim, dims[0], nn.Sequential(*blocks), dims[-1], 3)
    return CausalVAEModel(encoder, decoder, z_dim, patch=1, stride=STRIDE)


def infer_vae21_config(tensors: dict[str, torch.Tensor], source: str | Path) -> dict:
    """dim, z_dim, dim_mult and num_res_blocks from the tensor shapes of a Wan2.1 VAE state dict."""
    dim = tensor_shape(tensors, 'encoder.conv1.weight', source)[0]
    z_dim = tensor_shape(tensors, 'conv2.weight', source)[0]
    num_res_blocks = 0
    while f'encoder.downsamples.{num_res_blocks}.residual.2.weight' in tensors:
        num_res_blocks += 1
    if num_res_blocks == 0:
        tensor_shape(tensors, 'encoder.downsamples.0.residual.2.weight', source)  # raises
    # level i of the flat encoder list starts at i * (num_res_blocks + 1) (blocks, then a Resample)
    dim_mult = tuple(
        tensor_shape(tensors, f'encoder.downsamples.{i * (num_res_blocks + 1)}.residual.2.weight',
                     source)[0] // dim for i in range(4))
    return dict(dim=dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=num_res_blocks)


class Wan2_1_VAE(WanVAE):
    """`encode`/`decode` lists of videos/latents; see `WanVAE`. Computes in fp32 by default."""

    # Latent normalisation, hard-coded in the reference `Wan2_1_VAE.__init__` (Wan-Video/Wan2.2
    # wan/modules/vae2_1.py); the same values are diffusers' `AutoencoderKLWan` defaults
    # `latents_mean` / `latents_std` (diffusers 0.42.1, models/autoencoders/autoencoder_kl_wan.py).
    mean = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
    std = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
           3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
    stride = STRIDE

    @classmethod
    def build_from(cls, tensors: dict[str, torch.Tensor], source: str | Path) -> CausalVAEModel:
        return build_vae21(**infer_vae21_config(tensors, source))
