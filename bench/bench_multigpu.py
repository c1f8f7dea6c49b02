"""Multi-GPU benchmark: per-step time of the A14B DiT at 720x1280x81 on N GPUs, and equality with 1 GPU.

One step = one guided velocity (conditional + unconditional DiT forward, `GuidedModel` as the
pipelines run it) on the latent 16x21x90x160 (75,600 tokens), bf16 autocast, random bf16 weights.
Each launch runs one configuration:

    torchrun --nproc_per_node=1 bench/bench_multigpu.py                    # 1 GPU
    torchrun --nproc_per_node=2 bench/bench_multigpu.py                    # Ulysses 2
    torchrun --nproc_per_node=4 bench/bench_multigpu.py                    # Ulysses 4
    torchrun --nproc_per_node=4 bench/bench_multigpu.py --cfg_parallel     # CFG 2 x Ulysses 2
    torchrun --nproc_per_node=4 bench/bench_multigpu.py --dit_fsdp         # + FSDP2 of the DiT
    torchrun --nproc_per_node=2 bench/bench_multigpu.py --smoke            # tiny, CPU/gloo: checks the script

With N > 1, rank 0 first runs the same steps alone on the unparallelized model (the 1-GPU reference:
its output and its step time, while the other ranks wait), then every rank runs the parallel
configuration. Reported: median step time, speedup and scaling efficiency t1 / (N * tN), the relative
error of the guided velocity and of the conditional output vs 1 GPU, peak memory per rank. About
2 minutes per launch on H200s. Writes one JSON file to $OUT (default bench/results).
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench.common import environment, write_result  # noqa: E402

from tests.tiny.dit import random_init  # noqa: E402
from wan.distributed import Parallel, ParallelConfig, finish, init_distributed, world_info  # noqa: E402
from wan.modules.attention import resolve_backend  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402
from wan.pipelines.denoise import GuidedModel, seq_len_for  # noqa: E402

A14B = dict(model_type='t2v', dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16,
            freq_dim=256, text_len=512, eps=1e-6)
A14B_LATENT = (16, 21, 90, 160)  # 720x1280, 81 frames
SMOKE = dict(A14B, dim=64, ffn_dim=128, num_heads=4, num_layers=2)
SMOKE_LATENT = (16, 3, 8, 12)    # 72 tokens
TEXT_TOKENS = 120                # true prompt length (zero-padded to 512 inside the model)
TIMESTEP = 900
GUIDE_SCALE = 5.0
BF16_TOLERANCE = 1e-2            # relative L2 error vs 1 GPU; bf16 rounding is 3.9e-3 per op
FP32_TOLERANCE = 1e-5            # smoke mode runs in fp32 on the CPU


def log(message: str) -> None:
    if world_info().rank == 0:
        print(message, flush=True)


@torch.no_grad()
def build_model(config: dict, device: torch.device, dtype: torch.dtype) -> WanModel:
    """Random weights drawn on rank 0's device and broadcast, so every rank holds the same model."""
    with torch.device('meta'):
        model = WanModel(**config).to(dtype)
    model = model.to_empty(device=device).eval().requires_grad_(False)
    generator = torch.Generator(device).manual_seed(0)
    for key, param in model.named_parameters():
        mean, std = random_init(key, tuple(param.shape), config['dim'])
        param.normal_(mean, std, generator=generator)
        if dist.is_initialized():
            dist.broadcast(param, src=0)
    return model


def make_inputs(latent: tuple[int, ...], device: torch.device) -> dict:
    """Latent, two prompt embeddings and the timestep; drawn on the CPU, so equal on every rank."""
    generator = torch.Generator().manual_seed(1)
    return dict(latents=torch.randn(latent, generator=generator).to(device),
                context=torch.randn(TEXT_TOKENS, 4096, generator=generator).to(device),
                context_null=torch.randn(TEXT_TOKENS + 7, 4096, generator=generator).to(device),
                t=torch.tensor(TIMESTEP, device=device))


