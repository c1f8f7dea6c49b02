"""Placement: at most one A14B expert on the GPU, T5 back to the CPU after encoding when offloading;
host copies: weights stored once in CPU memory, copied to the device, pointed back to without a copy."""
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch import nn

from wan.pipelines import placement as placement_module
from wan.pipelines.components import load_dit
from wan.pipelines.denoise import DENSE, HIGH, LOW
from wan.pipelines.placement import ALIGN, CPU, HostCopy, Placement, lock_ranges, module_device
from tests.tiny.dit import write_dit_checkpoint

GPU = torch.device('cuda:0')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


class FakeModule(nn.Module):
    """Pretends to move between devices (this test box has no GPU); logs every move."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log, self.where = name, log, CPU

    def parameters(self, recurse: bool = True):
        yield SimpleNamespace(device=self.where)

    def to(self, device):
        self.where = torch.device(device)
        self.log.append((self.name, str(self.where)))
        return self


def experts_on(experts):
    return sorted(name for name, m in experts.items() if m.where == GPU)


def run_schedule(placement, schedule, experts=None):
    log = []
    experts = experts or {HIGH: FakeModule(HIGH, log), LOW: FakeModule(LOW, log)}
    resident = []
    for name in schedule:
        assert placement.activate(experts, name) is experts[name]
        resident.append(experts_on(experts))
    return experts, next(iter(experts.values())).log, resident


# -- plain moves (`module.to`): the policy, with host copies off -----------------------------------

def test_one_expert_on_the_gpu_swapped_once_at_the_boundary():
    for offload in (True, False):  # one GPU: init_on_cpu holds even without --offload_model (spec 15.21)
        experts, log, resident = run_schedule(Placement(GPU, offload_model=offload, host_copies=False),
                                              [HIGH] * 3 + [LOW] * 2)
        assert resident == [[HIGH]] * 3 + [[LOW]] * 2
        assert log == [(HIGH, 'cuda:0'), (HIGH, 'cpu'), (LOW, 'cuda:0')]


def test_release_after_sampling_only_when_offloading():
    experts, log, _ = run_schedule(Placement(GPU, offload_model=True, host_copies=False), [HIGH, LOW])
    Placement(GPU, offload_model=True, host_copies=False).release(experts)
    assert experts_on(experts) == []
    experts, log, _ = run_schedule(Placement(GPU, offload_model=False, host_copies=False), [HIGH, LOW])
    Placement(GPU, offload_model=False, host_copies=False).release(experts)
    assert experts_on(experts) == [LOW]


def test_resident_models_stay_under_fsdp_or_sp():
    log = []
    experts = {HIGH: FakeModule(HIGH, log), LOW: FakeModule(LOW, log)}
    for m in experts.values():
        m.where = GPU
    placement = Placement(GPU, offload_model=False, init_on_cpu=False)
    placement.activate(experts, HIGH)
    placement.activate(experts, LOW)
    assert log == [] and experts_on(experts) == [HIGH, LOW]
    assert placement.dit_load_device == GPU and Placement(GPU).dit_load_device == CPU


def test_text_encoder_placement():
    log = []
    t5 = FakeModule('t5', log)
    with Placement(GPU, offload_model=True, host_copies=False).text_encoder(t5) as device:
        assert device == GPU and t5.where == GPU
    assert t5.where == CPU
    with Placement(GPU, offload_model=False, host_copies=False).text_encoder(t5) as device:
        assert device == GPU
    assert t5.where == GPU  # stays for the next prompt
    t5.where, log[:] = CPU, []
    with Placement(GPU, offload_model=True, t5_cpu=True).text_encoder(t5) as device:
        assert device == CPU
    assert log == []  # --t5_cpu: never moved


# -- which modules get a host copy, and when (HostCopy replaced by a recorder) ----------------------

@pytest.fixture
def recorded_host_copies(monkeypatch):
    """HostCopy stand-in moving FakeModules; logs (name, event, experts on the GPU at that moment)."""
    class RecordingHostCopy:
        nbytes, pinned = 0, False

        def __init__(self, module, pin_for=None):
            self.module = module
            module.log.append((module.name, 'host copy', module.where))

        def to_device(self, device):
            self.module.log.append((self.module.name, 'copy in', sorted(
                m.name for m in self.module.peers if m.where != CPU)))
            self.module.where = device

        def to_host(self):
            self.module.log.append((self.module.name, 'point back', None))
            self.module.where = CPU
    monkeypatch.setattr(placement_module, 'HostCopy', RecordingHostCopy)


def fake_experts(names=(HIGH, LOW)):
    log = []
    experts = {name: FakeModule(name, log) for name in names}
    for module in experts.values():
        module.peers = list(experts.values())
    return experts


def test_experts_swap_through_host_copies_made_once(recorded_host_copies):
    for offload in (True, False):
        placement = Placement(GPU, offload_model=offload, host_copies=True)
        experts, log, resident = run_schedule(placement, [HIGH] * 3 + [LOW] * 2, fake_experts())
        assert resident == [[HIGH]] * 3 + [[LOW]] * 2
        # the incoming expert is copied in while no expert is on the GPU; the outgoing one is not copied
        assert log == [(HIGH, 'host copy', CPU), (HIGH, 'copy in', []), (HIGH, 'point back', None),
                       (LOW, 'host copy', CPU), (LOW, 'copy in', [])]
        log.clear()
        run_schedule(placement, [HIGH, LOW], experts)  # a second request: no new host copy
        assert log == [(LOW, 'point back', None), (HIGH, 'copy in', []), (HIGH, 'point back', None),
                       (LOW, 'copy in', [])]
        log.clear()
        placement.release(experts)
        assert log == ([(LOW, 'point back', None)] if offload else []) and experts_on(experts) == (
            [] if offload else [LOW])


def test_prepare_builds_host_copies_in_the_background_in_order(recorded_host_copies):
    import threading
    experts = fake_experts()
    builders = []
    original = Placement._host_copy

    def recording(self, module):
        builders.append((module.name, threading.current_thread().name))
        return original(self, module)
    placement = Placement(GPU, offload_model=True, host_copies=True)
    with mock.patch.object(Placement, '_host_copy', recording):
        placement.prepare([experts[HIGH]], swapping=True)  # as loading asks: each expert once loaded
        placement.prepare([experts[LOW]], swapping=True)
        placement.prepare([experts[HIGH], experts[LOW]])  # already pending: nothing new
        _, log, resident = run_schedule(placement, [HIGH, LOW], experts)
    assert [name for name, _ in builders] == [HIGH, LOW]  # the first needed first, each once
    assert all(thread.startswith('host-copy') for _, thread in builders)
    builder = placement._builder
    if builder is not None:
        builder.join(timeout=10)
    assert placement._builder is None  # the thread is gone once the queue is empty
    assert resident == [[HIGH], [LOW]]
    # the background build of LOW may land anywhere before LOW is needed
    assert [e for e in log if e[1] != 'host copy'] == [(HIGH, 'copy in', []), (HIGH, 'point back', None),
                                                       (LOW, 'copy in', [])]
    assert log.index((HIGH, 'host copy', CPU)) < log.index((HIGH, 'copy in', []))
    assert log.index((LOW, 'host copy', CPU)) < log.index((LOW, 'copy in', []))


def test_text_encoder_host_copy_is_built_first_in_the_background_only_when_offloading(recorded_host_copies):
    import threading
    builders = []
    original = Placement._host_copy

    def recording(self, module):
        builders.append((module.name, threading.current_thread().name))
        return original(self, module)
    with mock.patch.object(Placement, '_host_copy', recording):
        for placement, queued in [(Placement(GPU, offload_model=True, host_copies=True), ['t5', HIGH, LOW]),
                                  (Placement(GPU, offload_model=False, host_copies=True), [HIGH, LOW]),
                                  (Placement(GPU, offload_model=True, t5_cpu=True, host_copies=True),
                                   [HIGH, LOW])]:
            builders.clear()
            experts = fake_experts()
            t5 = FakeModule('t5', [])
            t5.peers = []
            placement.prepare_text_encoder(t5)
            placement.prepare([experts[HIGH], experts[LOW]])
            with placement.text_encoder(t5):
                pass
            run_schedule(placement, [HIGH, LOW], experts)
            assert [name for name, _ in builders] == queued  # in the order asked, each once
            assert all(thread == 'host-copy' for _, thread in builders)


def test_a_failed_background_copy_is_raised_where_the_expert_is_needed(recorded_host_copies):
    experts = fake_experts()

    def no_memory(self, module):
        raise MemoryError(f'no host memory for {module.name}')
    placement = Placement(GPU, offload_model=True, host_copies=True)
    with mock.patch.object(Placement, '_host_copy', no_memory):
        placement.prepare([experts[HIGH], experts[LOW]])
        with pytest.raises(MemoryError, match='no host memory for high'):
            placement.activate(experts, HIGH)


def test_prepare_does_nothing_where_no_host_copy_is_kept(recorded_host_copies):
    for placement, names in [(Placement(GPU, host_copies=True), [DENSE]),     # one model that stays
                             (Placement(GPU, host_copies=False), [HIGH, LOW]),
                             (Placement(GPU, init_on_cpu=False, host_copies=True), [HIGH, LOW])]:
        experts = fake_experts(names)
        placement.prepare(list(experts.values()))
        assert not placement._pending
    experts = fake_experts()  # one expert of two, told that they do not take turns
    placement = Placement(GPU, host_copies=True)
    placement.prepare([experts[HIGH]], swapping=False)
    assert not placement._pending


def test_an_expert_born_on_the_gpu_leaves_through_its_new_host_copy(recorded_host_copies):
    experts = fake_experts()
    experts[LOW].where = GPU
    run_schedule(Placement(GPU, host_copies=True), [HIGH], experts)
    assert experts[HIGH].log == [(LOW, 'host copy', GPU), (LOW, 'point back', None),
                                 (HIGH, 'host copy', CPU), (HIGH, 'copy in', [])]


def test_a_model_that_stays_is_moved_plainly(recorded_host_copies):
    # TI2V-5B without --offload_model: one model that never leaves, so no host memory is held for it
    experts, log, _ = run_schedule(Placement(GPU, host_copies=True), [DENSE] * 2, fake_experts([DENSE]))
    assert log == [(DENSE, 'cuda:0')]
    experts, log, _ = run_schedule(Placement(GPU, offload_model=True, host_copies=True), [DENSE],
                                   fake_experts([DENSE]))
    assert log == [(DENSE, 'host copy', CPU), (DENSE, 'copy in', [])]


def test_text_encoder_host_copy_only_when_offloading(recorded_host_copies):
    (t5,) = fake_experts(['t5']).values()
    placement = Placement(GPU, offload_model=True, host_copies=True)
    for _ in range(2):
        with placement.text_encoder(t5) as device:
            assert device == GPU and t5.where == GPU
        assert t5.where == CPU
    assert t5.log == [('t5', 'host copy', CPU), ('t5', 'copy in', []), ('t5', 'point back', None),
                      ('t5', 'copy in', []), ('t5', 'point back', None)]
    (t5,) = fake_experts(['t5']).values()
    with Placement(GPU, offload_model=False, host_copies=True).text_encoder(t5):
        pass
    assert t5.log == [('t5', 'cuda:0')] and t5.where == GPU


def test_no_host_copies_under_fsdp_or_sp(recorded_host_copies):
    experts = fake_experts()
    for m in experts.values():
        m.where = GPU
    placement = Placement(GPU, offload_model=True, init_on_cpu=False, host_copies=True)
    assert not placement.keeps_host_copies
    run_schedule(placement, [HIGH, LOW], experts)
    placement.release(experts)
    assert experts[HIGH].log == [(LOW, 'cpu'), (HIGH, 'cpu'), (LOW, 'cuda:0'), (LOW, 'cpu')]


def test_host_copies_by_default_only_on_a_cuda_device():
    assert not Placement(CPU).keeps_host_copies
    assert Placement(GPU).keeps_host_copies == torch.cuda.is_available()
    assert not Placement(GPU, init_on_cpu=False).keeps_host_copies


# -- HostCopy itself, with the CPU standing in for the device ------------------------------------

class Tied(nn.Module):
    """A tied weight, a bf16 part, buffers: persistent, non-persistent, shared, aliased, 0-dim, empty, bool."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.proj = nn.Linear(8, 11, bias=False)
        self.proj.weight = self.embed.weight
        self.norm = nn.LayerNorm(8).to(torch.bfloat16)
        self.register_buffer('scale', torch.tensor(0.5))
        self.register_buffer('table', torch.randn(3, 5), persistent=False)
        self.register_buffer('alias', self.table.view(3, 5), persistent=False)  # another tensor, same memory
        self.register_buffer('flags', torch.tensor([True, False, True]))
        self.register_buffer('empty', torch.zeros(0, 4))
        self.sub = nn.Module()
        self.sub.register_buffer('table', self.table, persistent=False)  # the same tensor in two modules

    def forward(self, ids):
        x = self.norm(self.embed(ids).to(torch.bfloat16)).float() * self.scale
        return self.proj(x) + self.table.sum() + self.alias.mean() + self.flags.sum()


