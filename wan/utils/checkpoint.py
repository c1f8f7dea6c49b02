"""Reading checkpoints in the official layouts and assigning them strictly into meta-built modules.

Every error names the file and, where there is one, the key: a missing, unexpected or mis-shaped
tensor, a truncated shard or an index that points at an absent file.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

SAFETENSORS_STEM = 'diffusion_pytorch_model'


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read one `.safetensors` or torch-pickled (`.pth`, `.pt`, `.bin`) state dict onto the CPU.

    Both formats are memory-mapped, so a large file is not read into memory before use.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint file not found: {path}')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            return load_file(str(path), device='cpu')
        # mmap needs torch's zip format; older non-zip pickles are read whole
        state = torch.load(path, map_location='cpu', mmap=zipfile.is_zipfile(path), weights_only=True)
    except Exception as exc:  # the libraries raise many types for truncated or corrupt files
        raise CheckpointError(f'cannot read checkpoint {path} (truncated or corrupt?): {exc}') from exc
    if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f'checkpoint {path} does not hold a state dict of tensors')
    return state


def read_sharded(folder: str | Path, stem: str = SAFETENSORS_STEM
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Read `<stem>.safetensors` or the shards listed in `<stem>.safetensors.index.json`.

    Returns the tensors and, for error messages, the file each key came from.
    """
    folder = Path(folder)
    index = folder / f'{stem}.safetensors.index.json'
    single = folder / f'{stem}.safetensors'
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())['weight_map']
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f'cannot parse shard index {index}: {exc}') from exc
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f'shard index {index} lists missing files: {", ".join(missing)}')
        tensors: dict[str, torch.Tensor] = {}
        sources: dict[str, Path] = {}
        for name in files:
            shard = folder / name
            for key, value in read_tensors(shard).items():
                tensors[key] = value
                sources[key] = shard
        for key, name in weight_map.items():
            if key not in tensors:
                raise CheckpointError(f'shard {folder / name} lacks tensor {key!r} listed in {index}')
        return tensors, sources
    if single.is_file():
        tensors = read_tensors(single)
        return tensors, dict.fromkeys(tensors, single)
    raise CheckpointError(f'no {stem}.safetensors or {stem}.safetensors.index.json in {folder}')


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor],
              source: str | Path | dict[str, Path], dtype: torch.dtype | None = None) -> nn.Module:
    """Check `tensors` against `module`'s state dict and assign them (no copy when dtypes agree).

    `module` is typically built on the meta device. Floating tensors are converted to `dtype`
    when it is given, and keep their stored dtype otherwise.
    """
    def where(key: str) -> Path | str:
        return source.get(key, '?') if isinstance(source, dict) else source

    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        src = source if not isinstance(source, dict) else Path(next(iter(source.values()), '?')).parent
        raise CheckpointError(f'{src}: missing tensor {missing[0]!r}{more}')
    for key, value in tensors.items():
        if key not in expected:
            raise CheckpointError(f'{where(key)}: unexpected tensor {key!r}')
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f'{where(key)}: tensor {key!r} has shape {tuple(value.shape)}, '
                                  f'the model expects {tuple(expected[key].shape)}')
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module
