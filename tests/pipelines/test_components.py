"""wan/pipelines/components.py: regional compile of the DiT."""
import shutil

import pytest
import torch

from tests.modules.test_model import inputs, tiny_model
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