def tensors_of(module):
    return dict(list(module.named_parameters(remove_duplicate=False))
                + list(module.named_buffers(remove_duplicate=False)))


def inside(tensor, buffer):
    return buffer.data_ptr() <= tensor.data_ptr() < buffer.data_ptr() + buffer.nbytes or tensor.numel() == 0


def test_host_copy_holds_each_tensor_once_and_becomes_the_cpu_state():
    torch.manual_seed(0)
    module = Tied().requires_grad_(False)
    ids = torch.tensor([[1, 4, 9]])
    before = {name: t.clone() for name, t in tensors_of(module).items()}
    expected_out = module(ids)
    host = HostCopy(module)
    unique = [module.embed.weight, module.norm.weight, module.norm.bias, module.scale, module.table,
              module.flags, module.empty]
    assert host.nbytes == sum(-(-t.nbytes // ALIGN) * ALIGN for t in unique)  # tied/shared/aliased once
    assert not host.pinned
    for name, tensor in tensors_of(module).items():
        assert inside(tensor, host.buffer), name
        assert tensor.dtype == before[name].dtype and torch.equal(tensor, before[name]), name
    assert module.proj.weight is module.embed.weight and module.sub.table is module.table
    assert module.alias.data_ptr() == module.table.data_ptr()
    assert torch.equal(module(ids), expected_out)


def test_to_device_copies_and_to_host_points_back_without_a_copy():
    torch.manual_seed(0)
    module = Tied()
    ids = torch.tensor([[2, 3, 10]])
    expected_out = module(ids).detach()
    host = HostCopy(module)
    on_host = {name: t.data_ptr() for name, t in tensors_of(module).items()}
    for trip in range(2):
        host.to_device(CPU)  # the CPU stands in for the GPU: fresh memory, outside the host copy
        tensors = tensors_of(module)
        assert not any(inside(t, host.buffer) for t in tensors.values() if t.numel())
        assert module.proj.weight is module.embed.weight and module.sub.table is module.table
        assert tensors['alias'].data_ptr() == tensors['table'].data_ptr()  # one device copy for both
        assert module.embed.weight.requires_grad and not module.table.requires_grad
        assert torch.equal(module(ids), expected_out)
        host.to_host()
        assert {name: t.data_ptr() for name, t in tensors_of(module).items()} == on_host  # no copy back
        assert torch.equal(module(ids), expected_out)


def test_host_copy_keeps_converted_dtypes_of_a_loaded_dit(tmp_path):
    # --convert_model_dtype converts at load (components.load_dit), before any move makes the copy
    model = load_dit(write_dit_checkpoint(tmp_path / 'dit', dim=32, ffn_dim=64, num_layers=2),
                     torch.bfloat16, CPU)
    generator = torch.Generator().manual_seed(0)
    x = [torch.randn(16, 1, 4, 4, generator=generator)]
    context = [torch.randn(5, 4096, generator=generator)]

    def run():
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            return model(x, t=torch.tensor([500]), context=context, seq_len=4)[0]
    expected = run()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    host = HostCopy(model)
    assert host.nbytes == sum(-(-v.nbytes // ALIGN) * ALIGN for v in state.values())
    host.to_device(CPU)
    host.to_host()
    assert all(v.dtype == state[k].dtype and torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    assert torch.equal(run(), expected)


@pytest.mark.parametrize('sizes, chunk, pieces', [([100, 100, 100, 100], 250, 2), ([1000, 100], 250, 2),
                                                  ([0, 512, 512], 256, 2), ([64] * 50, 10_000, 1),
                                                  ([300], 100, 1), ([64] * 50, 640, 5)])
def test_lock_ranges_cover_the_copy_in_pieces_cut_between_tensors(sizes, chunk, pieces):
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    total = sum(sizes)
    ranges = lock_ranges(starts, total, chunk)
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
    for begin, end in ranges:
        assert begin in starts and end > begin
        inner = [s for s in starts if begin < s < end]
        assert end - begin <= chunk or not inner  # over `chunk` only when one tensor is larger
    for start, size in zip(starts, sizes):  # every tensor inside one range
        assert any(begin <= start and start + size <= end for begin, end in ranges)
    assert len(ranges) == pieces


def test_cpu_only_nothing_moves_nothing_is_copied():
    experts = {HIGH: Tied(), LOW: Tied()}
    t5 = Tied()
    ptrs = {id(t): t.data_ptr() for m in (*experts.values(), t5) for t in tensors_of(m).values()}
    for host_copies in (None, True):
        placement = Placement(CPU, offload_model=True, host_copies=host_copies)
        with placement.text_encoder(t5) as device:
            assert device == CPU
        for name in (HIGH, HIGH, LOW):
            assert placement.activate(experts, name) is experts[name]
        placement.release(experts)
    assert {id(t): t.data_ptr() for m in (*experts.values(), t5) for t in tensors_of(m).values()} == ptrs


# -- the real thing -------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize('chunk', [placement_module.PAGE_LOCK_CHUNK, 2**20])  # one piece; one per tensor
def test_pinned_swap_on_the_gpu(chunk, monkeypatch):
    monkeypatch.setattr(placement_module, 'PAGE_LOCK_CHUNK', chunk)
    torch.manual_seed(0)
    experts = {name: nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(4)]).requires_grad_(False)
               for name in (HIGH, LOW)}
    x = torch.randn(3, 1024)
    expected = {name: m(x) for name, m in experts.items()}
    expert_bytes = sum(p.nbytes for p in experts[HIGH].parameters())
    placement = Placement(torch.device('cuda'), offload_model=True)
    assert placement.device == torch.device('cuda', torch.cuda.current_device())
    # cuBLAS's and cuBLASLt's workspaces (a matmul, a linear with bias) stay allocated once made
    torch.ones(8, 8, device='cuda') @ torch.ones(8, 8, device='cuda')
    nn.Linear(8, 8, device='cuda')(torch.ones(3, 8, device='cuda'))
    base = torch.cuda.memory_allocated()
    host_ptrs = []
    for _ in range(2):
        for name, other in ((HIGH, LOW), (LOW, HIGH)):
            model = placement.activate(experts, name)
            assert module_device(model) == placement.device and module_device(experts[other]) == CPU
            assert torch.cuda.memory_allocated() - base <= expert_bytes + 2**20  # one expert on the GPU
            torch.testing.assert_close(model(x.cuda()).cpu(), expected[name], rtol=1e-4, atol=1e-4)
            if name == LOW:  # the high-noise expert is back on its page-locked host copy
                assert all(p.is_pinned() for p in experts[HIGH].parameters())
                host_ptrs.append([p.data_ptr() for p in experts[HIGH].parameters()])
    assert host_ptrs[0] == host_ptrs[1]  # the same host memory each time: nothing copied back
    placement.release(experts)
    assert torch.cuda.memory_allocated() == base
    assert all(torch.equal(m(x), expected[name]) for name, m in experts.items())
