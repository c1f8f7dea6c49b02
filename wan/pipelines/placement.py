"""The one place deciding what sits on which device: T5, the DiT experts, offloading (spec 7, 15.21).

Rules of the reference, on one GPU:
- T5 encodes on the GPU (or on the CPU with `t5_cpu`, its outputs then moved to the GPU) and goes
  back to the CPU after encoding when `offload_model`.
- DiT weights are loaded on the CPU (`init_on_cpu`); an expert moves to the GPU when first used and
  the other expert leaves first, so two A14B experts are never on the GPU together; the swap happens
  once, at the boundary. After sampling, `offload_model` sends them back to the CPU.
- The VAE lives on the GPU.
With FSDP or sequence parallelism (`init_on_cpu=False`) models are placed on the device once and stay.

How modules move (not in the reference): on a CUDA device, a module that goes back and forth (the
A14B experts, T5 with `offload_model`) keeps one page-locked CPU copy of its weights, a `HostCopy`
made on its first move. Going to the GPU is an asynchronous copy from it (PCIe/C2C speed instead of
~1 GB/s from pageable memory); going back costs nothing: the weights point at the host copy again.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)

CPU = torch.device('cpu')
ALIGN = 512  # bytes: each tensor of a host copy starts at a multiple (the CUDA allocator's granularity)
PAGE_LOCK_CHUNK = 256 * 2**20  # bytes page-locked per driver call (see _page_lock)
_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: page-locked for every CUDA context of the process


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else CPU


def module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else CPU


def _alias_groups(module: nn.Module) -> list[list[torch.Tensor]]:
    """The module's parameters and buffers (non-persistent ones too), grouped by the memory they view:
    a tied weight, or two tensors viewing the same memory the same way, form one group."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):  # each object once
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        groups.setdefault(key, []).append(tensor)
    return list(groups.values())


def lock_ranges(starts: list[int], total: int, chunk: int) -> list[tuple[int, int]]:
    """Split bytes [0, total) of a host copy into ranges of at most `chunk` bytes (or one tensor, if
    larger), cut only where a tensor starts (`starts`, ascending from 0), so each tensor lies in one
    range: a copy to the GPU then reads from one registration."""
    ranges, begin, end = [], 0, 0
    for start in [*starts[1:], total]:  # `end` grows tensor by tensor while the range fits
        if start - begin > chunk and end > begin:
            ranges.append((begin, end))
            begin = end
        end = start
    if end > begin:
        ranges.append((begin, end))
    return ranges


def _page_lock(buffer: torch.Tensor, ranges: list[tuple[int, int]], device: torch.device) -> bool:
    """cudaHostRegister `buffer` in place, one range per call; False (nothing left registered) if
    CUDA refuses. The driver holds process-wide locks while it pins, so other threads' CUDA calls
    (the denoise loop's kernel launches) wait for each call: pieces of PAGE_LOCK_CHUNK bytes keep
    those waits short. The calls run on a helper thread, so a refusal's error stays in that thread's
    CUDA error state instead of surfacing at our next kernel."""
    def register() -> int:
        with torch.cuda.device(device):
            cudart = torch.cuda.cudart()
            for done, (begin, end) in enumerate(ranges):
                error = int(cudart.cudaHostRegister(buffer.data_ptr() + begin, end - begin, _REGISTER_PORTABLE))
                if error:
                    _unregister(buffer, ranges[:done])
                    return error
                time.sleep(0.001)  # let a waiting thread take the driver's lock between pieces
            return 0
    with ThreadPoolExecutor(1) as pool:
        error = pool.submit(register).result()
    if error:
        log.warning('cannot page-lock %.1f GiB of host memory (CUDA error %d): weights will move at '
                    'pageable-memory speed', buffer.nbytes / 2**30, error)
    return not error


def _unregister(buffer: torch.Tensor, ranges: list[tuple[int, int]]) -> None:
    for begin, _ in ranges:
        torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr() + begin)


