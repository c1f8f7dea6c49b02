"""DiT forward benchmark: our WanModel against diffusers' WanTransformer3DModel, same bf16 weights.

Both models share one set of random bf16 weights on the GPU (diffusers' parameters are assigned
ours, no copy). Ours runs under torch.autocast('cuda', bfloat16) as the reference pipelines call it;
diffusers runs in its weights' dtype as its pipelines do. Reported: median of --repeats timed
forwards after one warm-up, peak memory of the timed forwards, and our output's relative error
against diffusers'.

  python bench/bench_dit.py                       # 5B and A14B on the GPU (about 3 minutes on H200)
  python bench/bench_dit.py --which 5b --repeats 5
  python bench/bench_dit.py --variants sdpa,fa4,fa4+compile   # attention backends, regional compile
  python bench/bench_dit.py --smoke               # tiny sizes on the CPU: checks the script only

Writes one JSON file to $OUT (default bench/results).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import bench_device, environment, write_result  # noqa: E402

from tests.tiny.dit import diffusers_config, random_init, to_diffusers_state_dict  # noqa: E402
from wan.modules.attention import ENV_VAR, resolve_backend  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402

TEXT_TOKENS = 120  # true prompt length before zero padding to 512

# name -> (WanModel config, latent [C, T, h, w], per-token timesteps)
WORKLOADS = {
    '5b': (dict(model_type='ti2v', dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48,
                out_dim=48), (48, 31, 44, 80), True),      # 704x1280, 121 frames
    'a14b': (dict(model_type='t2v', dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16,
                  out_dim=16), (16, 21, 90, 160), False),  # 720x1280, 81 frames
}
SMOKE = {
    '5b': (dict(model_type='ti2v', dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=48,
                out_dim=48), (48, 3, 8, 8), True),
    'a14b': (dict(model_type='t2v', dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16,
                  out_dim=16), (16, 3, 8, 8), False),
}
COMMON = dict(freq_dim=256, text_len=512, eps=1e-6)


def forward_flops(config: dict, tokens: int) -> float:
    """Matmul + attention FLOPs of one forward (time/text embeddings and head are negligible)."""
    c, f, n_txt = config['dim'], config['ffn_dim'], config['text_len']
    per_block = (8 * tokens * c * c            # self-attention q, k, v, o
                 + 4 * tokens * c * c + 4 * n_txt * c * c  # cross-attention q, o and k, v
                 + 4 * tokens * c * f          # FFN
                 + 4 * tokens * tokens * c     # self-attention scores and values
                 + 4 * tokens * n_txt * c)     # cross-attention scores and values
    return per_block * config['num_layers']


@torch.no_grad()
def init_random_(model: torch.nn.Module, dim: int, seed: int) -> None:
    """Fill every parameter in place on its device (never zeros; see tests/tiny/dit.random_init)."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    for key, param in model.named_parameters():
        mean, std = random_init(key, tuple(param.shape), dim)
        param.normal_(mean, std, generator=generator)


def random_dit(config: dict, device: torch.device) -> WanModel:
    """Our bf16 DiT of `config` (COMMON added) with random weights made on `device`."""
    config = {**config, **COMMON}
    with torch.device('meta'):
        model = WanModel(**config).to(torch.bfloat16)
    model = model.to_empty(device=device).eval().requires_grad_(False)
    init_random_(model, config['dim'], seed=0)
    return model


