"""The tiny model's text side: a tokenizer over the caption words and a frozen 1-layer umT5.

Both are written in the official layout (`google/umt5-xxl/` tokenizer folder, `models_t5_umt5-xxl-
enc-bf16.pth` under the official key names) and load through `wan.modules.t5.T5Encoder` unchanged.

The encoder is random and never trained, except for one deliberate choice: its relative-position
bias makes head 0 attend to the next word and head 1 to the previous one. The DiT's cross-attention
sees the text as an unordered set, so without this 'a red circle on a blue background' and 'a blue
circle on a red background' would look the same to it; with it, every word's vector carries its
neighbours ('red' next to 'circle' differs from 'red' next to 'background').
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..configs import WAN_CONFIGS
from ..data.synthetic import COLOURS, DIRECTIONS, SHAPES

T5_CHECKPOINT = WAN_CONFIGS['ti2v-tiny'].t5_checkpoint   # models_t5_umt5-xxl-enc-bf16.pth
T5_TOKENIZER = WAN_CONFIGS['ti2v-tiny'].t5_tokenizer     # google/umt5-xxl
SPECIAL_TOKENS = ('<pad>', '</s>', '<unk>')  # ids 0, 1, 2, as T5
CAPTION_WORDS = ('a', 'an', 'moves', 'on', 'background', *COLOURS, *SHAPES, *DIRECTIONS)
PUNCTUATION = ('.', ',')
MARK = '\u2581'  # SentencePiece word-start marker


def tokenizer_pieces() -> list[tuple[str, float]]:
    """Unigram pieces: special tokens, each caption word in lower case and capitalised, punctuation.

    Equal scores: every word is one piece, so the split never depends on them. Anything else is
    `<unk>`; case is kept (the T5 tokenizer class drops custom normalisers when it is loaded).
    """
    words = [MARK + w for w in CAPTION_WORDS] + [MARK + w.capitalize() for w in CAPTION_WORDS]
    pieces = list(SPECIAL_TOKENS) + words + list(PUNCTUATION)
    return [(p, 0.0 if p in SPECIAL_TOKENS else -math.log(len(pieces))) for p in pieces]


def write_tokenizer(folder: str | Path, pieces: list[tuple[str, float]] | None = None) -> Path:
    """Save a T5 tokenizer folder (tokenizer.json + tokenizer_config.json) that AutoTokenizer loads.

    `pieces`: (piece, log-probability) pairs of the Unigram model, starting with SPECIAL_TOKENS;
    default `tokenizer_pieces()`. Words are split on whitespace and marked with MARK at their start.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = tokenizer_pieces() if pieces is None else pieces
    tok = Tokenizer(models.Unigram(pieces, unk_id=SPECIAL_TOKENS.index('<unk>')))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=MARK, prepend_scheme='always', split=True)])
    tok.decoder = decoders.Metaspace(replacement=MARK, prepend_scheme='always', split=True)
    tok.post_processor = processors.TemplateProcessing(
        single='$A </s>', pair='$A </s> $B </s>', special_tokens=[('</s>', 1)])
    folder = Path(folder)
    T5TokenizerFast(tokenizer_object=tok, extra_ids=0).save_pretrained(str(folder))
    return folder


def neighbour_bucket(offset: int, num_buckets: int = 32) -> int:
    """Relative-position bucket of key_pos - query_pos = offset, for |offset| < num_buckets / 4 (spec 5.1)."""
    assert abs(offset) < num_buckets // 4
    return abs(offset) + (num_buckets // 2 if offset > 0 else 0)


def frozen_t5_state_dict(vocab_size: int, *, dim: int = 4096, num_heads: int = 2, head_dim: int = 16,
                         dim_ffn: int = 16, num_buckets: int = 32, neighbour_logit: float = 10.0,
                         seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """One umT5 block under the official key names; random except the neighbour attention.

    Token embeddings ~ N(0, 1); v/o scaled so the attended neighbour adds about as much as the word
    itself; q/k tiny so the position bias (head 0: next word, head 1: previous word) decides where
    each head looks; a small random gated-GELU FFN; unit norm weights.
    """
    assert num_heads == 2, 'head 0 looks forward, head 1 backward'
    gen = torch.Generator().manual_seed(seed)
    dim_attn = num_heads * head_dim

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    bias = torch.zeros(num_buckets, num_heads)
    bias[neighbour_bucket(+1, num_buckets), 0] = neighbour_logit
    bias[neighbour_bucket(-1, num_buckets), 1] = neighbour_logit
    p = 'blocks.0.'
    return {
        'token_embedding.weight': normal(vocab_size, dim, std=1.0),
        p + 'norm1.weight': torch.ones(dim, dtype=dtype),
        p + 'attn.q.weight': normal(dim_attn, dim, std=0.1 * dim ** -0.5),
        p + 'attn.k.weight': normal(dim_attn, dim, std=0.1 * dim ** -0.5),
        p + 'attn.v.weight': normal(dim_attn, dim, std=dim ** -0.5),
        p + 'attn.o.weight': normal(dim, dim_attn, std=dim_attn ** -0.5),
        p + 'norm2.weight': torch.ones(dim, dtype=dtype),
        p + 'ffn.gate.0.weight': normal(dim_ffn, dim, std=dim ** -0.5),
        p + 'ffn.fc1.weight': normal(dim_ffn, dim, std=dim ** -0.5),
        p + 'ffn.fc2.weight': normal(dim, dim_ffn, std=0.5 * dim_ffn ** -0.5),
        p + 'pos_embedding.embedding.weight': bias.to(dtype),
        'norm.weight': torch.ones(dim, dtype=dtype),
    }


def write_text_encoder(ckpt_dir: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the tokenizer folder and the frozen encoder into `ckpt_dir`; returns (checkpoint, tokenizer)."""
    ckpt_dir = Path(ckpt_dir)
    tokenizer_path = write_tokenizer(ckpt_dir / T5_TOKENIZER)
    vocab_size = -(-len(tokenizer_pieces()) // 16) * 16
    checkpoint_path = ckpt_dir / T5_CHECKPOINT
    torch.save(frozen_t5_state_dict(vocab_size, seed=seed), checkpoint_path)
    return checkpoint_path, tokenizer_path
