"""A tiny umT5 checkpoint and tokenizer in the official layout, for tests and tiny pipelines.

`write_t5(ckpt_dir)` writes `ckpt_dir/models_t5_umt5-xxl-enc-bf16.pth` (official key names) and a
T5 tokenizer folder at `ckpt_dir/google/umt5-xxl`, deterministically and in well under a second.

The tokenizer is a SentencePiece-style Unigram model (pad 0, `</s>` 1, `<unk>` 2, like T5) whose
pieces and log-probabilities are counted from a small built-in corpus of video captions: whole
words, plus every ASCII character so unseen words still split (other characters become `<unk>`).
Counting rather than running the `tokenizers` Unigram trainer keeps the ids identical from run to
run (the trainer's EM is not deterministic), which a tiny model trained on these ids relies on.
"""
from __future__ import annotations

import math
import string
from collections import Counter
from pathlib import Path

import torch

from wan.train.text import write_tokenizer as write_unigram_tokenizer

T5_CHECKPOINT = 'models_t5_umt5-xxl-enc-bf16.pth'
T5_TOKENIZER = 'google/umt5-xxl'
SPECIAL_TOKENS = ('<pad>', '</s>', '<unk>')  # ids 0, 1, 2

CAPTIONS = """\
a red circle moves left across a black background.
a blue square moves right, slowly.
a green triangle moves up and then down.
a yellow ball bounces on the floor.
a white cube rotates in the center of the frame.
an orange star spins quickly on a gray background.
a purple ring grows larger and then shrinks.
a pink box slides from the left to the right.
two cats play with a red ball.
a black cat jumps over a white fence.
a small brown dog runs towards the camera.
two boxers are boxing in a ring under bright lights.
a boxer punches a heavy bag, then moves back.
a man walks along the beach at sunset.
a woman rides a bicycle down a quiet street.
the camera pans slowly from left to right over green hills.
three small circles move together in a line.
a large blue circle and a small red square collide.
the square falls and the circle rises.
snow falls on a dark city at night.
waves crash against the rocks, close up, 4k.
a cat sleeps on a sofa; the light changes slowly.
""".splitlines()


def tokenizer_pieces() -> list[tuple[str, float]]:
    """Unigram vocabulary: special tokens, then pieces by falling count (ties by name)."""
    counts: Counter[str] = Counter()
    for caption in CAPTIONS:
        for word in caption.replace(',', ' ,').replace('.', ' .').replace(';', ' ;').split():
            counts['\u2581' + word] += 1  # SentencePiece word-start marker
            counts.update(word)
    counts['\u2581'] += 1  # a bare word start and every ASCII character: unseen words still split
    counts.update(string.ascii_letters + string.digits + string.punctuation)
    total = sum(counts.values())
    pieces = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(t, 0.0) for t in SPECIAL_TOKENS] + [(p, math.log(c / total)) for p, c in pieces]


def write_tokenizer(folder: str | Path) -> Path:
    """Save a T5 tokenizer folder (tokenizer.json + config) over `tokenizer_pieces()` that AutoTokenizer loads."""
    return write_unigram_tokenizer(folder, tokenizer_pieces())


def t5_state_dict(*, vocab_size: int, dim: int = 32, dim_attn: int | None = None, dim_ffn: int = 64,
                  num_heads: int = 4, num_layers: int = 2, num_buckets: int = 32, seed: int = 0,
                  dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random weights under the official key names (spec 5.1), scaled to keep activations O(1)."""
    dim_attn = dim_attn or dim
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    def norm_weight() -> torch.Tensor:
        return (1 + torch.randn(dim, generator=gen) * 0.1).to(dtype)

    sd = {'token_embedding.weight': normal(vocab_size, dim, std=1.0)}
    for i in range(num_layers):
        p = f'blocks.{i}.'
        sd[p + 'norm1.weight'] = norm_weight()
        for name in 'qkv':
            sd[p + f'attn.{name}.weight'] = normal(dim_attn, dim, std=dim ** -0.5)
        sd[p + 'attn.o.weight'] = normal(dim, dim_attn, std=dim_attn ** -0.5)
        sd[p + 'norm2.weight'] = norm_weight()
        sd[p + 'ffn.gate.0.weight'] = normal(dim_ffn, dim, std=dim ** -0.5)
        sd[p + 'ffn.fc1.weight'] = normal(dim_ffn, dim, std=dim ** -0.5)
        sd[p + 'ffn.fc2.weight'] = normal(dim, dim_ffn, std=dim_ffn ** -0.5)
        sd[p + 'pos_embedding.embedding.weight'] = normal(num_buckets, num_heads, std=1.0)
    sd['norm.weight'] = norm_weight()
    return sd


def write_t5(ckpt_dir: str | Path, *, dim: int = 32, dim_ffn: int = 64, num_heads: int = 4,
             num_layers: int = 2, num_buckets: int = 32, vocab_size: int | None = None,
             dim_attn: int | None = None, seed: int = 0,
             dtype: torch.dtype = torch.bfloat16) -> tuple[Path, Path]:
    """Write the tiny checkpoint and tokenizer into `ckpt_dir`; returns (checkpoint, tokenizer folder).

    `vocab_size` defaults to the tokenizer's size rounded up to a multiple of 64 (the release file,
    too, has more embedding rows than tokenizer pieces).
    """
    ckpt_dir = Path(ckpt_dir)
    tokenizer_path = write_tokenizer(ckpt_dir / T5_TOKENIZER)
    n_pieces = len(tokenizer_pieces())
    if vocab_size is None:
        vocab_size = -(-n_pieces // 64) * 64
    elif vocab_size < n_pieces:
        raise ValueError(f'vocab_size {vocab_size} < {n_pieces} tokenizer pieces')
    checkpoint_path = ckpt_dir / T5_CHECKPOINT
    torch.save(t5_state_dict(vocab_size=vocab_size, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn,
                             num_heads=num_heads, num_layers=num_layers, num_buckets=num_buckets,
                             seed=seed, dtype=dtype), checkpoint_path)
    return checkpoint_path, tokenizer_path
