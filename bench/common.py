"""Shared by the benchmark scripts: the device, the environment and commit a result belongs to, and
writing the result."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """WAN_COMMIT when set (the GPU machine's copy of the tree may carry a stale .git), else HEAD's
    hash ('+dirty' with uncommitted changes)."""
    if os.environ.get('WAN_COMMIT'):
        return os.environ['WAN_COMMIT']

    def git(*args: str) -> str:
        return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git('rev-parse', 'HEAD') + ('+dirty' if git('status', '--porcelain') else '')
    except (OSError, subprocess.CalledProcessError):
        return None


def bench_device(smoke: bool):
    """The CPU for a --smoke check, else the first GPU; exits with a hint when there is none."""
    import torch
    if smoke:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise SystemExit('no GPU: run with --smoke for the CPU check')
    return torch.device('cuda', 0)


def environment(device) -> dict:
    """The header of a result: device name ('cpu' off the GPU), torch, CUDA and Python versions."""
    from importlib import metadata

    import torch
    versions = {}
    for package in ('flash-attn-4', 'fa3-fwd', 'flash-attn', 'triton', 'diffusers'):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
            'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': sys.version.split()[0],
            'packages': versions}


def write_result(stem: str, record: dict, out_dir: Path | None = None) -> Path:
    """`record` with the commit and the exact command added, as JSON in `out_dir` (default $OUT,
    else bench/results), named `<stem>-<date>-<time>.json`; prints and returns the path."""
    import datetime
    import json
    import shlex
    record = {'git_commit': git_commit(), 'command': shlex.join([sys.executable, *sys.argv]), **record}
    out_dir = out_dir or Path(os.environ.get('OUT') or ROOT / 'bench' / 'results')
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f'{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json'
    path.write_text(json.dumps(record, indent=2))
    print(f'wrote {path}')
    return path
