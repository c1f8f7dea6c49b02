"""The tiny model's tokenizer and frozen umT5: official layout, loaded by the pipeline's own classes,
and the neighbour attention that keeps word order visible to the DiT."""
from __future__ import annotations

import pytest
import torch

from wan.modules.t5 import T5Encoder
from wan.train.text import (CAPTION_WORDS, SPECIAL_TOKENS, T5_CHECKPOINT, T5_TOKENIZER, frozen_t5_state_dict,
                            tokenizer_pieces, write_text_encoder)
from wan.utils.checkpoint import read_tensors

TEXT_LEN = 32


@pytest.fixture(scope='module')
def encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny_t5')
    checkpoint, tokenizer = write_text_encoder(folder)
    assert checkpoint == folder / T5_CHECKPOINT and tokenizer == folder / T5_TOKENIZER
    return T5Encoder(checkpoint, tokenizer, text_len=TEXT_LEN, dtype=torch.bfloat16)


def test_every_caption_word_is_one_token_in_both_cases(encoder):
    ids, mask = encoder.tokenize(['a red circle moves left on a blue background',
                                  'A red circle moves left on a blue background.',
                                  'An orange zebra'])
    assert ids.shape == mask.shape == (3, TEXT_LEN)
    unk, eos = SPECIAL_TOKENS.index('<unk>'), SPECIAL_TOKENS.index('</s>')
    assert int(mask[0].sum()) == 9 + 1 and int(ids[0, 9]) == eos
    assert unk not in ids[:2].tolist()[0] + ids[:2].tolist()[1]
    assert ids[0, 1:9].tolist() == ids[1, 1:9].tolist() and ids[0, 0] != ids[1, 0]  # 'a' vs 'A'
    assert int(mask[1].sum()) == 11  # ... 'background' '.' '</s>'
    assert ids[2, :4].tolist() == [ids[2, 0].item(), ids[2, 1].item(), unk, eos]  # 'zebra' is unknown
    words = {p for p, _ in tokenizer_pieces()}
    assert all('\u2581' + w in words and '\u2581' + w.capitalize() in words for w in CAPTION_WORDS)


def test_checkpoint_is_official_names_in_bf16_and_small(tmp_path):
    checkpoint, _ = write_text_encoder(tmp_path)
    tensors = read_tensors(checkpoint)
    assert set(tensors) == set(frozen_t5_state_dict(64))
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    assert tensors['token_embedding.weight'].shape[1] == 4096  # the DiT's text_dim
    assert tensors['token_embedding.weight'].shape[0] >= len(tokenizer_pieces())
    assert checkpoint.stat().st_size < 4e6


def test_each_word_carries_its_neighbours(encoder):
    a, b = encoder(['a red circle moves left on a blue background',
                    'a blue circle moves left on a red background'])
    assert a.shape == (10, 4096) and a.dtype == torch.bfloat16

    def cos(x, y):
        return float(torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=0))

    # same word, same neighbours: identical; same word, another next word: clearly different
    assert cos(a[4], b[4]) == pytest.approx(1.0, abs=1e-3)           # 'left' between 'moves' and 'on'
    assert cos(a[1], b[7]) < 0.9                                     # 'red' before 'circle' / 'background'
    assert cos(a[7], b[1]) < 0.9
    # the bag of vectors differs, so the DiT can tell the two captions apart
    assert (a.float() - b.float()).norm() > 0.3 * a.float().norm()


def test_attention_goes_to_the_neighbours():
    """With the shipped weights, head 0 puts > 99% of its weight on the next token, head 1 on the previous."""
    from wan.modules.t5 import relative_position_bucket
    state = frozen_t5_state_dict(64)
    length = 10
    pos = torch.arange(length)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None])
    bias = state['blocks.0.pos_embedding.embedding.weight'].float()[buckets]  # [Lq, Lk, heads]
    weights = torch.softmax(bias, dim=1)
    assert bool((weights[:-1, :, 0].diagonal(offset=1) > 0.99).all())
    assert bool((weights[1:, :, 1].diagonal() > 0.99).all())
