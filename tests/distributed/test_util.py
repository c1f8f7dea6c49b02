"""wan/distributed/util.py: rank-0 broadcast and failure propagation (no hang)."""
import random
import sys

from tests.distributed.conftest import STOP_TIMEOUT_S


def test_seed_is_rank_zeros(two_ranks):
    rank0_draw = random.Random(0).randint(0, sys.maxsize)
    assert rank0_draw != random.Random(1).randint(0, sys.maxsize)
    assert [result['seed'] for result in two_ranks.results] == [rank0_draw, rank0_draw]


def test_a_failing_rank_stops_the_others(two_ranks):
    """Rank 1 raises (and stays alive); rank 0, blocked in a collective, exits on its own, fast."""
    assert not (two_ranks.folder / 'rank0_not_stopped').exists()
    assert two_ranks.returncodes[0] == 1
    assert '[rank 0] stopping: rank 1 failed: RuntimeError: injected failure on rank 1' in two_ranks.stderr[0]
    assert two_ranks.failure_to_exit_s is not None and two_ranks.failure_to_exit_s < STOP_TIMEOUT_S
    print(f'rank 0 stopped {two_ranks.failure_to_exit_s:.1f} s after rank 1 failed')
