"""Which files a task needs in its checkpoint folder, checked before anything loads, and the loaders.

Official layouts (spec 3.9): A14B tasks keep two experts in `high_noise_model/` and `low_noise_model/`,
TI2V-5B keeps its one DiT at the folder root; all keep the umT5 encoder, its tokenizer and a VAE.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..utils.checkpoint import SAFETENSORS_STEM
from .denoise import DENSE, HIGH, LOW


def dit_folders(config, ckpt_dir: str | Path) -> dict[str, Path]:
    """Expert name -> folder holding its config.json and safetensors."""
    ckpt_dir = Path(ckpt_dir)
    if 'boundary' in config:
        return {HIGH: ckpt_dir / config.high_noise_checkpoint, LOW: ckpt_dir / config.low_noise_checkpoint}
    return {DENSE: ckpt_dir}


def _missing_dit_files(folder: Path, ckpt_dir: Path) -> list[str]:
    rel = folder.relative_to(ckpt_dir)
    missing = []
    if not (folder / 'config.json').is_file():
        missing.append(str(rel / 'config.json'))
    index = folder / f'{SAFETENSORS_STEM}.safetensors.index.json'
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())['weight_map'].values()))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f'cannot parse shard index {index}: {exc}') from exc
        missing += [str(rel / s) for s in shards if not (folder / s).is_file()]
    elif not (folder / f'{SAFETENSORS_STEM}.safetensors').is_file():
        missing.append(str(rel / f'{SAFETENSORS_STEM}.safetensors.index.json'))
    return missing


def missing_files(config, ckpt_dir: str | Path) -> list[str]:
    """Files (relative to `ckpt_dir`) the task needs and the folder lacks."""
    ckpt_dir = Path(ckpt_dir)
    missing = [name for name in (config.t5_checkpoint, config.vae_checkpoint) if not (ckpt_dir / name).is_file()]
    tokenizer = ckpt_dir / config.t5_tokenizer
    if not tokenizer.is_dir() or not any(tokenizer.iterdir()):
        missing.append(f'{config.t5_tokenizer}/ (tokenizer files)')
    for folder in dit_folders(config, ckpt_dir).values():
        missing += _missing_dit_files(folder, ckpt_dir)
    return missing


def check_checkpoint_dir(config, ckpt_dir: str | Path, task: str) -> None:
    """Raise a CheckpointError naming every missing file; cheap, run before loading anything."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f'checkpoint folder not found: {ckpt_dir} (download the {task} weights '
                              f'there or pass --ckpt_dir)')
    missing = missing_files(config, ckpt_dir)
    if missing:
        raise CheckpointError(f'checkpoint folder {ckpt_dir} is incomplete for {task}, missing: '
                              f'{", ".join(missing)} (re-download the official weights or fix --ckpt_dir)')


# The loaders below are the seam a benchmark patches to inject in-memory models.

def load_text_encoder(config, ckpt_dir: str | Path):
    from ..modules.t5 import T5Encoder
    ckpt_dir = Path(ckpt_dir)
    return T5Encoder(ckpt_dir / config.t5_checkpoint, ckpt_dir / config.t5_tokenizer,
                     text_len=config.text_len, dtype=config.t5_dtype, device='cpu')


def decode_options(dtype: torch.dtype):
    """The VAE's decode levers for `dtype`: none in fp32 (the reference's path); in bf16 the ones
    measured fastest on an H200 (channels-last, lean norm; bench/NOTES.md)."""
    from ..modules.vae_common import DecodeOptions
    return DecodeOptions(channels_last=True, norm='lean') if dtype == torch.bfloat16 else DecodeOptions()


def load_vae(config, ckpt_dir: str | Path, device: torch.device, dtype: torch.dtype = torch.float32):
    """The task's VAE in `dtype` (bf16: within bf16 rounding of fp32) with `decode_options(dtype)`."""
    options = decode_options(dtype)
    path = Path(ckpt_dir) / config.vae_checkpoint
    if config.vae_checkpoint == 'Wan2.2_VAE.pth':
        from ..modules.vae2_2 import Wan2_2_VAE
        return Wan2_2_VAE(path, dtype=dtype, device=device, options=options)
    from ..modules.vae2_1 import Wan2_1_VAE
    return Wan2_1_VAE(path, dtype=dtype, device=device, options=options)


def load_dit(folder: str | Path, dtype: torch.dtype | None, device: torch.device) -> nn.Module:
    from ..modules.model import WanModel
    model = WanModel.from_pretrained(folder, dtype=dtype, device=device)
    return model.eval().requires_grad_(False)


def compile_dit(model: nn.Module) -> nn.Module:
    """Regional torch.compile: every transformer block compiled in place, in the spirit of diffusers'
    `compile_repeated_blocks`. The blocks share one code object, so two compiled graphs serve all
    of them (block 0, whose input is the bf16 patch embedding, and the blocks after it, whose input
    is the fp32 residual stream) and both A14B experts; attention is one opaque operator in them
    (see `attention`). Elementwise fp32 islands are fused, so results match the eager path up to
    fp32 rounding."""
    for block in model.blocks:
        block.compile(dynamic=False)
    return model
