"""Tiny random DiT checkpoints in the official layout, and the map to diffusers' key layout.

`write_dit_checkpoint` writes what a user downloads (config.json + safetensors, single file or
shards with an index), so tests and pipelines load it through `WanModel.from_pretrained` exactly
like a release. `to_diffusers_state_dict` / `diffusers_config` describe the same weights for
diffusers' `WanTransformer3DModel` (used by the parity test and bench/bench_dit.py).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan.modules.model import WanModel

STEM = 'diffusion_pytorch_model'


def random_init(key: str, shape: tuple[int, ...], dim: int) -> tuple[float, float]:
    """(mean, std) of the normal distribution a random test weight is drawn from.

    Non-zero everywhere and scaled so that activations stay O(1): modulation as the reference
    initialises it, norm weights near 1, linear/conv weights 1/sqrt(fan_in), small biases.
    """
    if key.endswith('modulation'):
        return 0.0, dim**-0.5
    if 'norm' in key and key.endswith('weight'):
        return 1.0, 0.1
    if len(shape) >= 2:
        return 0.0, math.prod(shape[1:])**-0.5
    return 0.0, 0.05


def random_dit_state_dict(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32
                          ) -> dict[str, torch.Tensor]:
    """Random weights (see random_init) for a WanModel of `config`, on the CPU."""
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in WanModel(**config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        mean, std = random_init(key, tuple(shape), config['dim'])
        state[key] = (mean + std * torch.randn(shape, generator=generator)).to(dtype).contiguous()
    return state


def write_dit_checkpoint(folder: str | Path, *, model_type: str = 't2v', in_dim: int = 16,
                         out_dim: int = 16, dim: int = 32, ffn_dim: int = 64, num_heads: int = 2,
                         num_layers: int = 2, text_len: int = 512, freq_dim: int = 256,
                         shards: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json and random weights (one file, or `shards` files + index) into `folder`.

    text_dim stays 4096: the official config.json does not store it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(model_type=model_type, dim=dim, ffn_dim=ffn_dim, freq_dim=freq_dim, in_dim=in_dim,
                  num_heads=num_heads, num_layers=num_layers, out_dim=out_dim, text_len=text_len,
                  eps=1e-6)
    state = random_dit_state_dict(config, seed, dtype)
    (folder / 'config.json').write_text(json.dumps(
        {'_class_name': 'WanModel', '_diffusers_version': '0.33.0', **config}, indent=2))
    if shards == 1:
        save_file(state, str(folder / f'{STEM}.safetensors'))
        return folder
    keys = list(state)
    per_shard = math.ceil(len(keys) / shards)
    weight_map = {}
    for i in range(shards):
        name = f'{STEM}-{i + 1:05d}-of-{shards:05d}.safetensors'
        part = keys[i * per_shard:(i + 1) * per_shard]
        save_file({k: state[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / f'{STEM}.safetensors.index.json').write_text(json.dumps(
        {'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=2))
    return folder


# official name -> diffusers name; {} is the block index. norm3 (cross-attention, affine) is
# diffusers' norm2 (diffusers numbers the norms in the order they are used).
_TOP = {
    'text_embedding.0': 'condition_embedder.text_embedder.linear_1',
    'text_embedding.2': 'condition_embedder.text_embedder.linear_2',
    'time_embedding.0': 'condition_embedder.time_embedder.linear_1',
    'time_embedding.2': 'condition_embedder.time_embedder.linear_2',
    'time_projection.1': 'condition_embedder.time_proj',
    'head.head': 'proj_out',
    'head.modulation': 'scale_shift_table',
    'patch_embedding': 'patch_embedding',
}
_BLOCK = {
    'modulation': 'scale_shift_table',
    'self_attn.q': 'attn1.to_q', 'self_attn.k': 'attn1.to_k', 'self_attn.v': 'attn1.to_v',
    'self_attn.o': 'attn1.to_out.0', 'self_attn.norm_q': 'attn1.norm_q', 'self_attn.norm_k': 'attn1.norm_k',
    'cross_attn.q': 'attn2.to_q', 'cross_attn.k': 'attn2.to_k', 'cross_attn.v': 'attn2.to_v',
    'cross_attn.o': 'attn2.to_out.0', 'cross_attn.norm_q': 'attn2.norm_q', 'cross_attn.norm_k': 'attn2.norm_k',
    'norm3': 'norm2',
    'ffn.0': 'ffn.net.0.proj', 'ffn.2': 'ffn.net.2',
}
_SUFFIX = re.compile(r'^(.*?)(\.weight|\.bias)?$')


def diffusers_key(key: str) -> str:
    """Official WanModel key -> diffusers WanTransformer3DModel key."""
    block = re.match(r'^blocks\.(\d+)\.(.*)$', key)
    stem, suffix = _SUFFIX.match(block.group(2) if block else key).groups()
    table = _BLOCK if block else _TOP
    if stem not in table:
        raise KeyError(f'no diffusers name for {key!r}')
    return (f'blocks.{block.group(1)}.' if block else '') + table[stem] + (suffix or '')


def to_diffusers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same tensors (no copies) under diffusers' names."""
    return {diffusers_key(k): v for k, v in state.items()}


def diffusers_config(config: dict) -> dict:
    """WanTransformer3DModel kwargs equal to a WanModel config."""
    return dict(patch_size=tuple(config.get('patch_size', (1, 2, 2))),
                num_attention_heads=config['num_heads'],
                attention_head_dim=config['dim'] // config['num_heads'],
                in_channels=config['in_dim'], out_channels=config['out_dim'],
                text_dim=config.get('text_dim', 4096), freq_dim=config['freq_dim'],
                ffn_dim=config['ffn_dim'], num_layers=config['num_layers'],
                cross_attn_norm=True, qk_norm='rms_norm_across_heads', eps=config['eps'])
