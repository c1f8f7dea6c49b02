"""The program each of the 2 processes of the distributed tests runs (see conftest.py).

    RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p python -m tests.distributed.worker DIR

Runs every multi-process case once on CPU/gloo, in fp32, and saves this rank's results to
DIR/rank{r}.pt; the tests compare them with a single-process run of the same builders (below).
The last case is a failure: rank 1 raises inside `failing_together` while rank 0 waits in a
collective that never completes; rank 0 must be stopped by the failure watch, not hang.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch

from tests.tiny.dit import random_dit_state_dict
from wan.modules.model import WanModel

TASK = 't2v-A14B'
PROMPT, NEGATIVE = 'a red circle moves left.', 'a blue square.'
UNEVEN = dict(model_type='t2v', in_dim=4, out_dim=4, dim=48, ffn_dim=64, num_heads=3, num_layers=2,
              text_dim=16, text_len=8)  # 3 heads over 2 ranks: the heads are padded to 4


def dit_inputs(in_dim: int, text_dim: int, latent: tuple[int, int, int], seq_len: int,
               per_token_t: bool = False, seed: int = 0) -> dict:
    """One sample's DiT call arguments; per-token timesteps vary along the sequence (spec 3.7)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(in_dim, *latent, generator=g)
    t = torch.randint(0, 1000, (1, seq_len), generator=g) if per_token_t else torch.tensor([937])
    return dict(x=[x], t=t, context=[torch.randn(7, text_dim, generator=g)], seq_len=seq_len)


def dit_cases() -> dict[str, dict]:
    """Tokens: latent 3x2x6 -> 3*1*3 = 9, an odd count; 10 is the pipelines' rounding for P = 2."""
    return {
        'rounded': dit_inputs(16, 4096, (3, 2, 6), seq_len=10),
        'per_token_t': dit_inputs(16, 4096, (3, 2, 6), seq_len=10, per_token_t=True, seed=1),
        'even': dit_inputs(16, 4096, (2, 4, 6), seq_len=12, seed=2),
    }


def uneven_model() -> WanModel:
    with torch.device('meta'):
        model = WanModel(**UNEVEN)
    model.load_state_dict(random_dit_state_dict(UNEVEN, seed=5), assign=True)
    return model.eval().requires_grad_(False)


def uneven_inputs() -> dict:
    """9 tokens with seq_len 9: not a multiple of P, so the split itself pads and masks."""
    return dit_inputs(4, 16, (3, 2, 6), seq_len=9, seed=3)


def expert(ckpt: Path) -> WanModel:
    return WanModel.from_pretrained(ckpt / 'high_noise_model')


def request():
    from wan.pipelines.pipeline import Request
    # 48x16 px, 9 frames -> latent 3x2x6 -> 9 tokens; 2 UniPC steps cross the A14B boundary (high, then low)
    return Request(prompt=PROMPT, negative_prompt=NEGATIVE, size=(48, 16), frame_num=9, sample_steps=2,
                   sample_shift=5.0, guide_scale=(3.0, 4.5), seed=1234)


def pipeline(ckpt: Path, parallel=None):
    from wan.pipelines.pipeline import VideoPipeline
    from wan.pipelines.placement import Placement
    if parallel is None:
        return VideoPipeline.from_pretrained(TASK, ckpt, Placement(torch.device('cpu')))
    return VideoPipeline.from_pretrained(TASK, ckpt, Placement(torch.device('cpu'), init_on_cpu=False),
                                         parallel=parallel)


