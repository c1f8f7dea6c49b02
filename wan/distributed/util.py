"""Process group from the torchrun environment, rank helpers, rank-0 broadcasts, failing together.

    device = init_distributed()            # reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    with failing_together():               # an exception here stops every other rank within ~1 s
        seed = broadcast_object(seed)      # rank 0's value everywhere (spec 9.3)
        ...
    finish()                               # barrier, then the process group is destroyed

Failure propagation: torchrun already stops the other workers of a node when one exits non-zero,
but not the workers on other nodes, and nothing does so under other launchers. So each rank runs a
small watcher thread that polls a key in the rendezvous store (the TCPStore behind MASTER_ADDR:
MASTER_PORT) once a second; a rank that fails sets the key, and every other rank prints who failed
and exits with code 1, even while blocked in a collective. Losing the store (its host died) counts
as a failure too, except while the run is finishing normally.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

__all__ = ['WorldInfo', 'world_info', 'init_distributed', 'is_initialized', 'rank', 'world_size',
           'is_main', 'broadcast_object', 'barrier', 'failing_together', 'report_failure', 'finish',
           'PEER_FAILURE_EXIT_CODE']

PEER_FAILURE_EXIT_CODE = 1
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int


def world_info() -> WorldInfo:
    """This process's place in the launch, from torchrun's environment (defaults: one process)."""
    env = os.environ
    return WorldInfo(int(env.get('RANK', 0)), int(env.get('WORLD_SIZE', 1)), int(env.get('LOCAL_RANK', 0)))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that decodes, logs and writes the output."""
    return rank() == 0


class _PeerFailureWatch:
    """Polls the rendezvous store; exits this process when another rank reports a failure."""

    def __init__(self, host: str, port: int, prefix: str, interval: float = POLL_SECONDS):
        self.store = dist.PrefixStore(prefix, dist.TCPStore(host, port, is_master=False,
                                                            timeout=timedelta(seconds=60)))
        self.interval = interval
        self.reported = False                 # this rank failed: its own report must not stop it
        self.closing = threading.Event()      # a normal end: a vanished store is no failure
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name='wan-peer-failure-watch', daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if not self.store.check(['failed']):
                    continue
                message = self.store.get('failed').decode(errors='replace')
            except Exception as exc:  # the store's host is gone (or unreachable)
                if self.closing.is_set() or self.stopped.is_set():
                    return
                message = f'lost the rendezvous store ({type(exc).__name__}: {exc})'
            if self.reported or self.stopped.is_set():
                return
            print(f'[rank {rank()}] stopping: {message}', file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(PEER_FAILURE_EXIT_CODE)

    def report(self, message: str) -> None:
        self.reported = True
        self.stopped.set()
        with contextlib.suppress(Exception):  # the store may be gone already; the launcher still sees us exit
            self.store.set('failed', message)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2 * self.interval + 1)


_watch: _PeerFailureWatch | None = None


def init_distributed(backend: str | None = None, timeout_s: float | None = None,
                     watch_failures: bool = True) -> torch.device:
    """Join the process group described by torchrun's environment; returns this rank's device.

    CUDA: device cuda:LOCAL_RANK, backend nccl. Without CUDA: the CPU, backend gloo. `timeout_s`
    bounds every collective (PyTorch's default when None): the backstop when a rank hangs
    without failing.
    """
    global _watch
    info = world_info()
    if torch.cuda.is_available():
        device = torch.device('cuda', info.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device('cpu')
    if not is_initialized():
        kwargs = {} if timeout_s is None else {'timeout': timedelta(seconds=timeout_s)}
        if device.type == 'cuda':
            kwargs['device_id'] = device
        dist.init_process_group(backend or ('nccl' if device.type == 'cuda' else 'gloo'),
                                init_method='env://', rank=info.rank, world_size=info.world_size, **kwargs)
    if watch_failures and _watch is None and info.world_size > 1:
        # a restarted torchrun worker group must not see the previous attempt's failure
        attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
        _watch = _PeerFailureWatch(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']),
                                   prefix=f'wan-failure/{attempt}/')
    return device


def report_failure(message: str) -> None:
    """Tell every other rank that this one failed; they exit within about a second."""
    if _watch is not None:
        _watch.report(f'rank {rank()} failed: {message}')


@contextlib.contextmanager
def failing_together() -> Iterator[None]:
    """Any exception leaving the block (Ctrl-C included) is reported to the other ranks, then re-raised."""
    try:
        yield
    except BaseException as exc:
        report_failure(f'{type(exc).__name__}: {exc}' if str(exc) else type(exc).__name__)
        raise


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (picklable objects: seeds, prompts); identity on one process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def finish() -> None:
    """Normal end of a run: wait for every rank, stop the failure watch, leave the process group."""
    global _watch
    if not is_initialized():
        return
    if _watch is not None:
        _watch.closing.set()  # rank 0 may leave first; its store vanishing is not a failure now
    barrier()
    if _watch is not None:
        _watch.stop()
        _watch = None
    dist.destroy_process_group()
