"""wan/modules/kernels.py: the Triton q/k RMSNorm + RoPE against the PyTorch path it replaces (CUDA)."""
from unittest import mock

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip('needs a CUDA device', allow_module_level=True)
kernels = pytest.importorskip('wan.modules.kernels', reason='needs triton')

from wan.modules import model as model_module  # noqa: E402
from wan.modules.model import WanRMSNorm, rope_apply  # noqa: E402


def rope_rows(grids, seq_len):
    model = model_module.WanModel(dim=256, num_heads=2, num_layers=1, ffn_dim=64)
    return model._build_rope(grids, seq_len, torch.device('cuda'))


@pytest.mark.parametrize('weight_dtype', [torch.bfloat16, torch.float32])
@pytest.mark.parametrize('grids', [[(3, 4, 5)], [(3, 4, 5), (2, 4, 6)]])  # one table for all / per sample
def test_rms_norm_rope_matches_the_pytorch_path(weight_dtype, grids):
    torch.manual_seed(0)
    seq_len = 64  # padding rows (rotation 1, 0) at the end
    freqs = rope_rows(grids, seq_len)
    x = (torch.randn(len(grids), seq_len, 256, device='cuda') * 3).bfloat16()
    norm = WanRMSNorm(256).cuda().to(weight_dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(256) + 0.5)
        heads = lambda u: u.unflatten(2, (2, -1))  # noqa: E731
        expected = rope_apply(heads(norm(x)), freqs).to(x.dtype).flatten(2)
        out = kernels.rms_norm_rope(x, norm.weight, freqs, norm.eps)
        exact = rope_apply(heads(norm.float()(x.float())), freqs).flatten(2)
    assert out.dtype == x.dtype and out.shape == x.shape
    # the same roundings: equal but for the odd last-bit flip from the fp32 sum's order
    assert (out == expected).float().mean() > 0.99
    torch.testing.assert_close(out, expected, rtol=8e-3, atol=8e-3)
    err = lambda u: ((u.float() - exact).norm() / exact.norm()).item()  # noqa: E731
    assert err(out) <= 1.01 * err(expected)


def test_model_uses_the_kernel_on_cuda_within_bf16_rounding(monkeypatch):
    from tests.modules.test_model import inputs, tiny_model
    model = tiny_model('ti2v').cuda().bfloat16()
    x, t, context, seq_len, _ = inputs('ti2v')
    x, context = [u.cuda() for u in x], [u.cuda() for u in context]
    calls = []
    original = torch.ops.wan.rms_norm_rope

    def counting(*args):
        calls.append(1)
        return original(*args)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        monkeypatch.setattr(torch.ops.wan, 'rms_norm_rope', counting)
        fused = model(x, t, context, seq_len)[0]
        assert len(calls) == 2 * len(model.blocks)  # q and k of every block
        monkeypatch.setattr(model_module, '_kernels', False)
        plain = model(x, t, context, seq_len)[0]
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)


def test_training_keeps_the_pytorch_path_and_its_gradients(monkeypatch):
    """The fused ops have no backward: with gradients enabled (training) the block runs the PyTorch
    ops, and backward works."""
    from tests.modules.test_model import inputs, tiny_model
    model = tiny_model('ti2v').cuda().bfloat16().requires_grad_(True)
    x, t, context, seq_len, _ = inputs('ti2v')
    x, context = [u.cuda() for u in x], [u.cuda() for u in context]
    calls = []
    monkeypatch.setattr(torch.ops.wan, 'rms_norm_rope', lambda *args: calls.append(1))
    with torch.autocast('cuda', dtype=torch.bfloat16):
        with mock.patch('torch._addmm_activation') as fused_ffn:
            model(x, t, context, seq_len)[0].float().square().mean().backward()
    assert not calls and not fused_ffn.called
    assert all(p.grad is not None for p in model.blocks[0].ffn.parameters())
