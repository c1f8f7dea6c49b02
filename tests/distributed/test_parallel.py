"""wan/distributed/parallel.py through the pipeline: 2 denoising steps (both A14B experts) on 2 ranks."""
import pytest
import torch

from tests.distributed.worker import assert_fp32_equal, pipeline, request


@pytest.fixture(scope='module')
def single_process_latents(two_ranks):
    with torch.no_grad():
        return pipeline(two_ranks.ckpt).sample(request())[0]


@pytest.mark.parametrize('mode', ['ulysses', 'cfg', 'fsdp'])
def test_two_step_pipeline_equals_single_process(two_ranks, single_process_latents, mode):
    """ulysses: P = 2 (9 tokens -> seq_len 10); cfg: cond/uncond on one rank each; fsdp: DiT and
    T5 sharded, with Ulysses."""
    for result in two_ranks.results:
        assert_fp32_equal(result[f'pipeline/{mode}'], single_process_latents)


def test_configuration_errors_name_the_launch(two_ranks):
    from wan.distributed import Parallel, ParallelConfig
    from wan.errors import UserError
    with pytest.raises(UserError, match=r'needs 4 processes, the launch has 1 \(torchrun --nproc_per_node=4'):
        Parallel(ParallelConfig(ulysses_size=2, cfg_parallel=True), torch.device('cpu'))
    with pytest.raises(UserError, match='need a multi-process launch'):
        Parallel(ParallelConfig(dit_fsdp=True), torch.device('cpu'))
