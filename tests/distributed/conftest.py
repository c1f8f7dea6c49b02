"""One 2-process CPU/gloo launch per session, shared by every test in tests/distributed.

The launch sets the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and runs tests/distributed/worker.py in each process; starting Python + torch twice
is most of the cost, so every case runs in that one launch.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.distributed.worker import TASK
from tests.tiny.ckpt import write_task_checkpoint

REPO = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 150  # the whole launch; it takes ~30 s on a loaded 2-core machine
STOP_TIMEOUT_S = 20     # rank 0 must be gone this long after rank 1 failed


@dataclass
class Launch:
    folder: Path
    ckpt: Path
    results: list[dict]
    returncodes: list[int | None]
    stderr: list[str]
    failure_to_exit_s: float | None  # from rank 1 raising to rank 0 exiting


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def two_ranks(tmp_path_factory) -> Launch:
    folder = tmp_path_factory.mktemp('two_ranks')
    ckpt = write_task_checkpoint(folder / 'ckpt', TASK)
    port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE='2',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), OMP_NUM_THREADS='1',
                   PYTHONPATH=str(REPO))
        log = open(folder / f'rank{rank}.log', 'w+')
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, '-m', 'tests.distributed.worker', str(folder)],
                                      cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    exited_at = None
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if procs[0].poll() is not None:
            exited_at = time.time()
    finally:
        for proc in procs:  # rank 1 sleeps after its injected failure; anything left is ended here
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    missing = [r for r in range(2) if not (folder / f'rank{r}.pt').is_file()]
    if missing:
        pytest.fail(f'ranks {missing} wrote no results; logs:\n' + '\n'.join(texts))
    raised = folder / 'raised_at'
    delay = exited_at - float(raised.read_text()) if exited_at and raised.is_file() else None
    return Launch(folder, ckpt, [torch.load(folder / f'rank{r}.pt') for r in range(2)],
                  [proc.returncode for proc in procs], texts, delay)
