"""wan/distributed/cfg_parallel.py: cond and uncond passes on one rank each, exchanged."""
import torch

from tests.distributed.worker import assert_fp32_equal, dit_cases, expert, guided


def test_cfg_parallel_dit_equals_both_passes_in_one_process(two_ranks):
    with torch.no_grad():
        reference = torch.stack(guided(expert(two_ranks.ckpt), dit_cases()['rounded']))
    assert not torch.allclose(reference[0], reference[1])  # the two passes really differ
    for result in two_ranks.results:
        assert_fp32_equal(result['cfg/dit'], reference)
