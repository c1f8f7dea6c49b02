"""wan/distributed/ulysses.py: the all-to-all layout and Ulysses DiT forwards on 2 ranks vs 1 process."""
import pytest
import torch

from tests.distributed.worker import assert_fp32_equal, dit_cases, expert


def test_all_to_all_moves_sequence_shards_to_head_shards_and_back(two_ranks):
    for result in two_ranks.results:
        assert result['a2a_heads_ok']
        assert result['a2a_roundtrip_ok']


@pytest.mark.parametrize('case', ['rounded', 'per_token_t', 'even'])
def test_ulysses_dit_equals_single_process(two_ranks, case):
    """9 tokens padded to seq_len 10 (keys masked), per-token timesteps, and an even 12-token grid."""
    with torch.no_grad():
        reference = expert(two_ranks.ckpt)(**dit_cases()[case])[0]
    for result in two_ranks.results:
        assert_fp32_equal(result[f'ulysses/{case}'], reference)
