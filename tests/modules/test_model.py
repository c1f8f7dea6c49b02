"""WanModel: official layout, parity with diffusers' WanTransformer3DModel, RoPE, time embedding,
padding, fp32 islands, sequence-parallel seams and strict checkpoint loading."""
import json
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tiny.dit import (diffusers_config, random_dit_state_dict, to_diffusers_state_dict,
                            write_dit_checkpoint)
from wan.errors import CheckpointError
from wan.modules.model import FeedForward, WanModel, rope_apply, rope_tables

TINY = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=256, text_len=512, eps=1e-6)
CHANNELS = {'t2v': (16, 16), 'i2v': (36, 16), 'ti2v': (48, 48)}  # (in_dim, out_dim)


def tiny_config(model_type='t2v'):
    in_dim, out_dim = CHANNELS[model_type]
    return dict(model_type=model_type, in_dim=in_dim, out_dim=out_dim, **TINY)


def tiny_model(model_type='t2v', seed=0):
    config = tiny_config(model_type)
    with torch.device('meta'):
        model = WanModel(**config)
    model.load_state_dict(random_dit_state_dict(config, seed), assign=True)
    return model.eval().requires_grad_(False)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def inputs(model_type, batch=1, frames=3, height=6, width=8, seed=1):
    """Latents, timesteps, contexts (true lengths), seq_len and y as the pipelines pass them."""
    gen = torch.Generator().manual_seed(seed)
    noise_channels = 16 if model_type == 'i2v' else CHANNELS[model_type][0]
    x = [torch.randn(noise_channels, frames, height, width, generator=gen) for _ in range(batch)]
    y = [torch.randn(20, frames, height, width, generator=gen) for _ in range(batch)] \
        if model_type == 'i2v' else None
    context = [torch.randn(7 + 5 * i, 4096, generator=gen) for i in range(batch)]
    seq_len = frames * (height // 2) * (width // 2)
    if model_type == 'ti2v':  # spec 3.7: first latent frame's tokens get t = 0
        t = torch.full((batch, seq_len), 937)
        t[:, :(height // 2) * (width // 2)] = 0
    else:
        t = torch.tensor([999, 501][:batch])
    return x, t, context, seq_len, y


# -- layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize('config, tensors, millions, patch_shape, head_shape', [
    (dict(model_type='t2v', dim=5120, ffn_dim=13824, in_dim=16, out_dim=16, num_heads=40, num_layers=40),
     1095, 14288.49, (5120, 16, 1, 2, 2), (64, 5120)),
    (dict(model_type='i2v', dim=5120, ffn_dim=13824, in_dim=36, out_dim=16, num_heads=40, num_layers=40),
     1095, 14288.90, (5120, 36, 1, 2, 2), (64, 5120)),
    (dict(model_type='ti2v', dim=3072, ffn_dim=14336, in_dim=48, out_dim=48, num_heads=24, num_layers=30),
     825, 4999.79, (3072, 48, 1, 2, 2), (192, 3072)),
])
def test_release_state_dicts(config, tensors, millions, patch_shape, head_shape):
    """Spec 3.2: tensor counts, parameter counts and shapes of the released checkpoints."""
    with torch.device('meta'):
        state = WanModel(**config).state_dict()
    dim = config['dim']
    assert len(state) == tensors
    assert round(sum(v.numel() for v in state.values()) / 1e6, 2) == millions
    assert state['patch_embedding.weight'].shape == patch_shape
    assert state['head.head.weight'].shape == head_shape
    assert state['time_projection.1.weight'].shape == (6 * dim, dim)
    assert state['text_embedding.0.weight'].shape == (dim, 4096)
    assert state['time_embedding.0.weight'].shape == (dim, 256)
    assert state['blocks.0.modulation'].shape == (1, 6, dim)
    assert state['head.modulation'].shape == (1, 2, dim)
    assert state['blocks.0.self_attn.norm_q.weight'].shape == (dim,)
    assert state['blocks.0.norm3.bias'].shape == (dim,)
    assert not any('norm1' in k or 'norm2' in k or 'head.norm' in k or 'freq' in k for k in state)


# -- parity with diffusers ---------------------------------------------------------------------

@pytest.mark.parametrize('model_type, batch', [('t2v', 2), ('i2v', 1), ('ti2v', 1)])
def test_parity_with_diffusers(model_type, batch):
    from diffusers import WanTransformer3DModel
    config = tiny_config(model_type)
    state = random_dit_state_dict(config, seed=3)
    ours = tiny_model(model_type, seed=3)
    theirs = WanTransformer3DModel(**diffusers_config(config))
    theirs.load_state_dict(to_diffusers_state_dict(state), strict=True)
    theirs.eval()
    x, t, context, seq_len, y = inputs(model_type, batch)

    with torch.no_grad():
        out = ours(x, t, context, seq_len, y=y)
        hidden = torch.stack([torch.cat([u, v]) for u, v in zip(x, y)] if y else x)
        padded = torch.stack([torch.cat([c, c.new_zeros(512 - len(c), 4096)]) for c in context])
        expected = theirs(hidden, t, padded, return_dict=False)[0]

    assert [tuple(o.shape) for o in out] == [tuple(e.shape) for e in expected]
    assert all(o.dtype == torch.float32 for o in out)
    out = torch.stack(out)
    # diffusers computes the sinusoidal embedding in fp32, the reference (and we) in float64
    assert rel_err(out, expected) < 2e-5, rel_err(out, expected)

    # with that one known difference removed, only fp32 rounding remains
    from wan.modules.model import sinusoidal_embedding_1d
    theirs.condition_embedder.timesteps_proj.forward = \
        lambda timesteps: sinusoidal_embedding_1d(config['freq_dim'], timesteps).float()
    with torch.no_grad():
        expected = theirs(hidden, t, padded, return_dict=False)[0]
    assert rel_err(out, expected) < 1e-6, rel_err(out, expected)


# -- time embedding ----------------------------------------------------------------------------

def assert_fp32_rounding_equal(a, b):
    """Equal up to fp32 summation order: a one-row and a many-row matmul may differ in the last bits."""
    a = a.expand_as(b)
    assert (a - b).abs().max() <= 8 * torch.finfo(torch.float32).eps * b.abs().max()


def per_token_time_embeddings(model, t_per_token):
    """The reference's path (spec 3.3 step 4): every token's embedding computed on its own."""
    from wan.modules.model import sinusoidal_embedding_1d
    batch, seq_len = t_per_token.shape
    sinusoid = sinusoidal_embedding_1d(model.freq_dim, t_per_token.flatten()).float()
    e = model.time_embedding(sinusoid)
    e0 = model.time_projection(e).unflatten(1, (6, model.dim))
    return e.unflatten(0, (batch, seq_len)), e0.unflatten(0, (batch, seq_len))


def test_time_embedding_computed_once_when_t_is_shared():
    model = tiny_model()
    seq_len = 36
    t = torch.tensor([999, 501])
    e, e0, index = model.time_embeddings(t, seq_len)
    assert e.shape == (2, 1, 64) and e0.shape == (2, 1, 6, 64) and index is None  # broadcast rows
    e_tok, e0_tok = per_token_time_embeddings(model, t[:, None].expand(2, seq_len))
    assert_fp32_rounding_equal(e, e_tok)
    assert_fp32_rounding_equal(e0, e0_tok)

    # a constant per-token t takes the same path: identical embeddings and model output
    e_const, e0_const, _ = model.time_embeddings(t[:, None].expand(2, seq_len), seq_len)
    assert torch.equal(e_const, e) and torch.equal(e0_const, e0)
    x, _, context, _, _ = inputs('t2v', batch=2)
    with torch.no_grad():
        out_scalar = model(x, t, context, seq_len)
        out_tokens = model(x, t[:, None].expand(2, seq_len), context, seq_len)
    assert all(torch.equal(a, b) for a, b in zip(out_scalar, out_tokens))


def test_time_embedding_per_token():
    model = tiny_model('ti2v')
    _, t, _, seq_len, _ = inputs('ti2v')
    e, e0, index = model.time_embeddings(t, seq_len)
    assert len(set(t[0].tolist())) == 2
    assert e.shape == (1, 2, 64) and e0.shape == (1, 2, 6, 64)  # one row per distinct t
    assert index.shape == (1, seq_len) and torch.equal(t[0], t[0].unique()[index[0]])
    e_tok, e0_tok = per_token_time_embeddings(model, t)
    assert_fp32_rounding_equal(e[:, index[0]], e_tok)
    assert_fp32_rounding_equal(e0[:, index[0]], e0_tok)
    with pytest.raises(ValueError, match='expected seq_len 37'):
        model.time_embeddings(t, 37)

    # samples with different per-token t: one gathered row per token
    t2 = torch.cat([t, t.flip(1)])
    e, e0, index = model.time_embeddings(t2, seq_len)
    assert e.shape == (2, seq_len, 64) and e0.shape == (2, seq_len, 6, 64) and index is None
    assert_fp32_rounding_equal(e, per_token_time_embeddings(model, t2)[0])


def test_token_runs():
    from wan.modules.model import token_runs
    index = torch.tensor([[1, 1, 0, 0, 0, 0, 2, 1]])
    assert token_runs(index) == [(0, 2, 6), (1, 0, 2), (2, 6, 7), (1, 7, 8)]


@pytest.mark.parametrize('fn', ['modulate', 'gated_add'])
def test_modulation_by_runs_equals_per_token_gather(fn):
    """Rows applied per run are bitwise the arithmetic of one gathered row per token."""
    from wan.modules import model as m
    generator = torch.Generator().manual_seed(0)
    index = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 2, 0]])
    x, y = torch.randn(2, 3, 10, 8, generator=generator)
    a, b = torch.randn(2, 1, 3, 8, generator=generator)
    args = (x, a, b) if fn == 'modulate' else (x, y, a)
    gathered = [u if u.size(1) == 10 else u[:, index[0]] for u in args]
    got = getattr(m, fn)(*args, runs=m.token_runs(index))
    expected = getattr(m, fn)(*gathered)
    assert torch.equal(got, expected)
    naive = x * (1 + b[:, index[0]]) + a[:, index[0]] if fn == 'modulate' else x + y * a[:, index[0]]
    assert torch.equal(got, naive)


