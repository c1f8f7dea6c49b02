"""wan/distributed/fsdp.py: FSDP2 on CPU/gloo loads the same weights and computes the same outputs."""
import torch

from tests.distributed.worker import NEGATIVE, PROMPT, assert_fp32_equal, dit_cases, expert, pipeline
from wan.utils.checkpoint import read_sharded


def test_sharded_dit_holds_the_checkpoint_weights(two_ranks):
    stored, _ = read_sharded(two_ranks.ckpt / 'high_noise_model')
    total = sum(t.numel() for t in stored.values())
    local = [result['fsdp/local_numel'] for result in two_ranks.results]
    for result in two_ranks.results:
        assert result['fsdp/same_keys'] and result['fsdp/weights_equal']
    # each rank keeps its dim-0 half of every tensor (odd sizes: one rank holds the extra row)
    assert sum(local) == total and max(local) < 0.6 * total


def test_fsdp_with_ulysses_dit_equals_single_process(two_ranks):
    with torch.no_grad():
        reference = expert(two_ranks.ckpt)(**dit_cases()['rounded'])[0]
    for result in two_ranks.results:
        assert_fp32_equal(result['fsdp+ulysses/dit'], reference)


def test_sharded_text_encoder_encodes_as_one_process(two_ranks):
    with torch.no_grad():
        reference = pipeline(two_ranks.ckpt).encode_prompts(PROMPT, NEGATIVE)[0]
    for result in two_ranks.results:
        assert_fp32_equal(result['t5_fsdp/context'], reference)
