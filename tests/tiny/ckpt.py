"""Tiny random checkpoint folders in the official layouts (spec 3.9), one per task.

    Wan2.2-T2V-A14B-like: high_noise_model/, low_noise_model/ (t2v, in 16 / out 16), T5, Wan2.1_VAE.pth
    Wan2.2-I2V-A14B-like: the same with model_type i2v, in_dim 36
    Wan2.2-TI2V-5B-like:  config.json + safetensors at the root (ti2v, in 48 / out 48), T5, Wan2.2_VAE.pth

The T5 keeps the real width 4096 (the DiT's text_dim is fixed) but is tiny otherwise.
`tiny_checkpoints` is a session fixture: `tiny_checkpoints('t2v-A14B')` -> folder, written once.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny.dit import write_dit_checkpoint
from tests.tiny.t5 import write_t5
from tests.tiny.vae import write_vae21, write_vae22
from wan.configs import WAN_CONFIGS

DIT = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2)
T5 = dict(dim=4096, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=1)
# VAE widths at the minimum: a CPU decode at the smallest supported sizes (480x832, 704x1280) costs
# seconds per hidden channel of its full-resolution layers.
VAE21_DIM = 2
VAE22_DIM, VAE22_DEC_DIM = 2, 2

# task -> (model_type, in_dim, out_dim)
DIT_SHAPES = {'t2v-A14B': ('t2v', 16, 16), 'i2v-A14B': ('i2v', 36, 16), 'ti2v-5B': ('ti2v', 48, 48)}


def write_task_checkpoint(folder: str | Path, task: str, *, shards: int = 1, seed: int = 0) -> Path:
    """Write a complete tiny checkpoint folder for `task` (t2v-A14B, i2v-A14B or ti2v-5B)."""
    folder = Path(folder)
    config = WAN_CONFIGS[task]
    write_t5(folder, seed=seed, **T5)
    if config.vae_checkpoint == 'Wan2.2_VAE.pth':
        write_vae22(folder / config.vae_checkpoint, dim=VAE22_DIM, dec_dim=VAE22_DEC_DIM, seed=seed)
    else:
        write_vae21(folder / config.vae_checkpoint, dim=VAE21_DIM, seed=seed)
    model_type, in_dim, out_dim = DIT_SHAPES[task]
    if 'boundary' in config:
        for i, sub in enumerate((config.high_noise_checkpoint, config.low_noise_checkpoint)):
            write_dit_checkpoint(folder / sub, model_type=model_type, in_dim=in_dim, out_dim=out_dim,
                                 shards=shards, seed=seed + 1 + i, **DIT)
    else:
        write_dit_checkpoint(folder, model_type=model_type, in_dim=in_dim, out_dim=out_dim,
                             shards=shards, seed=seed + 1, **DIT)
    return folder


@pytest.fixture(scope='session')
def tiny_checkpoints(tmp_path_factory):
    """Callable task -> a tiny official-layout checkpoint folder, written once per session."""
    made: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in made:
            made[task] = write_task_checkpoint(tmp_path_factory.mktemp(task), task,
                                               shards=2 if task == 'ti2v-5B' else 1)
        return made[task]
    return get