class HostCopy:
    """A module's parameters and buffers kept once in CPU memory: its CPU state between trips to a device.

    One flat buffer holds every tensor as a view, in the dtype it has (so after any conversion at
    load). With `pin_for` (a CUDA device) the buffer is page-locked in place (cudaHostRegister), not
    with `Tensor.pin_memory()`, whose allocator rounds each block up to a power of two (up to twice the
    memory). Building it points the module's tensors at the buffer: their old CPU storage is freed, or
    the module leaves the device. `to_device` copies from it; `to_host` points the tensors back with no
    copy, which is right because inference never writes weights. Tensors are re-pointed in place
    (`.data`), so tied weights stay tied and every reference to a parameter follows the move.
    """

    @torch.no_grad()
    def __init__(self, module: nn.Module, pin_for: torch.device | None = None):
        groups = _alias_groups(module)
        offsets, total = [], 0
        for tensors in groups:
            offsets.append(total)
            total += -(-tensors[0].nbytes // ALIGN) * ALIGN
        self.buffer = torch.empty(total, dtype=torch.uint8)
        self.slots: list[tuple[list[torch.Tensor], torch.Tensor]] = []  # (module's tensors, their host view)
        for tensors, offset in zip(groups, offsets):
            first = tensors[0]
            host = self.buffer[offset:offset + first.nbytes].view(first.dtype).view(first.shape)
            host.copy_(first)
            self.slots.append((tensors, host))
            for tensor in tensors:  # one at a time: the old storage goes as the copy grows
                tensor.data = host
        # page-locked once filled: locking first would fault in the whole buffer while the old storage lives
        ranges = lock_ranges(offsets, total, PAGE_LOCK_CHUNK)
        self.pinned = pin_for is not None and total > 0 and _page_lock(self.buffer, ranges, pin_for)
        if self.pinned:
            weakref.finalize(self, _unregister, self.buffer, ranges).atexit = False

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    @torch.no_grad()
    def to_device(self, device: torch.device) -> None:
        """Give the module fresh copies on `device` (asynchronous from pinned memory), complete on return."""
        for tensors, host in self.slots:
            copy = host.to(device, non_blocking=self.pinned, copy=True)
            for tensor in tensors:
                tensor.data = copy
        if device.type == 'cuda':
            torch.cuda.synchronize(device)  # weights complete before use; and a swap time that is true

    def to_host(self) -> None:
        """Point the module back at the host copy: no copy; its device memory is released."""
        for tensors, host in self.slots:
            for tensor in tensors:
                tensor.data = host


@dataclass
class Placement:
    device: torch.device
    offload_model: bool = False
    t5_cpu: bool = False
    init_on_cpu: bool = True
    host_copies: bool | None = None  # a HostCopy per module that comes and goes; None: on a CUDA device
    _host: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False,
                                             repr=False, compare=False)
    _pending: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False,
                                                repr=False, compare=False)  # module -> Future[HostCopy]
    _jobs: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, init=False, repr=False,
                                     compare=False)  # (module, Future) for the builder thread, in order
    _builder: threading.Thread | None = field(default=None, init=False, repr=False, compare=False)
    _builder_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                          compare=False)

    def __post_init__(self):
        self.device = torch.device(self.device)
        if self.device.type == 'cuda' and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device('cuda', torch.cuda.current_device())  # comparable with tensor devices

    @property
    def dit_load_device(self) -> torch.device:
        return CPU if self.init_on_cpu else self.device

    @property
    def keeps_host_copies(self) -> bool:
        """Whether modules that come and go use HostCopy: in a single process (`init_on_cpu`), never
        for FSDP shards or models placed once."""
        enabled = self.host_copies
        if enabled is None:
            enabled = self.device.type == 'cuda' and torch.cuda.is_available()
        return enabled and self.init_on_cpu

    def _empty_cache(self) -> None:
        if self.device.type == 'cuda' and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def move(self, module: nn.Module, device: torch.device, comes_and_goes: bool) -> None:
        """Put `module` on `device`. One that `comes_and_goes` goes through its host copy (made on
        its first move) when the placement keeps them; any other simply moves (`module.to`)."""
        if module_device(module) == device:
            return
        if not (comes_and_goes and self.keeps_host_copies):
            module.to(device)
            return
        host = self._host.get(module)
        if host is None:
            pending = self._pending.pop(module, None)
            host = self._host[module] = pending.result() if pending is not None else self._host_copy(module)
        if device == CPU:
            host.to_host()
        else:
            host.to_device(device)

    def _host_copy(self, module: nn.Module) -> HostCopy:
        start = time.perf_counter()
        pin_for = self.device if self.device.type == 'cuda' else None
        host = HostCopy(module, pin_for)
        log.info('kept %.1f GiB of %s weights in %s host memory (%.1f s, once)', host.nbytes / 2**30,
                 type(module).__name__, 'page-locked' if host.pinned else 'pageable',
                 time.perf_counter() - start)
        return host

    def prepare(self, experts: list[nn.Module], swapping: bool | None = None) -> None:
        """Build, in a background thread, the host copies that `activate` will need for `experts`
        (in the order given: the first needed first), so that loading, text encoding and the first
        expert's steps hide the building; `move` waits for a copy not yet done. `swapping`: whether
        the pipeline's experts take turns on the device (default: more than one given)."""
        swapping = len(experts) > 1 if swapping is None else swapping
        if self.keeps_host_copies and (swapping or self.offload_model):
            self._build_in_background(experts)

    def prepare_text_encoder(self, module: nn.Module) -> None:
        """With `offload_model`, start building the text encoder's host copy (queued before anything
        prepared later), so that loading the other models hides it."""
        if self.keeps_host_copies and self.offload_model and not self.t5_cpu:
            self._build_in_background([module])

    def _build_in_background(self, modules: list[nn.Module]) -> None:
        with self._builder_lock:
            for module in modules:
                if module in self._host or module in self._pending or module_device(module) != CPU:
                    continue
                self._pending[module] = future = Future()
                self._jobs.put((module, future))
            if self._builder is None and not self._jobs.empty():
                # one daemon thread, one copy at a time in the order asked, gone once the queue is
                # empty; an interrupted run exits at once instead of finishing the copies
                self._builder = threading.Thread(target=self._build_queued, name='host-copy', daemon=True)
                self._builder.start()

    def _build_queued(self) -> None:
        while True:
            with self._builder_lock:
                try:
                    module, future = self._jobs.get_nowait()
                except queue.Empty:
                    self._builder = None
                    return
            future.set_running_or_notify_cancel()
            try:
                future.set_result(self._host_copy(module))
            except BaseException as exc:  # raised where the copy is needed (`move`)
                future.set_exception(exc)
            del module, future  # hold no model between jobs

    @contextlib.contextmanager
    def text_encoder(self, module: nn.Module) -> Iterator[torch.device]:
        """Yield the device to encode on, with `module` placed there for the duration."""
        if self.t5_cpu:
            yield CPU
            return
        self.move(module, self.device, comes_and_goes=self.offload_model)
        try:
            yield self.device
        finally:
            if self.offload_model:
                self.move(module, CPU, comes_and_goes=True)
                self._empty_cache()

    def activate(self, experts: dict[str, nn.Module], name: str) -> nn.Module:
        """Return expert `name` on the device; on one GPU every other expert leaves it first."""
        wanted = experts[name]
        if self.offload_model or self.init_on_cpu:
            comes_and_goes = len(experts) > 1 or self.offload_model
            for module in experts.values():
                if module is not wanted and module_device(module) != CPU:
                    self.move(module, CPU, comes_and_goes)
                    self._empty_cache()  # the outgoing expert's memory is free before the next arrives
            self.move(wanted, self.device, comes_and_goes)
        return wanted

    def release(self, experts: dict[str, nn.Module]) -> None:
        """After sampling: with `offload_model`, every expert back to the CPU."""
        if self.offload_model:
            for module in experts.values():
                self.move(module, CPU, comes_and_goes=True)
            if self.device.type == 'cuda' and torch.cuda.is_available():
                torch.cuda.synchronize(self.device)
            self._empty_cache()
