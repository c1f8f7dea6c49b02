"""Placement: at most one A14B expert on the GPU, T5 back to the CPU after encoding when offloading."""
from types import SimpleNamespace

import torch
from torch import nn

from wan.pipelines.denoise import HIGH, LOW
from wan.pipelines.placement import CPU, Placement

GPU = torch.device('cuda:0')


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


def run_schedule(placement, schedule):
    log = []
    experts = {HIGH: FakeModule(HIGH, log), LOW: FakeModule(LOW, log)}
    resident = []
    for name in schedule:
        assert placement.activate(experts, name) is experts[name]
        resident.append(experts_on(experts))
    return experts, log, resident


def test_one_expert_on_the_gpu_swapped_once_at_the_boundary():
    for offload in (True, False):  # one GPU: init_on_cpu holds even without --offload_model (spec 15.21)
        experts, log, resident = run_schedule(Placement(GPU, offload_model=offload),
                                              [HIGH] * 3 + [LOW] * 2)
        assert resident == [[HIGH]] * 3 + [[LOW]] * 2
        assert log == [(HIGH, 'cuda:0'), (HIGH, 'cpu'), (LOW, 'cuda:0')]


def test_release_after_sampling_only_when_offloading():
    experts, log, _ = run_schedule(Placement(GPU, offload_model=True), [HIGH, LOW])
    Placement(GPU, offload_model=True).release(experts)
    assert experts_on(experts) == []
    experts, log, _ = run_schedule(Placement(GPU, offload_model=False), [HIGH, LOW])
    Placement(GPU, offload_model=False).release(experts)
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
    with Placement(GPU, offload_model=True).text_encoder(t5) as device:
        assert device == GPU and t5.where == GPU
    assert t5.where == CPU
    with Placement(GPU, offload_model=False).text_encoder(t5) as device:
        assert device == GPU
    assert t5.where == GPU  # stays for the next prompt
    t5.where, log[:] = CPU, []
    with Placement(GPU, offload_model=True, t5_cpu=True).text_encoder(t5) as device:
        assert device == CPU
    assert log == []  # --t5_cpu: never moved
