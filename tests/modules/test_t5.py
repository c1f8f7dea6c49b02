"""umT5 encoder (spec 5): parity with a plain re-reading of spec 5.1 and with transformers'
UMT5EncoderModel on identical random weights; cleaning, tokenization, trimming; strict loading."""
from __future__ import annotations

import math

import pytest
import torch

from tests.tiny.t5 import T5_CHECKPOINT, write_t5
from wan.errors import CheckpointError
from wan.modules.t5 import T5Encoder, UMT5Encoder, clean_text, relative_position_bucket
from wan.utils.checkpoint import read_tensors

PROMPTS = ['a red circle moves left across a black background.',
           'Two boxers are boxing in a ring, a cat watches them from the left side of the frame.']
TINY = dict(dim=32, dim_ffn=48, num_heads=4, num_layers=2)


# ---------------------------------------------------------------------------------------------
# Independent reference: spec 5.1 read literally, scalar bucket function, loops over the batch.

def ref_bucket(rel: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    half = num_buckets // 2
    offset = half if rel > 0 else 0
    n = abs(rel)
    exact = half // 2
    if n < exact:
        return offset + n
    return offset + min(half - 1, exact + math.floor(math.log(n / exact) / math.log(max_distance / exact)
                                                     * (half - exact)))


def ref_encode(sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    w = {k: v.to(dtype) for k, v in sd.items()}
    num_buckets, heads = w['blocks.0.pos_embedding.embedding.weight'].shape
    layers = 1 + max(int(k.split('.')[1]) for k in w if k.startswith('blocks.'))
    batch, length = ids.shape
    buckets = torch.tensor([[ref_bucket(j - i, num_buckets) for j in range(length)] for i in range(length)])

    def rms_norm(x, weight):  # no mean, statistic in fp32, then the weight's dtype
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return weight * x.to(weight.dtype)

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    x = w['token_embedding.weight'][ids]
    for i in range(layers):
        p = f'blocks.{i}.'
        h = rms_norm(x, w[p + 'norm1.weight'])
        q, k, v = ((h @ w[p + f'attn.{n}.weight'].T).view(batch, length, heads, -1).transpose(1, 2)
                   for n in 'qkv')  # (B, N, L, C)
        bias = w[p + 'pos_embedding.embedding.weight'][buckets].permute(2, 0, 1)  # (N, L, L)
        out = torch.empty_like(q)
        for b in range(batch):
            logits = q[b] @ k[b].transpose(1, 2) + bias  # unscaled
            logits[:, :, mask[b] == 0] = torch.finfo(dtype).min
            out[b] = torch.softmax(logits.float(), dim=-1).to(dtype) @ v[b]
        x = x + out.transpose(1, 2).reshape(batch, length, -1) @ w[p + 'attn.o.weight'].T
        h = rms_norm(x, w[p + 'norm2.weight'])
        gated = (h @ w[p + 'ffn.fc1.weight'].T) * gelu_tanh(h @ w[p + 'ffn.gate.0.weight'].T)
        x = x + gated @ w[p + 'ffn.fc2.weight'].T
    return rms_norm(x, w['norm.weight'])


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item(), (out - ref).abs().max().item()


# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(checkpoint, tokenizer folder) of a tiny bf16 umT5 in the official layout."""
    return write_t5(tmp_path_factory.mktemp('t5'), **TINY)


@pytest.fixture(scope='module')
def encoder32(tiny):
    return T5Encoder(*tiny, text_len=160, dtype=torch.float32)


def test_relative_position_bucket_spec_examples():
    rel = torch.tensor([0, -25, -100, 25, 100])
    assert relative_position_bucket(rel).tolist() == [0, 11, 15, 27, 31]
    every = torch.arange(-300, 301)
    assert relative_position_bucket(every).tolist() == [ref_bucket(r) for r in every.tolist()]
    assert (relative_position_bucket(every, num_buckets=16).tolist()
            == [ref_bucket(r, 16) for r in every.tolist()])


def test_parity_fp32(tiny, encoder32):
    ids, mask = encoder32.tokenize(PROMPTS)  # 160 tokens: relative distances reach every bucket
    with torch.no_grad():
        out = encoder32.model(ids, mask)
    ref = ref_encode(read_tensors(tiny[0]), ids, mask, torch.float32)
    rel, max_abs = errors(out, ref)
    print(f'fp32 parity vs spec reference: rel {rel:.2e}, max abs {max_abs:.2e}')
    assert rel < 1e-5


def test_parity_bf16(tiny):
    encoder = T5Encoder(*tiny, text_len=64)  # default dtype: bf16, like config.t5_dtype
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    ids, mask = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        out = encoder.model(ids, mask)
    assert out.dtype == torch.bfloat16
    sd = read_tensors(tiny[0])
    rel_same, max_same = errors(out, ref_encode(sd, ids, mask, torch.bfloat16))
    rel_32, max_32 = errors(out, ref_encode(sd, ids, mask, torch.float32))
    print(f'bf16 vs bf16 reference: rel {rel_same:.2e}, max abs {max_same:.2e}; '
          f'vs fp32 reference: rel {rel_32:.2e}, max abs {max_32:.2e}')
    assert rel_same < 1e-3  # same op order and roundings (torch.nn.functional.gelu here: 7e-3)
    assert rel_32 < 2e-2  # bf16 rounding through two layers


def test_matches_transformers_umt5(tiny, encoder32):
    from transformers import UMT5Config, UMT5EncoderModel

    sd = {k: v.float() for k, v in read_tensors(tiny[0]).items()}
    vocab, dim = sd['token_embedding.weight'].shape
    buckets, heads = sd['blocks.0.pos_embedding.embedding.weight'].shape
    config = UMT5Config(vocab_size=vocab, d_model=dim, d_kv=sd['blocks.0.attn.q.weight'].shape[0] // heads,
                        d_ff=sd['blocks.0.ffn.fc1.weight'].shape[0], num_layers=2, num_heads=heads,
                        relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                        feed_forward_proj='gated-gelu', dropout_rate=0.0, attn_implementation='eager')
    hf = UMT5EncoderModel(config).eval()
    names = {'norm1': 'layer.0.layer_norm', 'attn.q': 'layer.0.SelfAttention.q',
             'attn.k': 'layer.0.SelfAttention.k', 'attn.v': 'layer.0.SelfAttention.v',
             'attn.o': 'layer.0.SelfAttention.o',
             'pos_embedding.embedding': 'layer.0.SelfAttention.relative_attention_bias',
             'norm2': 'layer.1.layer_norm', 'ffn.gate.0': 'layer.1.DenseReluDense.wi_0',
             'ffn.fc1': 'layer.1.DenseReluDense.wi_1', 'ffn.fc2': 'layer.1.DenseReluDense.wo'}
    embedding = sd['token_embedding.weight']
    hf_sd = {'shared.weight': embedding, 'encoder.embed_tokens.weight': embedding,
             'encoder.final_layer_norm.weight': sd['norm.weight']}
    for i in range(2):
        for ours, theirs in names.items():
            hf_sd[f'encoder.block.{i}.{theirs}.weight'] = sd[f'blocks.{i}.{ours}.weight']
    assert len(hf_sd) == len(sd) + 1  # the tied embedding appears twice in transformers
    hf.load_state_dict(hf_sd, strict=True)

    ids, mask = encoder32.tokenize(PROMPTS)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = encoder32.model(ids, mask)
    rel, max_abs = errors(out, ref)
    print(f'fp32 parity vs transformers UMT5EncoderModel: rel {rel:.2e}, max abs {max_abs:.2e}')
    assert rel < 1e-5


def test_sizes_come_from_the_checkpoint(tmp_path):
    ckpt, tok = write_t5(tmp_path, dim=24, dim_attn=40, dim_ffn=56, num_heads=5, num_layers=3,
                         num_buckets=16, vocab_size=300, dtype=torch.float32)
    model = T5Encoder(ckpt, tok, text_len=20, dtype=torch.float32).model
    assert model.token_embedding.weight.shape == (300, 24)
    assert len(model.blocks) == 3 and model.num_buckets == 16
    attn = model.blocks[2].attn
    assert (attn.num_heads, attn.head_dim) == (5, 8)
    assert model.blocks[0].ffn.fc2.weight.shape == (24, 56)
    ids = torch.randint(0, 300, (1, 20))
    out = model(ids, torch.ones_like(ids))
    ref = ref_encode(read_tensors(ckpt), ids, torch.ones_like(ids), torch.float32)
    assert errors(out, ref)[0] < 1e-5


@pytest.mark.parametrize('raw, clean', [
    ('  a\tred\n\n cat\u3000 ', 'a red cat'),  # any whitespace run -> one space, stripped
    ('The Mona Lisa doesn\u00c3\u00a2\u00e2\u201a\u00ac\u00e2\u201e\u00a2t have eyebrows.',
     "The Mona Lisa doesn't have eyebrows."),  # mojibake fixed by ftfy
    ('caf\u00c3\u00a9 au lait', 'caf\u00e9 au lait'),
    ('<p>Tom &amp;amp; Jerry</p>', '<p>Tom & Jerry</p>'),  # ftfy keeps entities in HTML; unescape x2
    ('<i>x &amp;amp;amp; y</i>', '<i>x &amp; y</i>'),  # ... exactly twice
    ('a cat &amp; a dog', 'a cat & a dog'),
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_tokenize_pads_and_appends_eos(encoder32):
    tokenizer = encoder32.tokenizer
    ids, mask = encoder32.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (2, 160)
    for row, m, prompt in zip(ids, mask, PROMPTS):
        plain = tokenizer(clean_text(prompt)).input_ids  # no padding
        n = int(m.sum())
        assert n == len(plain) and plain[-1] == tokenizer.eos_token_id == 1
        assert row[:n].tolist() == plain
        assert (row[n:] == tokenizer.pad_token_id).all() and tokenizer.pad_token_id == 0
        assert m[:n].all() and not m[n:].any()
    assert tokenizer.unk_token_id == 2


def test_outputs_trimmed_to_true_length(encoder32):
    out = encoder32(PROMPTS)
    ids, mask = encoder32.tokenize(PROMPTS)
    with torch.no_grad():
        full = encoder32.model(ids, mask)
    lengths = mask.sum(1).tolist()
    assert lengths[0] != lengths[1]
    assert [tuple(u.shape) for u in out] == [(n, 32) for n in lengths]
    for u, f, n in zip(out, full, lengths):
        assert torch.equal(u, f[:n])


def test_batch_equals_single_and_padding_is_masked(tiny, encoder32):
    batch = encoder32(PROMPTS)
    short = T5Encoder(*tiny, text_len=40, dtype=torch.float32)  # less padding, same true tokens
    for i, prompt in enumerate(PROMPTS):
        for single in (encoder32([prompt])[0], short([prompt])[0]):
            assert single.shape == batch[i].shape
            torch.testing.assert_close(single, batch[i], rtol=1e-5, atol=1e-5)


def test_truncation_keeps_eos(tiny):
    encoder = T5Encoder(*tiny, text_len=8, dtype=torch.float32)
    ids, mask = encoder.tokenize([PROMPTS[1]])
    assert mask.all() and ids[0, -1].item() == 1
    assert encoder([PROMPTS[1]])[0].shape == (8, 32)


def test_runs_outside_autocast_and_delivers_to_device(encoder32):
    plain = encoder32(PROMPTS[:1])[0]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        under_autocast = encoder32(PROMPTS[:1])[0]
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, plain)
    assert not plain.requires_grad
    assert encoder32(PROMPTS[:1], device='meta')[0].device.type == 'meta'


def test_tiny_writer_is_deterministic(tiny, tmp_path):
    ckpt, tok = write_t5(tmp_path, **TINY)
    assert (tok / 'tokenizer.json').read_bytes() == (tiny[1] / 'tokenizer.json').read_bytes()
    again, first = read_tensors(ckpt), read_tensors(tiny[0])
    assert again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) and again[k].dtype == torch.bfloat16 for k in first)


# ---------------------------------------------------------------------------------------------
# Loader errors: each names the file (or folder) and the key.

def _rewrite(tiny, tmp_path, edit):
    sd = dict(read_tensors(tiny[0]))
    edit(sd)
    path = tmp_path / T5_CHECKPOINT
    torch.save(sd, path)
    return path


def test_missing_checkpoint_file(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / 'absent.pth')):
        T5Encoder(tmp_path / 'absent.pth', tiny[1])