def guided_model(model: WanModel, inputs: dict, seq_len: int, autocast_dtype, cfg=None) -> GuidedModel:
    return GuidedModel(lambda name: model, context=inputs['context'], context_null=inputs['context_null'],
                       seq_len=seq_len, guide_scale=(GUIDE_SCALE, GUIDE_SCALE), boundary=None,
                       autocast_dtype=autocast_dtype, cfg_parallel=cfg)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_steps(step, device: torch.device, steps: int, warmup: int, collective: bool
               ) -> tuple[torch.Tensor, list[float]]:
    """`warmup` untimed steps, then `steps` timed ones; each starts with every rank synchronized."""
    out = None
    for _ in range(warmup):
        out = step()
    times = []
    for _ in range(steps):
        sync(device)
        if collective:
            dist.barrier()
        start = time.perf_counter()
        out = step()
        sync(device)
        times.append(time.perf_counter() - start)
    return out, times


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None


def versions(device: torch.device) -> dict:
    """`bench.common.environment` plus the GPU name (None on the CPU), attention backend and NCCL."""
    info = environment(device)
    info.update(gpu=info['device'] if device.type == 'cuda' else None, attention_backend=resolve_backend(device))
    if device.type == 'cuda':
        nccl = torch.cuda.nccl.version()
        info['nccl'] = '.'.join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    return info