def dit_inputs(latent: tuple[int, ...], per_token: bool, device: torch.device,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """x [C, T, h, w], t, a 120-token bf16 context and seq_len for one forward. t is on the host,
    as the pipelines pass it (the forward then never waits for the GPU): per token for TI2V, whose
    first latent frame has t = 0 (spec 3.7), else one value."""
    x = torch.randn(latent, device=device, generator=generator)
    context = torch.randn(TEXT_TOKENS, 4096, device=device, generator=generator).to(torch.bfloat16)
    _, f, h, w = latent
    seq_len = f * (h // 2) * (w // 2)
    if per_token:
        t = torch.full((1, seq_len), 900, dtype=torch.long)
        t[:, :(h // 2) * (w // 2)] = 0
    else:
        t = torch.tensor([900])
    return x, t, context, seq_len


def timed(fn, repeats: int, device: torch.device) -> tuple[torch.Tensor, list[float], float | None]:
    """One warm-up call, then `repeats` timed calls; returns last output, times, peak GiB."""
    cuda = device.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return out, times, peak


def run_workload(name: str, config: dict, latent: tuple[int, ...], per_token: bool,
                 device: torch.device, repeats: int, variants: list[str]) -> dict:
    """Ours in each variant ('<attention backend>' or '<backend>+compile'), then diffusers."""
    from diffusers import WanTransformer3DModel

    from wan.pipelines.components import compile_dit
    ours = random_dit(config, device)
    config = {**config, **COMMON}
    x, t, context, seq_len = dit_inputs(latent, per_token, device, torch.Generator(device).manual_seed(1))

    def ours_forward():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return ours([x], t, [context], seq_len)[0]

    flops = forward_flops(config, seq_len)
    runs, outputs = {}, {}
    compiled = False
    for variant in sorted(variants, key=lambda v: v.endswith('+compile')):  # eager ones first
        backend, _, mode = variant.partition('+')
        if mode == 'compile' and not compiled:
            compile_dit(ours)
            compiled = True
        if backend == 'auto':
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = backend
        start = time.perf_counter()
        out, times, peak = timed(ours_forward, repeats, device)
        first_s = time.perf_counter() - start - sum(times)  # warm-up call (compilation included)
        outputs[variant] = out.float()
        runs[variant] = {'median_s': statistics.median(times), 'times_s': times, 'peak_gib': peak,
                         'warmup_s': first_s, 'tflops': flops / statistics.median(times) / 1e12,
                         'attention_backend': resolve_backend(device)}
        del out
    os.environ.pop(ENV_VAR, None)

    with torch.device('meta'):
        theirs = WanTransformer3DModel(**diffusers_config(config))
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True, assign=True)
    rope = type(theirs.rope)(config['dim'] // config['num_heads'], (1, 2, 2), 1024)  # buffers were meta
    theirs.rope = rope.to(device)
    theirs.eval().requires_grad_(False)
    hidden = x[None].to(torch.bfloat16)
    padded = torch.cat([context, context.new_zeros(512 - TEXT_TOKENS, 4096)])[None]

    t_theirs = t.to(device)

    def theirs_forward():
        return theirs(hidden, t_theirs, padded, return_dict=False)[0][0]
    with torch.no_grad():
        out_theirs, times_theirs, peak_theirs = timed(theirs_forward, repeats, device)
    out_theirs = out_theirs.float()
    diffusers_s = statistics.median(times_theirs)
    first = outputs[variants[0]]
    for variant, run in runs.items():
        run['speedup_vs_diffusers'] = diffusers_s / run['median_s']
        run['rel_err_vs_diffusers'] = ((outputs[variant] - out_theirs).norm() / out_theirs.norm()).item()
        run[f'rel_err_vs_{variants[0]}'] = ((outputs[variant] - first).norm() / first.norm()).item()
    result = {
        'workload': name, 'latent': list(latent), 'tokens': seq_len, 'per_token_t': per_token,
        'config': config, 'pflop_per_forward': flops / 1e15, 'ours': runs,
        'diffusers': {'median_s': diffusers_s, 'times_s': times_theirs, 'peak_gib': peak_theirs,
                      'tflops': flops / diffusers_s / 1e12},
    }
    del theirs, ours, outputs, out_theirs
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def print_table(results: list[dict]) -> None:
    def gib(v):
        return '-' if v is None else f'{v:.1f}'
    print(f'{"workload":<8} {"impl":<22} {"median s":>9} {"TFLOP/s":>8} {"peak GiB":>9} {"warm-up s":>9} '
          f'{"speedup":>8} {"rel err":>9}')
    for r in results:
        rows = [(f'ours {v}', m) for v, m in r['ours'].items()] + [('diffusers', r['diffusers'])]
        for impl, m in rows:
            extra = (f'{m["warmup_s"]:>9.1f} {m["speedup_vs_diffusers"]:>7.2f}x {m["rel_err_vs_diffusers"]:>9.2e}'
                     if 'speedup_vs_diffusers' in m else '')
            print(f'{r["workload"]:<8} {impl:<22} {m["median_s"]:>9.3f} {m["tflops"]:>8.1f} '
                  f'{gib(m["peak_gib"]):>9} {extra}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--which', choices=('5b', 'a14b', 'all'), default='all')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--variants', default='auto',
                        help="comma-separated '<attention backend>[+compile]' for our model, e.g. "
                             "'sdpa,fa4,fa4+compile'; 'auto' is the automatic backend")
    parser.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')

    device = bench_device(args.smoke)
    table = SMOKE if args.smoke else WORKLOADS
    names = list(table) if args.which == 'all' else [args.which]
    variants = args.variants.split(',')
    results = [run_workload(n, *table[n], device=device, repeats=args.repeats, variants=variants)
               for n in names]

    print_table(results)
    record = {
        'benchmark': 'bench_dit', 'date': datetime.datetime.now().isoformat(timespec='seconds'),
        **environment(device),
        'smoke': args.smoke, 'repeats': args.repeats, 'results': results,
    }
    write_result(f'bench_dit{"-smoke" if args.smoke else ""}', record)


if __name__ == '__main__':
    main()
