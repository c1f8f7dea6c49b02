"""Where one DiT forward spends its GPU time: torch.profiler kernel table for one workload.

  python bench/profile_dit.py --which 5b [--compile] [--rows 25] [--trace]

Prints the top kernels by CUDA time, a split into matmul / attention / other, and the time the GPU
sat idle inside the forward (the largest gaps with the kernels around them); writes the table as
JSON to $OUT (default bench/results) and with --trace a gzipped Chrome trace (host and GPU) beside
it. Timesteps are given on the host, as the pipelines give them.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.bench_dit import WORKLOADS, dit_inputs, random_dit  # noqa: E402
from bench.common import environment, write_result  # noqa: E402
from wan.pipelines.components import compile_dit  # noqa: E402

CATEGORIES = (('attention', ('attn', 'fmha', 'flash', 'cudnn', 'sdpa')),
              ('matmul', ('gemm', 'sm90_xmma', 'cutlass', 'nvjet', 'matmul')))


def category(name: str) -> str:
    lowered = name.lower()
    for label, keys in CATEGORIES:
        if any(k in lowered for k in keys):
            return label
    return 'other'


def gpu_idle(prof, top: int = 8) -> dict:
    """Idle time between the first and last kernel of a profiled run, and its largest gaps."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    gaps, busy_until, before = [], spans[0][1], spans[0][2]
    for start, end, name in spans[1:]:
        if start > busy_until:
            gaps.append((start - busy_until, before[:60], name[:60]))
        if end > busy_until:
            busy_until, before = end, name
    gaps.sort(reverse=True)
    return {'span_ms': (busy_until - spans[0][0]) / 1e3, 'idle_ms': sum(g[0] for g in gaps) / 1e3,
            'gaps_over_50us': sum(g[0] > 50 for g in gaps),
            'largest': [{'ms': g / 1e3, 'after': a, 'before': b} for g, a, b in gaps[:top]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--which', choices=tuple(WORKLOADS), default='5b')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--rows', type=int, default=25)
    parser.add_argument('--trace', action='store_true', help='also write a gzipped Chrome trace')
    args = parser.parse_args()
    device = torch.device('cuda')
    config, latent, per_token = WORKLOADS[args.which]
    model = random_dit(config, device)
    if args.compile:
        compile_dit(model)
    x, t, context, seq_len = dit_inputs(latent, per_token, device)

    def forward():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            return model([x], t, [context], seq_len)
    forward()
    torch.cuda.synchronize()
    start = time.perf_counter()
    forward()
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    # host calls that wait for the GPU: each one drains the queue, and the GPU then idles while
    # the host launches the next kernels (a suspect for wall time above kernel time)
    with profile(activities=[ProfilerActivity.CPU]) as host:
        forward()
        torch.cuda.synchronize()
    syncs = {e.key: e.count for e in host.key_averages()
             if 'Synchronize' in e.key or e.key in ('aten::item', 'aten::_local_scalar_dense', 'aten::nonzero')}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    idle = gpu_idle(prof)
    tag = f'{args.which}{"-compile" if args.compile else ""}'
    if args.trace:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as both:
            forward()
            torch.cuda.synchronize()
        out_dir = Path(os.environ.get('OUT') or ROOT / 'bench' / 'results')
        with tempfile.NamedTemporaryFile(suffix='.json') as raw:
            both.export_chrome_trace(raw.name)
            with open(raw.name, 'rb') as src, gzip.open(out_dir / f'trace-{tag}.json.gz', 'wb') as dst:
                shutil.copyfileobj(src, dst)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    split: dict[str, float] = {}
    rows = []
    for e in events:
        split[category(e.key)] = split.get(category(e.key), 0.0) + e.device_time_total
        rows.append({'kernel': e.key[:120], 'calls': e.count, 'ms': e.device_time_total / 1e3})
    print(f'{args.which}{" compiled" if args.compile else ""}: {total / 1e6:.3f} s of kernels, '
          f'{wall:.3f} s wall (unprofiled); host waits: {syncs}')
    print(f'  GPU idle {idle["idle_ms"]:.1f} ms of a {idle["span_ms"]:.1f} ms span '
          f'({idle["gaps_over_50us"]} gaps over 50 us); largest:')
    for g in idle['largest']:
        print(f'    {g["ms"]:7.2f} ms after {g["after"]} / before {g["before"]}')
    for label, us in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f'  {label:<10} {us / 1e6:7.3f} s  {100 * us / total:5.1f} %')
    for r in rows[:args.rows]:
        print(f'  {r["ms"]:9.1f} ms {r["calls"]:6d}  {r["kernel"]}')
    write_result(f'profile_dit-{tag}', {
        'benchmark': 'profile_dit', **environment(device),
        'wall_s': wall, 'host_waits': syncs, 'gpu_idle': idle, 'split_s': {k: v / 1e6 for k, v in split.items()},
        'kernels': rows[:60]})


if __name__ == '__main__':
    main()
