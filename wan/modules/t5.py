"""umT5-XXL text encoder (spec 5): model, tokenizer and text cleaning.

The modules are named like the official `models_t5_umt5-xxl-enc-bf16.pth`, so it loads unchanged.
Written by hand rather than through transformers' `UMT5EncoderModel`: that one computes the eager
softmax in the activation dtype (bf16) and its attention path changes between versions, while the
reference computes the logits in bf16 and the softmax in fp32 (spec 5.1).

Shape legend: B batch, L tokens, N heads, C head dim, D model dim.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..utils.checkpoint import load_into, read_tensors

__all__ = ['T5Encoder', 'UMT5Encoder', 'clean_text', 'relative_position_bucket']

MAX_DISTANCE = 128  # spec 5.1: relative positions beyond this share the last bucket


# ---------------------------------------------------------------------------------------------
# Text cleaning (spec 5.2, mode 'whitespace')

def clean_text(text: str) -> str:
    """ftfy, html.unescape twice, strip; then collapse whitespace runs to one space."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r'\s+', ' ', text).strip()


# ---------------------------------------------------------------------------------------------
# Model (spec 5.1)

def relative_position_bucket(rel: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """Bidirectional T5 bucket of `rel = key_pos - query_pos` (spec 5.1).

    Half the buckets per direction (offset for rel > 0); exact below half of that, then
    logarithmic up to `max_distance`.
    """
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    n = rel.abs()
    max_exact = half // 2
    # clamp: log(0) would be -inf; those n < max_exact take the exact branch anyway
    large = max_exact + (torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(n < max_exact, n, large)


class RMSNorm(nn.Module):
    """T5 layer norm: no mean, no bias; statistic in fp32, result in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)  # fp32
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class GELUTanh(nn.Module):
    """tanh-approximated GELU, written op by op like the reference so bf16 rounding matches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class RelativePositionBias(nn.Module):
    """One block's learned bias per (bucket, head) (umT5: not shared between blocks)."""

    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, N, Lq, Lk)


class Attention(nn.Module):
    """Self-attention without 1/sqrt(C) scaling; logits in the model dtype, softmax in fp32."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, pos_bias: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q = self.q(x).view(b, length, self.num_heads, self.head_dim)  # (B, L, N, C)
        k = self.k(x).view(b, length, self.num_heads, self.head_dim)
        v = self.v(x).view(b, length, self.num_heads, self.head_dim)
        bias = pos_bias.masked_fill(~key_mask, torch.finfo(x.dtype).min)  # (B, N, L, L)
        logits = torch.einsum('binc,bjnc->bnij', q, k) + bias
        weights = F.softmax(logits.float(), dim=-1).type_as(logits)
        out = torch.einsum('bnij,bjnc->binc', weights, v).reshape(b, length, -1)
        return self.o(out)


class FeedForward(nn.Module):
    """Gated GELU: fc2(fc1(x) * gelu_tanh(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), GELUTanh())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class Block(nn.Module):
    """Pre-norm block with its own relative position bias. (The reference's fp16 clamp is
    omitted: it acts only on fp16 activations, and the encoder runs in bf16 or fp32.)"""

    def __init__(self, dim: int, dim_attn: int, dim_ffn: int, num_heads: int, num_buckets: int):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, dim_attn, num_heads)
        self.norm2 = RMSNorm(dim)
        self.ffn = FeedForward(dim, dim_ffn)
        self.pos_embedding = RelativePositionBias(num_buckets, num_heads)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask, self.pos_embedding(buckets))
        return x + self.ffn(self.norm2(x))


class UMT5Encoder(nn.Module):
    """The encoder stack of `umt5_xxl(encoder_only=True)`; dropout is omitted (inference only)."""

    def __init__(self, vocab_size: int = 256384, dim: int = 4096, dim_attn: int = 4096,
                 dim_ffn: int = 10240, num_heads: int = 64, num_layers: int = 24, num_buckets: int = 32):
        super().__init__()
        self.num_buckets = num_buckets
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, dim_attn, dim_ffn, num_heads, num_buckets)
                                    for _ in range(num_layers))
        self.norm = RMSNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: (B, L); padding keys (mask 0) are masked out. Returns (B, L, D)."""
        x = self.token_embedding(ids)
        pos = torch.arange(ids.shape[1], device=ids.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets)  # (Lq, Lk)
        key_mask = mask.bool()[:, None, None, :]  # (B, 1, 1, Lk)
        for block in self.blocks:
            x = block(x, key_mask, buckets)
        return self.norm(x)

    @staticmethod
    def sizes_from_tensors(tensors: dict[str, torch.Tensor], source: str | Path) -> dict[str, int]:
        """Constructor arguments read from the tensor shapes, so any size loads through one path."""
        def shape(key: str) -> tuple[int, ...]:
            if key not in tensors:
                raise CheckpointError(f'{source}: missing tensor {key!r}')
            return tuple(tensors[key].shape)

        vocab_size, dim = shape('token_embedding.weight')
        num_buckets, num_heads = shape('blocks.0.pos_embedding.embedding.weight')
        layers = {int(m.group(1)) for k in tensors if (m := re.match(r'blocks\.(\d+)\.', k))}
        return dict(vocab_size=vocab_size, dim=dim, dim_attn=shape('blocks.0.attn.q.weight')[0],
                    dim_ffn=shape('blocks.0.ffn.fc1.weight')[0], num_heads=num_heads,
                    num_layers=max(layers) + 1, num_buckets=num_buckets)

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = 'cpu') -> UMT5Encoder:
        """Build on the meta device and assign the checkpoint's tensors strictly."""
        tensors = read_tensors(path)
        with torch.device('meta'):
            model = cls(**cls.sizes_from_tensors(tensors, path))
        load_into(model, tensors, path, dtype)
        return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Wrapper used by the pipelines (spec 5.2, 5.3)

def load_tokenizer(path: str | Path, text_len: int):
    """The `google/umt5-xxl` tokenizer folder, read locally (never from a hub)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f'tokenizer folder not found: {path}')
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(path), model_max_length=text_len, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for unusable folders
        raise CheckpointError(f'cannot load the tokenizer from {path}: {exc}') from exc


class T5Encoder:
    """Cleans, tokenizes (padded to `text_len`, EOS appended) and encodes prompts."""

    def __init__(self, checkpoint_path: str | Path, tokenizer_path: str | Path, text_len: int = 512,
                 dtype: torch.dtype = torch.bfloat16, device: str | torch.device = 'cpu'):
        self.text_len = text_len
        self.tokenizer = load_tokenizer(tokenizer_path, text_len)  # cheap check before the 11 GB read
        self.model: nn.Module = UMT5Encoder.from_checkpoint(checkpoint_path, dtype, device)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both (B, text_len)."""
        out = self.tokenizer([clean_text(t) for t in texts], return_tensors='pt', padding='max_length',
                             truncation=True, max_length=self.text_len, add_special_tokens=True)
        return out.input_ids, out.attention_mask

    def __call__(self, texts: list[str], device: str | torch.device | None = None) -> list[torch.Tensor]:
        """One (true_len_i, D) tensor per text, EOS included, in the model's dtype.

        Runs wherever `model` currently is, outside any autocast; results go to `device` if given.
        """
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = self.tokenize(texts)
        model_device = next(self.model.parameters()).device
        ids, mask = ids.to(model_device), mask.to(model_device)
        with torch.no_grad(), torch.autocast(model_device.type, enabled=False):
            context = self.model(ids, mask)
        lengths = mask.sum(dim=1).tolist()
        return [u[:n].to(device) if device is not None else u[:n] for u, n in zip(context, lengths)]