def test_missing_tokenizer_folder(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=f'tokenizer folder not found: {tmp_path / "google"}'):
        T5Encoder(tiny[0], tmp_path / 'google')


def test_unusable_tokenizer_folder(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=f'cannot load the tokenizer from {tmp_path}'):
        T5Encoder(tiny[0], tmp_path)


@pytest.mark.parametrize('edit, message', [
    (lambda sd: sd.pop('blocks.1.ffn.fc2.weight'), "missing tensor 'blocks.1.ffn.fc2.weight'"),
    (lambda sd: sd.pop('token_embedding.weight'), "missing tensor 'token_embedding.weight'"),
    (lambda sd: sd.update({'blocks.0.attn.bias': torch.zeros(4)}), "unexpected tensor 'blocks.0.attn.bias'"),
    (lambda sd: sd.update({'blocks.0.attn.o.weight': torch.zeros(32, 31)}),
     r"tensor 'blocks.0.attn.o.weight' has shape \(32, 31\), the model expects \(32, 32\)"),
])
def test_strict_loading(tiny, tmp_path, edit, message):
    path = _rewrite(tiny, tmp_path, edit)
    with pytest.raises(CheckpointError, match=f'{path}: {message}'):
        T5Encoder(path, tiny[1])


def test_state_dict_matches_release_layout():
    with torch.device('meta'):
        model = UMT5Encoder()  # the umt5-xxl defaults of spec 5.1
    sd = model.state_dict()
    assert len(sd) == 242
    assert sum(v.numel() for v in sd.values()) == pytest.approx(5680.9e6, rel=1e-4)
    assert sd['blocks.23.pos_embedding.embedding.weight'].shape == (32, 64)
    assert sd['blocks.0.ffn.gate.0.weight'].shape == sd['blocks.0.ffn.fc1.weight'].shape == (10240, 4096)
    assert UMT5Encoder.sizes_from_tensors(sd, 'release') == dict(
        vocab_size=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24,
        num_buckets=32)