def assert_fp32_equal(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to fp32 rounding: relative L2 error below 1e-5 (and equal shapes)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    error = ((out - ref).norm() / ref.norm()).item()
    print(f'relative error {error:.2e}, max abs {(out - ref).abs().max().item():.2e}')
    assert error < 1e-5, error


def guided(model: WanModel, inputs: dict, cfg=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) of a DiT call, the uncond pass with another context; split by `cfg` if given."""
    null = [torch.flip(inputs['context'][0], dims=[0])]

    def run(context):
        return model(inputs['x'], inputs['t'], context, inputs['seq_len'])[0]
    if cfg is None:
        return run(inputs['context']), run(null)
    return cfg(run, inputs['context'], null)


def main(folder: Path) -> None:
    from wan.distributed import broadcast_object, failing_together, init_distributed

    init_distributed()
    rank = torch.distributed.get_rank()
    torch.set_grad_enabled(False)
    with failing_together():  # a broken case stops the other rank at once instead of a hang
        run_cases(folder, rank)

    # failure: rank 1 fails while rank 0 waits for a broadcast only rank 1 would send. Rank 1 then
    # stays alive with its sockets open, so only the failure watch can stop rank 0.
    try:
        with failing_together():
            if rank == 1:
                (folder / 'raised_at').write_text(repr(time.time()))
                raise RuntimeError('injected failure on rank 1')
            broadcast_object(None, src=1)
    except RuntimeError:
        time.sleep(120)  # the test ends this process once rank 0 is gone
    (folder / f'rank{rank}_not_stopped').write_text('returned from the failure case')


def run_cases(folder: Path, rank: int) -> None:
    """Every multi-process case; this rank's outputs go to folder/rank{rank}.pt."""
    from wan.distributed import Parallel, ParallelConfig, broadcast_object
    from wan.distributed.fsdp import full_state_dict
    from wan.distributed.sequence_parallel import apply_sequence_parallel
    from wan.distributed.ulysses import heads_to_seq, seq_to_heads
    from wan.utils.checkpoint import read_sharded

    device = torch.device('cpu')
    ckpt = folder / 'ckpt'
    out: dict[str, object] = {}

    # the all-to-all layout against slicing a known global tensor
    full = torch.randn(3, 1, 8, 4, 5, generator=torch.Generator().manual_seed(9))
    heads = seq_to_heads(full[:, :, rank * 4:(rank + 1) * 4], None)
    out['a2a_heads_ok'] = torch.equal(heads, full[:, :, :, rank * 2:(rank + 1) * 2])
    out['a2a_roundtrip_ok'] = torch.equal(heads_to_seq(heads, None), full[:, :, rank * 4:(rank + 1) * 4])

    # seed: every rank draws its own, rank 0's wins
    out['seed'] = broadcast_object(random.Random(rank).randint(0, sys.maxsize))

    ulysses = Parallel(ParallelConfig(ulysses_size=2), device)
    model = ulysses.parallelize_dit(expert(ckpt))
    out['forward_unchanged'] = type(model) is WanModel and 'forward' not in vars(model)
    try:
        apply_sequence_parallel(model, ulysses.sp_group)
        out['applied_twice'] = 'accepted'
    except ValueError as exc:
        out['applied_twice'] = str(exc)
    for name, inputs in dit_cases().items():
        out[f'ulysses/{name}'] = model(**inputs)[0]
    model = ulysses.parallelize_dit(uneven_model())
    out['ulysses/uneven'] = model(**uneven_inputs())[0]

    cfg = Parallel(ParallelConfig(cfg_parallel=True), device)
    out['cfg/dit'] = torch.stack(guided(cfg.parallelize_dit(expert(ckpt)), dit_cases()['rounded'], cfg.cfg))

    fsdp = Parallel(ParallelConfig(ulysses_size=2, dit_fsdp=True, t5_fsdp=True), device)
    model = fsdp.parallelize_dit(expert(ckpt))
    stored, _ = read_sharded(ckpt / 'high_noise_model')
    gathered = full_state_dict(model)
    out['fsdp/same_keys'] = sorted(gathered) == sorted(stored)
    out['fsdp/weights_equal'] = all(torch.equal(gathered[k], stored[k]) for k in stored)
    out['fsdp/local_numel'] = sum(p.to_local().numel() for p in model.parameters())
    out['fsdp+ulysses/dit'] = model(**dit_cases()['rounded'])[0]

    for name, config in {'ulysses': ParallelConfig(ulysses_size=2), 'cfg': ParallelConfig(cfg_parallel=True),
                         'fsdp': ParallelConfig(ulysses_size=2, dit_fsdp=True, t5_fsdp=True)}.items():
        pipe = pipeline(ckpt, Parallel(config, device))
        out[f'pipeline/{name}'] = pipe.sample(request())[0]
        if name == 'fsdp':
            out['t5_fsdp/context'] = pipe.encode_prompts(PROMPT, NEGATIVE)[0]

    torch.save(out, folder / f'rank{rank}.pt')


if __name__ == '__main__':
    main(Path(sys.argv[1]))
