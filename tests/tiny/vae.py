"""Tiny Wan2.1 / Wan2.2 VAE checkpoints in the official layout, and their diffusers key names.

`write_vae21(path)` / `write_vae22(path)` save a torch `.pth` state dict with the official key names
(Appendix A of the spec) at small widths, with seeded random non-zero weights. The latent width
stays 16 / 48 (the latent mean/std constants fix it); only the hidden widths shrink.

`to_diffusers(state_dict, version)` renames an official state dict to diffusers'
`AutoencoderKLWan` names, and `diffusers_config(...)` gives that model's constructor arguments.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from wan.modules.vae2_1 import build_vae21
from wan.modules.vae2_2 import build_vae22


def random_weights(model: torch.nn.Module, seed: int = 0, device: str | torch.device = 'cpu'
                   ) -> dict[str, torch.Tensor]:
    """Seeded random fp32 weights for every tensor of `model`'s state dict (meta or real).

    Convolutions get std 1/sqrt(fan_in), biases std 0.05, norm gains 1 + 0.1*N(0, 1), so the
    activations keep a moderate scale through the network (the RMS norms bound them anyway).
    """
    gen = torch.Generator(device).manual_seed(seed)
    out = {}
    for key, ref in model.state_dict().items():
        value = torch.randn(ref.shape, generator=gen, device=device)
        if key.endswith('gamma'):
            value = 1 + 0.1 * value
        elif key.endswith('bias'):
            value = 0.05 * value
        else:
            value = value / ref[0].numel() ** 0.5
        out[key] = value
    return out


def vae21_tensors(dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device('meta'):
        model = build_vae21(dim=dim)
    return random_weights(model, seed)


def vae22_tensors(dim: int = 8, dec_dim: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device('meta'):
        model = build_vae22(dim=dim, dec_dim=dec_dim)
    return random_weights(model, seed)


def write_vae21(path: str | Path, dim: int = 8, seed: int = 0) -> Path:
    """A Wan2.1-layout VAE (z_dim 16, dim_mult 1,2,4,4, 2 res blocks) with base width `dim`."""
    path = Path(path)
    torch.save(vae21_tensors(dim, seed), path)
    return path


def write_vae22(path: str | Path, dim: int = 8, dec_dim: int = 12, seed: int = 0) -> Path:
    """A Wan2.2-layout VAE (z_dim 48), encoder base width `dim`, decoder base width `dec_dim`."""
    path = Path(path)
    torch.save(vae22_tensors(dim, dec_dim, seed), path)
    return path


def diffusers_config(version: str, dim: int, dec_dim: int | None = None) -> dict:
    """Constructor arguments of diffusers' `AutoencoderKLWan` for the same architecture."""
    if version == '2.1':
        return dict(base_dim=dim, z_dim=16)
    return dict(base_dim=dim, decoder_base_dim=dec_dim, z_dim=48, is_residual=True, in_channels=12,
                out_channels=12, patch_size=2, scale_factor_spatial=16)


_RESBLOCK = {'residual.0.gamma': 'norm1.gamma', 'residual.2.': 'conv1.',
             'residual.3.gamma': 'norm2.gamma', 'residual.6.': 'conv2.',
             'shortcut.': 'conv_shortcut.'}


def _resblock(rest: str) -> str:
    for ours, theirs in _RESBLOCK.items():
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    return rest  # resample.1.*, time_conv.*


def to_diffusers(state: dict[str, torch.Tensor], version: str, num_res_blocks: int = 2
                 ) -> dict[str, torch.Tensor]:
    """Official key names -> diffusers `AutoencoderKLWan` key names (same tensors)."""
    out = {}
    for key, value in state.items():
        new = key
        if key.startswith('conv1.'):
            new = 'quant_conv.' + key[6:]
        elif key.startswith('conv2.'):
            new = 'post_quant_conv.' + key[6:]
        elif m := re.fullmatch(r'(encoder|decoder)\.conv1\.(.*)', key):
            new = f'{m[1]}.conv_in.{m[2]}'
        elif m := re.fullmatch(r'(encoder|decoder)\.head\.0\.gamma', key):
            new = f'{m[1]}.norm_out.gamma'
        elif m := re.fullmatch(r'(encoder|decoder)\.head\.2\.(.*)', key):
            new = f'{m[1]}.conv_out.{m[2]}'
        elif m := re.fullmatch(r'(encoder|decoder)\.middle\.1\.(.*)', key):
            new = f'{m[1]}.mid_block.attentions.0.{m[2]}'
        elif m := re.fullmatch(r'(encoder|decoder)\.middle\.([02])\.(.*)', key):
            new = f'{m[1]}.mid_block.resnets.{int(m[2]) // 2}.{_resblock(m[3])}'
        elif version == '2.1' and (m := re.fullmatch(r'encoder\.downsamples\.(\d+)\.(.*)', key)):
            new = f'encoder.down_blocks.{m[1]}.{_resblock(m[2])}'
        elif version == '2.1' and (m := re.fullmatch(r'decoder\.upsamples\.(\d+)\.(.*)', key)):
            # flat list -> up_blocks[level]: (num_res_blocks + 1) resnets then one upsampler
            level, j = divmod(int(m[1]), num_res_blocks + 2)
            part = (f'resnets.{j}.{_resblock(m[2])}' if j <= num_res_blocks
                    else f'upsamplers.0.{m[2]}')
            new = f'decoder.up_blocks.{level}.{part}'
        elif version == '2.2' and (m := re.fullmatch(
                r'encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(.*)', key)):
            j = int(m[2])
            part = f'resnets.{j}.{_resblock(m[3])}' if j < num_res_blocks else f'downsampler.{m[3]}'
            new = f'encoder.down_blocks.{m[1]}.{part}'
        elif version == '2.2' and (m := re.fullmatch(
                r'decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(.*)', key)):
            j = int(m[2])
            part = f'resnets.{j}.{_resblock(m[3])}' if j <= num_res_blocks else f'upsampler.{m[3]}'
            new = f'decoder.up_blocks.{m[1]}.{part}'
        else:
            raise KeyError(f'no diffusers name for {key!r}')
        out[new] = value
    return out
