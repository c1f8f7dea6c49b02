"""Attention kernels at the DiT's shapes: each exact backend through `wan.modules.attention`, and
FA4 called directly, in TFLOP/s (4 * Lq * Lk * heads * head_dim FLOPs per call).

  python bench/bench_attention.py [--backends sdpa_cudnn,sdpa_flash,fa4] [--repeats 10]
  python bench/bench_attention.py --backends fa4 --fa4_tiles 128x128,128x176  # FA4 tile sizes
  python bench/bench_attention.py --backends fa3,fa3_fp8   # the opt-in FP8 mode: speed and error vs fa3

Writes one JSON file to $OUT (default bench/results).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import environment, write_result  # noqa: E402
from wan.modules import attention as attention_module  # noqa: E402
from wan.modules.attention import attention  # noqa: E402

# name -> (query tokens, key tokens, heads); head dim 128 everywhere
SHAPES = {'5b self': (27280, 27280, 24), '5b cross': (27280, 512, 24),
          'a14b 720p self': (75600, 75600, 40), 'a14b cross': (75600, 512, 40),
          'a14b 480p self': (32760, 32760, 40)}


def time_call(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backends', default='sdpa_cudnn,sdpa_flash,fa4')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--fa4_tiles', default='',
                        help="comma-separated MxN tiles for FA4's forward (its private "
                             "`_flash_attn_fwd(tile_mn=...)`), each timed beside the default")
    args = parser.parse_args()
    rows = []
    for name, (lq, lk, heads) in SHAPES.items():
        q = torch.randn(1, lq, heads, 128, device='cuda', dtype=torch.bfloat16)
        k, v = (torch.randn(1, lk, heads, 128, device='cuda', dtype=torch.bfloat16) for _ in range(2))
        flops = 4 * lq * lk * heads * 128
        calls = {b: (lambda b=b: attention(q, k, v, backend=b)) for b in args.backends.split(',')}
        if 'fa4' in calls:
            from flash_attn.cute.interface import flash_attn_func
            calls['fa4 direct'] = lambda: attention_module._first(flash_attn_func(q, k, v))
        for tile in filter(None, args.fa4_tiles.split(',')):
            from flash_attn.cute.interface import _flash_attn_fwd
            m, n = (int(s) for s in tile.split('x'))
            calls[f'fa4 {tile}'] = (lambda m=m, n=n: _flash_attn_fwd(
                q, k, v, tile_mn=(m, n), num_threads=(m // 64 + 1) * 128)[0])
        reference = None
        for backend, fn in calls.items():
            try:
                seconds = time_call(fn, args.repeats)
                out = fn().float()
            except Exception as exc:  # report and go on
                rows.append({'shape': name, 'backend': backend, 'error': str(exc)[:200]})
                print(f'{name:<16} {backend:<12} failed: {str(exc)[:100]}')
                continue
            reference = out if reference is None else reference
            rel = ((out - reference).norm() / reference.norm()).item()  # against the first backend
            rows.append({'shape': name, 'backend': backend, 'ms': seconds * 1e3,
                         'tflops': flops / seconds / 1e12, 'rel_diff_vs_first': rel})
            print(f'{name:<16} {backend:<12} {seconds * 1e3:9.2f} ms {flops / seconds / 1e12:7.1f} TFLOP/s'
                  f'  rel. diff {rel:.1e}')
            del out
        del q, k, v
    write_result('bench_attention', {'benchmark': 'bench_attention', **environment(torch.device('cuda')),
                                     'rows': rows})


if __name__ == '__main__':
    main()