def print_table(record: dict) -> None:
    ref, run = record['reference'], record['parallel']
    print(f'\n{"configuration":<28} {"GPUs":>4} {"step s":>8} {"speedup":>8} {"efficiency":>10} '
          f'{"rel err":>9} {"peak GiB":>9}')
    gib = (lambda v: '-' if v is None else f'{v:.1f}')
    if ref is not None:
        print(f'{"1 GPU (rank 0 alone)":<28} {1:>4} {ref["median_step_s"]:>8.3f} {1:>7.2f}x {"100%":>10} '
              f'{"-":>9} {gib(ref["peak_gib"]):>9}')
    speed = f'{run["speedup"]:>7.2f}x' if run['speedup'] else f'{"-":>8}'
    eff = f'{100 * run["efficiency"]:.1f}%' if run['efficiency'] else '-'
    err = f'{run["rel_err_velocity"]:.2e}' if run['rel_err_velocity'] is not None else '-'
    print(f'{record["configuration"]:<28} {record["world_size"]:>4} {run["median_step_s"]:>8.3f} {speed} '
          f'{eff:>10} {err:>9} {gib(max(filter(None, run["peak_gib_per_rank"]), default=None)):>9}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ulysses_size', type=int, default=None,
                        help='Ulysses degree (default: all ranks, or half of them with --cfg_parallel)')
    parser.add_argument('--cfg_parallel', action='store_true', help='cond/uncond on two halves of the ranks')
    parser.add_argument('--dit_fsdp', action='store_true', help='shard the DiT with FSDP2')
    parser.add_argument('--steps', type=int, default=2, help='timed steps of the parallel run')
    parser.add_argument('--ref_steps', type=int, default=1, help='timed steps of the 1-GPU reference')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--smoke', action='store_true', help='tiny model on the CPU with gloo (fp32)')
    args = parser.parse_args()

    info = world_info()
    if info.world_size > 1:
        device = init_distributed()
    else:
        device = torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
    if not args.smoke and device.type != 'cuda':
        sys.exit('no CUDA device: use --smoke for a CPU check')
    if args.smoke and device.type == 'cuda':
        sys.exit('--smoke is the CPU/gloo check: run it on a machine without GPUs or with CUDA_VISIBLE_DEVICES=')
    ulysses = args.ulysses_size or max(1, info.world_size // (2 if args.cfg_parallel else 1))
    pconfig = ParallelConfig(ulysses_size=ulysses, cfg_parallel=args.cfg_parallel, dit_fsdp=args.dit_fsdp)
    name = ' + '.join([f'ulysses {ulysses}'] + (['cfg 2'] if args.cfg_parallel else [])
                      + (['fsdp'] if args.dit_fsdp else []))
    config, latent = (SMOKE, SMOKE_LATENT) if args.smoke else (A14B, A14B_LATENT)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    autocast_dtype = None if args.smoke else torch.bfloat16
    tolerance = FP32_TOLERANCE if args.smoke else BF16_TOLERANCE
    log(f'{name} on {info.world_size} x {versions(device)["gpu"] or "cpu"}; latent {latent}')

    model = build_model(config, device, dtype)
    inputs = make_inputs(latent, device)
    collective = info.world_size > 1

    # 1 GPU: rank 0 alone, before anything is parallelized
    reference = None
    ref_out = ref_cond = None
    if info.rank == 0:
        seq_len = seq_len_for(latent, model.patch_size, 1)
        step = guided_model(model, inputs, seq_len, autocast_dtype)
        ref_out, times = time_steps(lambda: step(inputs['latents'], inputs['t']), device,
                                    args.ref_steps if collective else args.steps, args.warmup, collective=False)
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            ref_cond = model([inputs['latents']], torch.stack([inputs['t']]), [inputs['context']], seq_len)[0]
        reference = {'median_step_s': statistics.median(times), 'times_s': times, 'peak_gib': peak_gib(device)}
    if not collective:
        record_parallel = {'median_step_s': reference['median_step_s'], 'times_s': reference['times_s'],
                           'speedup': 1.0, 'efficiency': 1.0, 'rel_err_velocity': None, 'rel_err_cond': None,
                           'peak_gib_per_rank': [reference['peak_gib']]}
        name, reference = '1 GPU', None
    else:
        dist.barrier()
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        parallel = Parallel(pconfig, device)
        model = parallel.parallelize_dit(model, param_dtype=None if args.smoke else torch.bfloat16)
        seq_len = seq_len_for(latent, model.patch_size, parallel.sp_size)
        step = guided_model(model, inputs, seq_len, autocast_dtype, parallel.cfg)
        out, times = time_steps(lambda: step(inputs['latents'], inputs['t']), device, args.steps, args.warmup,
                                collective=True)
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            run_cond = (lambda ctx: model([inputs['latents']], torch.stack([inputs['t']]), [ctx], seq_len)[0])
            cond = run_cond(inputs['context']) if parallel.cfg is None else \
                parallel.cfg(run_cond, inputs['context'], inputs['context_null'])[0]
        peaks = [None] * info.world_size
        dist.all_gather_object(peaks, peak_gib(device))
        median = statistics.median(times)
        record_parallel = {'median_step_s': median, 'times_s': times, 'peak_gib_per_rank': peaks,
                           'speedup': None, 'efficiency': None, 'rel_err_velocity': None, 'rel_err_cond': None}
        if info.rank == 0:
            speedup = reference['median_step_s'] / median
            record_parallel.update(speedup=speedup, efficiency=speedup / info.world_size,
                                   rel_err_velocity=relative_error(out, ref_out),
                                   rel_err_cond=relative_error(cond, ref_cond))

    if info.rank == 0:
        errors = [e for e in (record_parallel['rel_err_velocity'], record_parallel['rel_err_cond']) if e is not None]
        record = {
            'benchmark': 'bench_multigpu', 'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'command': shlex.join(['torchrun', f'--nproc_per_node={info.world_size}', *sys.argv]),
            'world_size': info.world_size, 'configuration': name,
            'parallel_config': vars(pconfig) if collective else None, 'smoke': args.smoke,
            'model': config, 'latent': list(latent), 'tokens': seq_len_for(latent, (1, 2, 2), 1),
            'steps': args.steps, 'ref_steps': args.ref_steps, 'warmup': args.warmup,
            'step': 'one guided velocity: conditional + unconditional DiT forward (bf16 autocast)',
            'tolerance_rel_err': tolerance, 'equal_within_tolerance': all(e < tolerance for e in errors),
            'reference': reference, 'parallel': record_parallel, **versions(device),
        }
        print_table(record)
        tag = name.replace(' + ', '-').replace(' ', '')
        write_result(f'bench_multigpu{"-smoke" if args.smoke else ""}-{info.world_size}gpu-{tag}', record)
        if errors and not record['equal_within_tolerance']:
            print(f'FAIL: relative error {max(errors):.2e} exceeds {tolerance:.0e}', file=sys.stderr)
    if collective:
        finish()


if __name__ == '__main__':
    main()
