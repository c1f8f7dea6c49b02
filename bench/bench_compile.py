"""What `--compile` costs once per process: the first compiled DiT forward against a warm one, with
Dynamo's compile counters and per-phase compile times. Run it twice: the second process finds
inductor's on-disk cache warm.

  python bench/bench_compile.py --which 5b
  python bench/bench_compile.py --smoke     # tiny sizes on the CPU: checks the script only

Writes one JSON file to $OUT (default bench/results).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.bench_dit import SMOKE, WORKLOADS, dit_inputs, random_dit  # noqa: E402
from bench.common import bench_device, environment, write_result  # noqa: E402
from wan.modules.attention import resolve_backend  # noqa: E402
from wan.pipelines.components import compile_dit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--which', choices=tuple(WORKLOADS), default='5b')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU')
    args = parser.parse_args()
    device = bench_device(args.smoke)
    config, latent, per_token = (SMOKE if args.smoke else WORKLOADS)[args.which]
    model = random_dit(config, device)
    start = time.perf_counter()
    backend = resolve_backend(device)  # the attention import and probe, apart from compilation
    select_s = time.perf_counter() - start
    compile_dit(model)
    x, t, context, seq_len = dit_inputs(latent, per_token, device)

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            model([x], t, [context], seq_len)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter() - start
    first, second, third = forward(), forward(), forward()
    counters = {k: dict(v) for k, v in torch._dynamo.utils.counters.items() if v}
    phases = torch._dynamo.utils.compile_times(repr='str', aggregate=True)
    print(f'{args.which}: attention {backend} selected in {select_s:.2f} s; first compiled forward '
          f'{first:.2f} s, then {second:.3f} s, {third:.3f} s')
    print(phases)
    print({k: v for k, v in counters.items() if k in ('stats', 'inductor', 'aot_autograd', 'frames')})
    write_result(f'bench_compile-{args.which}{"-smoke" if args.smoke else ""}', {
        'benchmark': 'bench_compile', **environment(device), 'attention': backend, 'select_s': select_s,
        'first_s': first, 'second_s': second, 'third_s': third, 'compile_times': phases,
        'counters': counters})


if __name__ == '__main__':
    main()
