"""wan/pipelines/components.py: regional compile of the DiT."""
import shutil

import pytest
import torch

from tests.modules.test_model import inputs, tiny_model
from tests.tiny.ckpt import tiny_checkpoints  # noqa: F401 (fixture)
from wan.pipelines.components import compile_dit


@pytest.mark.skipif(shutil.which('cc') is None, reason='torch.compile on the CPU needs a C compiler')
def test_compiled_dit_matches_eager():
    model = tiny_model('ti2v')
    x, t, context, seq_len, _ = inputs('ti2v')  # per-token t: the run rows are traced too
    with torch.no_grad():
        expected = model(x, t, context, seq_len)[0]
        compiled = compile_dit(model)
        assert all(hasattr(block, '_compiled_call_impl') for block in compiled.blocks)
        out = compiled(x, t, context, seq_len)[0]
    # elementwise fusion changes fp32 rounding only
    assert (out - expected).norm() / expected.norm() < 1e-5


@pytest.mark.parametrize('task', ['ti2v-5B', 't2v-A14B'])
def test_bf16_vae_decodes_within_bf16_rounding_of_fp32(task, tiny_checkpoints):
    """--vae_dtype bf16: the measured levers on, and no further from the fp32 decode than a plain
    bf16 decode of the same weights (bf16 rounding is all that differs)."""
    from pathlib import Path

    from wan.configs import WAN_CONFIGS
    from wan.pipelines.components import load_vae
    config, ckpt = WAN_CONFIGS[task], tiny_checkpoints(task)
    exact = load_vae(config, ckpt, torch.device('cpu'))
    fast = load_vae(config, ckpt, torch.device('cpu'), torch.bfloat16)
    plain_bf16 = type(exact)(Path(ckpt) / config.vae_checkpoint, dtype=torch.bfloat16)
    assert fast.options.channels_last and fast.options.norm == 'lean'
    assert not exact.options.channels_last and exact.options.norm == 'exact'
    z = torch.randn(exact.z_dim, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (ref,), (out,), (plain,) = exact.decode([z]), fast.decode([z]), plain_bf16.decode([z])
    assert out.dtype == torch.float32 and out.shape == ref.shape

    def rel(a):
        return ((a - ref).norm() / ref.norm()).item()
    assert 0 < rel(out) <= 1.2 * rel(plain), (rel(out), rel(plain))
