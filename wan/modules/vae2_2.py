"""Wan2.2 VAE: causal 3D VAE, 48 latent channels, stride 4x16x16, `Wan2.2_VAE.pth` (spec 6.3).

Used by ti2v-5B. Pixels are folded 2x2 into 12 channels before the encoder and unfolded after the
decoder; encoder and decoder levels carry parameter-free AvgDown3D / DupUp3D shortcuts; the
decoder has its own base width (256 in the release). Module names equal the official state dict
(Appendix A.2); widths are read from the checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .vae_common import (AvgDown3D, CausalCache, CausalDecoder, CausalEncoder, CausalVAEModel,
                         DupUp3D, Resample, ResidualBlock, WanVAE, run_blocks, tensor_shape)

__all__ = ['Wan2_2_VAE', 'build_vae22']

TEMPORAL_DOWNSAMPLE = (False, True, True)  # `Wan2_2_VAE(temperal_downsample=...)` (spec 6.3)
PATCH = 2
STRIDE = (4, 16, 16)  # time, height, width of one latent pixel (PATCH included)


class DownBlock(nn.Module):
    """Residual blocks (+ Resample) plus an AvgDown3D shortcut of the block input."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        blocks = [ResidualBlock(in_dim, out_dim)]
        blocks += [ResidualBlock(out_dim, out_dim) for _ in range(num_res_blocks - 1)]
        if down:
            blocks.append(Resample(out_dim, 'downsample3d' if temporal else 'downsample2d'))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return run_blocks(self.downsamples, x, cache) + self.avg_shortcut(x)


class UpBlock(nn.Module):
    """Residual blocks (+ Resample keeping the width) plus a DupUp3D shortcut when upsampling."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        blocks = [ResidualBlock(in_dim, out_dim)]
        blocks += [ResidualBlock(out_dim, out_dim) for _ in range(num_res_blocks - 1)]
        if up:
            mode = 'upsample3d' if temporal else 'upsample2d'
            blocks.append(Resample(out_dim, mode, out_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        y = run_blocks(self.upsamples, x, cache)
        if self.avg_shortcut is not None:
            y = y.add_(self.avg_shortcut(x, cache.first_chunk))
        return y


def build_vae22(dim: int = 160, dec_dim: int = 256, z_dim: int = 48,
                dim_mult: tuple[int, ...] = (1, 2, 4, 4), num_res_blocks: int = 2
                ) -> CausalVAEModel:
    """The Wan2.2 `WanVAE_` layout: nested Down/Up blocks (spec 6.3)."""
    if len(dim_mult) != 4:
        raise ValueError(f'the Wan2.2 VAE has 4 levels, got dim_mult={dim_mult}')
    dims = [dim * m for m in (1, *dim_mult)]
    encoder = CausalEncoder(3 * PATCH * PATCH, dims[0], nn.Sequential(*(
        DownBlock(dims[i], dims[i + 1], num_res_blocks, temporal=i < 3 and TEMPORAL_DOWNSAMPLE[i],
                  down=i < 3) for i in range(4))), dims[-1], z_dim * 2)
    temporal_upsample = TEMPORAL_DOWNSAMPLE[::-1]
    dims = [dec_dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
    decoder = CausalDecoder(z_dim, dims[0], nn.Sequential(*(
        UpBlock(dims[i], dims[i + 1], num_res_blocks + 1, temporal=i < 3 and temporal_upsample[i],
                up=i < 3) for i in range(4))), dims[-1], 3 * PATCH * PATCH)
    return CausalVAEModel(encoder, decoder, z_dim, patch=PATCH, stride=STRIDE)


def infer_vae22_config(tensors: dict[str, torch.Tensor], source: str | Path) -> dict:
    """dim, dec_dim, z_dim, dim_mult, num_res_blocks from a Wan2.2 VAE state dict's shapes."""
    dim = tensor_shape(tensors, 'encoder.conv1.weight', source)[0]
    z_dim = tensor_shape(tensors, 'conv2.weight', source)[0]
    dim_mult = tuple(
        tensor_shape(tensors, f'encoder.downsamples.{i}.downsamples.0.residual.2.weight', source)[0]
        // dim for i in range(4))
    dec_dim = tensor_shape(tensors, 'decoder.conv1.weight', source)[0] // dim_mult[-1]
    num_res_blocks = 0
    while f'encoder.downsamples.0.downsamples.{num_res_blocks}.residual.2.weight' in tensors:
        num_res_blocks += 1
    return dict(dim=dim, dec_dim=dec_dim, z_dim=z_dim, dim_mult=dim_mult,
                num_res_blocks=num_res_blocks)


class Wan2_2_VAE(WanVAE):
    """`encode`/`decode` lists of videos/latents; see `WanVAE`. Computes in fp32 by default."""

    # Latent normalisation, hard-coded in the reference `Wan2_2_VAE.__init__` (Wan-Video/Wan2.2
    # wan/modules/vae2_2.py); the same values are `latents_mean` / `latents_std` of the diffusers
    # Wan2.2-TI2V-5B `AutoencoderKLWan` config.
    mean = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
            -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
            -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
            -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
            -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
            0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
    std = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
           0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
           0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
           0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
           0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
           0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)
    stride = STRIDE

    @classmethod
    def build_from(cls, tensors: dict[str, torch.Tensor], source: str | Path) -> CausalVAEModel:
        return build_vae22(**infer_vae22_config(tensors, source))
