"""wan/distributed/sequence_parallel.py: seams installed from outside; padding of the split itself."""
import torch

from tests.distributed.worker import assert_fp32_equal, uneven_inputs, uneven_model


def test_the_model_keeps_its_class_and_forward(two_ranks):
    assert all(result['forward_unchanged'] for result in two_ranks.results)


def test_applying_twice_is_refused(two_ranks):
    for result in two_ranks.results:
        assert result['applied_twice'] == 'sequence parallelism is already applied to this model'


def test_unpadded_sequence_and_heads_not_divisible_by_the_degree(two_ranks):
    """seq_len 9 over 2 ranks (the split pads and masks the extra key) and 3 heads (padded to 4)."""
    with torch.no_grad():
        reference = uneven_model()(**uneven_inputs())[0]
    for result in two_ranks.results:
        assert_fp32_equal(result['ulysses/uneven'], reference)