def test_per_token_t_forward_equals_gathered_rows():
    """The model with run rows equals the same model fed per-token rows (the reference's layout)."""
    model = tiny_model('ti2v')
    x, t, context, seq_len, _ = inputs('ti2v')
    with torch.no_grad():
        out = model(x, t, context, seq_len)[0]
        original = model.time_embeddings

        def gathered(t, seq_len, device=None):
            e, e0, index = original(t, seq_len, device)
            return e[:, index[0]], e0[:, index[0]], None
        model.time_embeddings = gathered
        expected = model(x, t, context, seq_len)[0]
    assert torch.equal(out, expected)


# -- RoPE ----------------------------------------------------------------------------------------

def reference_rope_params(max_len, dim, theta=10000.0):
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64),
                         1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return torch.polar(torch.ones_like(angles), angles)


def reference_rope(x, grids, head_dim):
    """Spec 3.5 literally: complex128 tables, adjacent-pair complex view, float64 math."""
    d = head_dim
    freqs = torch.cat([reference_rope_params(1024, d - 4 * (d // 6)),
                       reference_rope_params(1024, 2 * (d // 6)),
                       reference_rope_params(1024, 2 * (d // 6))], dim=1)
    c = d // 2
    f_t, f_h, f_w = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    out = []
    for sample, (f, h, w) in zip(x, grids):
        n = f * h * w
        rotated = torch.view_as_complex(sample[:n].double().reshape(n, sample.size(1), -1, 2))
        table = torch.cat([f_t[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                           f_h[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                           f_w[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(n, 1, -1)
        rotated = torch.view_as_real(rotated * table).flatten(2)
        out.append(torch.cat([rotated, sample[n:].double()]))
    return torch.stack(out).float()


@pytest.mark.parametrize('head_dim', [128, 32])
def test_rope_tables_equal_float64_polar(head_dim):
    table = rope_tables(head_dim)
    d = head_dim
    reference = torch.cat([reference_rope_params(1024, d - 4 * (d // 6)),
                           reference_rope_params(1024, 2 * (d // 6)),
                           reference_rope_params(1024, 2 * (d // 6))], dim=1)
    assert table.dtype == torch.complex64 and table.shape == (1024, head_dim // 2)
    assert (table.to(torch.complex128) - reference).abs().max() < 1e-7  # fp32 rounding of cos, sin


@pytest.mark.parametrize('head_dim, grids, seq_len', [
    (128, [(4, 30, 50)], 6000),               # real head size, positions up to 49
    (128, [(2, 3, 4), (3, 2, 2)], 30),        # different grids, padded rows pass unrotated
    (32, [(3, 3, 4), (3, 3, 4)], 40),         # tiny head (6/5/5 split), shared grid, padding
])
def test_rope_apply_matches_spec(head_dim, grids, seq_len):
    with torch.device('meta'):
        model = WanModel(dim=2 * head_dim, num_heads=2, num_layers=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(grids), seq_len, 2, head_dim, generator=gen)
    freqs = model.rope(grids, seq_len, torch.device('cpu'))
    assert freqs.shape == (1 if len(set(grids)) == 1 else len(grids), seq_len, 1, head_dim // 2, 2)
    out = rope_apply(x, freqs)
    assert out.dtype == torch.float32
    expected = reference_rope(x, grids, head_dim)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=2e-6)
    for i, (f, h, w) in enumerate(grids):
        assert torch.equal(out[i, f * h * w:], x[i, f * h * w:])

    # the real-arithmetic form used inside torch.compile: the same rotation to fp32 rounding
    with mock.patch('torch.compiler.is_compiling', return_value=True):
        real_form = rope_apply(x, freqs)
    torch.testing.assert_close(real_form, expected, rtol=1e-6, atol=2e-6)
    assert (real_form - out).abs().max() <= 4 * torch.finfo(torch.float32).eps * x.abs().max()


# -- padding and batching ------------------------------------------------------------------------

def test_padding_and_batching_do_not_change_outputs():
    """seq_len > tokens masks padded keys; a batch of different grids equals one-by-one runs."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(5)
    x = [torch.randn(16, 3, 6, 8, generator=gen), torch.randn(16, 2, 4, 6, generator=gen)]
    context = [torch.randn(9, 4096, generator=gen), torch.randn(4, 4096, generator=gen)]
    t = torch.tensor([800, 300])
    with torch.no_grad():
        single = [model([u], t[i:i + 1], [c], u[0].numel() // 4)[0]
                  for i, (u, c) in enumerate(zip(x, context))]
        batched = model(x, t, context, seq_len=41)
        padded_one = model(x[:1], t[:1], context[:1], seq_len=41)[0]
    for a, b in zip(batched, single):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-6
    assert rel_err(padded_one, single[0]) < 1e-6


def test_input_errors():
    model = tiny_model('i2v')
    x, t, context, seq_len, y = inputs('i2v')
    with pytest.raises(ValueError, match='needs the conditioning latents y'):
        model(x, t, context, seq_len)
    with pytest.raises(ValueError, match='seq_len 35 is shorter than the 36 tokens'):
        model(x, t, context, 35, y=y)
    with pytest.raises(ValueError, match='more than text_len 512'):
        model(x, t, [torch.randn(513, 4096)], seq_len, y=y)


# -- fp32 islands under a bf16 autocast --------------------------------------------------------------

def test_fp32_islands_under_bf16_autocast():
    model = tiny_model('ti2v')
    rounded = tiny_model('ti2v')  # same weights rounded to bf16, then held in fp32
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in rounded.state_dict().items()})
    model = model.to(torch.bfloat16)
    x, t, context, seq_len, _ = inputs('ti2v')

    with torch.autocast('cpu', dtype=torch.bfloat16):
        e, e0, _ = model.time_embeddings(t, seq_len)
    e_ref, e0_ref, _ = rounded.time_embeddings(t, seq_len)
    assert e.dtype == e0.dtype == torch.float32
    assert torch.equal(e, e_ref) and torch.equal(e0, e0_ref)

    residual_dtypes = []
    model.blocks[0].register_forward_hook(lambda m, args, out: residual_dtypes.append(out.dtype))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x, t, context, seq_len)[0]
    with torch.no_grad():
        out_fp32 = rounded(x, t, context, seq_len)[0]
    assert residual_dtypes == [torch.float32] and out.dtype == torch.float32
    assert rel_err(out, out_fp32) < 3e-2


# -- sequence-parallel seams -------------------------------------------------------------------------

def test_sequence_parallel_seams():
    model = tiny_model('ti2v')
    x, t, context, seq_len, _ = inputs('ti2v')
    with torch.no_grad():
        expected = model(x, t, context, seq_len)[0]
    calls = []
    model.seq_split = lambda tensor, dim: calls.append(('split', tuple(tensor.shape), dim)) or tensor
    model.seq_gather = lambda tensor, dim: calls.append(('gather', tuple(tensor.shape), dim)) or tensor
    attn_calls = []

    def recording_attention(q, k, v, k_lens=None):
        from wan.modules.attention import attention
        attn_calls.append(tuple(q.shape))
        return attention(q, k, v, k_lens=k_lens)
    for block in model.blocks:
        block.self_attn.attn_fn = recording_attention
    with torch.no_grad():
        out = model(x, t, context, seq_len)[0]
    assert torch.equal(out, expected)
    assert calls == [('split', (1, seq_len, 64), 1), ('split', (1, seq_len, 1, 16, 2), 1),
                     ('split', (1, seq_len), 1), ('gather', (1, seq_len, 64), 1)]  # x, RoPE, row index
    assert attn_calls == [(1, seq_len, 2, 32)] * 2
    assert set(model.state_dict()) == set(random_dit_state_dict(tiny_config('ti2v')))

    calls.clear()  # a shared t has no token axis: nothing to split
    with torch.no_grad():
        model(x, torch.tensor([500]), context, seq_len)
    assert [c[1] for c in calls if c[0] == 'split'] == [(1, seq_len, 64), (1, seq_len, 1, 16, 2)]


# -- checkpoints -------------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path):
    return write_dit_checkpoint(tmp_path / 'ckpt', model_type='ti2v', in_dim=48, out_dim=48, dim=64,
                                ffn_dim=128, seed=7)


def test_round_trip_single_and_sharded(tmp_path, checkpoint):
    sharded = write_dit_checkpoint(tmp_path / 'sharded', model_type='ti2v', in_dim=48, out_dim=48,
                                   dim=64, ffn_dim=128, seed=7, shards=3)
    assert len(list(sharded.glob('diffusion_pytorch_model-*-of-00003.safetensors'))) == 3
    one, three = WanModel.from_pretrained(checkpoint), WanModel.from_pretrained(sharded)
    for model in (one, three):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        assert model.config == {**tiny_config('ti2v'), 'patch_size': (1, 2, 2), 'text_dim': 4096,
                                'window_size': (-1, -1), 'qk_norm': True, 'cross_attn_norm': True}
    written = random_dit_state_dict(tiny_config('ti2v'), seed=7)
    assert all(torch.equal(one.state_dict()[k], v) for k, v in written.items())
    x, t, context, seq_len, _ = inputs('ti2v')
    with torch.no_grad():
        assert torch.equal(one(x, t, context, seq_len)[0], three(x, t, context, seq_len)[0])


def test_dtype_kept_or_converted(tmp_path):
    folder = write_dit_checkpoint(tmp_path / 'bf16', dtype=torch.bfloat16)
    kept = WanModel.from_pretrained(folder)
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    widened = WanModel.from_pretrained(folder, dtype=torch.float32)
    assert {p.dtype for p in widened.parameters()} == {torch.float32}
    assert all(torch.equal(widened.state_dict()[k], v.float()) for k, v in kept.state_dict().items())
    narrowed = WanModel.from_pretrained(write_dit_checkpoint(tmp_path / 'fp32'), dtype=torch.bfloat16)
    assert all(torch.equal(narrowed.state_dict()[k], v) for k, v in kept.state_dict().items())


def _rewrite(path, edit):
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def _set_config(folder, **changes):
    path = folder / 'config.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_config(checkpoint):
    (checkpoint / 'config.json').unlink()
    with pytest.raises(CheckpointError, match=r'model config not found: .*ckpt/config.json'):
        WanModel.from_pretrained(checkpoint)


@pytest.mark.parametrize('text, message', [
    ('{"dim": 64,', r'cannot parse .*config.json'),
    ('[1, 2]', r'config.json: expected a JSON object'),
])
def test_unreadable_config(checkpoint, text, message):
    (checkpoint / 'config.json').write_text(text)
    with pytest.raises(CheckpointError, match=message):
        WanModel.from_pretrained(checkpoint)


@pytest.mark.parametrize('changes, message', [
    (dict(num_attention_heads=2), r"config.json: unknown key 'num_attention_heads'"),
    (dict(dim='64'), r"config.json: key 'dim' must be int, got '64'"),
    (dict(model_type='t2x'), r"config.json: model_type must be one of t2v, i2v, ti2v, s2v, got 't2x'"),
    (dict(num_heads=3), r'config.json: dim 64 must split into 3 heads'),
])
def test_bad_config(checkpoint, changes, message):
    _set_config(checkpoint, **changes)
    with pytest.raises(CheckpointError, match=message):
        WanModel.from_pretrained(checkpoint)


def test_config_sizes_must_match_tensors(checkpoint):
    _set_config(checkpoint, ffn_dim=96)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors: tensor "
                                              r"'blocks\.\d\.ffn\.0\.(weight|bias)' has shape \(128,( 64)?\), "
                                              r"the model expects \(96,( 64)?\)"):
        WanModel.from_pretrained(checkpoint)


def test_missing_tensor(checkpoint):
    _rewrite(checkpoint / 'diffusion_pytorch_model.safetensors',
             lambda t: t.pop('blocks.1.cross_attn.norm_k.weight'))
    with pytest.raises(CheckpointError, match=r"ckpt: missing tensor 'blocks.1.cross_attn.norm_k.weight'"):
        WanModel.from_pretrained(checkpoint)


def test_unexpected_tensor(checkpoint):
    _rewrite(checkpoint / 'diffusion_pytorch_model.safetensors',
             lambda t: t.update({'blocks.0.img_emb.weight': torch.ones(2)}))
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors: unexpected tensor "
                                              r"'blocks.0.img_emb.weight'"):
        WanModel.from_pretrained(checkpoint)


def test_wrong_shape(checkpoint):
    _rewrite(checkpoint / 'diffusion_pytorch_model.safetensors',
             lambda t: t.update({'head.modulation': torch.ones(1, 3, 64)}))
    with pytest.raises(CheckpointError, match=r"tensor 'head.modulation' has shape \(1, 3, 64\), "
                                              r"the model expects \(1, 2, 64\)"):
        WanModel.from_pretrained(checkpoint)


def test_truncated_shard(tmp_path):
    folder = write_dit_checkpoint(tmp_path / 'ckpt', shards=2)
    shard = folder / 'diffusion_pytorch_model-00002-of-00002.safetensors'
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r'cannot read checkpoint .*00002-of-00002.safetensors '
                                              r'\(truncated or corrupt\?\)'):
        WanModel.from_pretrained(folder)


def test_index_points_at_missing_shard(tmp_path):
    folder = write_dit_checkpoint(tmp_path / 'ckpt', shards=2)
    (folder / 'diffusion_pytorch_model-00001-of-00002.safetensors').unlink()
    with pytest.raises(CheckpointError, match=r'index.json lists missing files: '
                                              r'diffusion_pytorch_model-00001-of-00002.safetensors'):
        WanModel.from_pretrained(folder)


def test_no_weights(checkpoint):
    (checkpoint / 'diffusion_pytorch_model.safetensors').unlink()
    with pytest.raises(CheckpointError, match=r'no diffusion_pytorch_model.safetensors or '
                                              r'diffusion_pytorch_model.safetensors.index.json in'):
        WanModel.from_pretrained(checkpoint)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_forward_never_waits_for_the_gpu_given_host_timesteps():
    """With t on the host (as GuidedModel passes it) the forward queues work without a sync, so
    the GPU is never idle between the conditional and unconditional passes."""
    model = tiny_model('ti2v').cuda()
    x, t, context, seq_len, _ = inputs('ti2v')
    x, context = [u.cuda() for u in x], [u.cuda() for u in context]
    with torch.no_grad():
        model(x, t, context, seq_len)  # first call: RoPE table, kernels
        torch.cuda.set_sync_debug_mode('error')
        try:
            model(x, t, context, seq_len)
        finally:
            torch.cuda.set_sync_debug_mode('default')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_feed_forward_runs_the_gelu_in_the_matmul_epilogue_rounding_once():
    """bf16 on CUDA: the first linear's output is rounded once, after the GELU, instead of before
    and after it, so it is closer to the fp32 result than the unfused pair; the block output stays
    within bf16 rounding of the unfused path."""
    torch.manual_seed(0)
    layers = (torch.nn.Linear(512, 2048), torch.nn.GELU(approximate='tanh'), torch.nn.Linear(2048, 512))
    ffn = FeedForward(*layers).cuda().to(torch.bfloat16)
    x = torch.randn(1, 1024, 512, device='cuda')
    first = ffn[0]
    exact = torch.nn.functional.gelu(torch.nn.functional.linear(
        x.bfloat16().float(), first.weight.float(), first.bias.float()), approximate='tanh')
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        with mock.patch('torch._addmm_activation', wraps=torch._addmm_activation) as fused_call:
            out = ffn(x)
        fused_call.assert_called_once()
        unfused_out = torch.nn.Sequential.forward(ffn, x)
        fused_hidden = torch.ops.wan.linear_gelu_tanh(x.bfloat16(), first.weight, first.bias)
        unfused_hidden = ffn[1](first(x))

    def error(a: torch.Tensor) -> float:
        return ((a.float() - exact).norm() / exact.norm()).item()
    assert error(fused_hidden) < 0.8 * error(unfused_hidden)
    torch.testing.assert_close(out, unfused_out, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('builds', [True, False])
def test_triton_kernels_used_only_when_they_build(monkeypatch, caplog, builds):
    """A Triton that cannot build the kernels (old version, no compiler) means the PyTorch path
    with one warning, not a failed forward."""
    import sys
    import types

    from wan.modules import model as model_module
    calls = []

    def rms_norm_rope(x, weight, freqs, eps):
        calls.append(x.shape)
        if not builds:
            raise RuntimeError('cannot compile')
        return x
    fake = types.SimpleNamespace(rms_norm_rope=rms_norm_rope)
    monkeypatch.setitem(sys.modules, 'wan.modules.kernels', fake)
    monkeypatch.setattr(sys.modules['wan.modules'], 'kernels', fake, raising=False)  # if imported before
    monkeypatch.setattr(model_module, '_kernels', None)
    with caplog.at_level('WARNING', logger='wan.modules.model'):
        model_module._load_kernels(torch.device('cpu'))
        model_module._load_kernels(torch.device('cpu'))  # decided once
    assert calls == [(1, 2, 256)]
    assert (model_module._kernels is sys.modules['wan.modules.kernels']) == builds
    assert (model_module._kernels is False) != builds
    assert ('Triton kernels unusable (cannot compile)' in caplog.text) != builds
