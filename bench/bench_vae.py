"""Decode time and peak memory of our Wan VAEs next to diffusers' AutoencoderKLWan (issue 3).

Full size (GPU): Wan2.2 VAE at 704x1280x121 (latent 48x31x44x80) and Wan2.1 VAE at 720x1280x81
(latent 16x21x90x160), release widths with seeded random weights that both implementations share,
in fp32 and bf16. Each variant: one short warm-up decode (2 latent frames), then the median of
--repeats full decodes. Peak memory is the CUDA allocator's peak during a decode minus what was
allocated before it (weights, latent, the kept fp32 reference output), i.e. activations, caches
and the output video. Errors are against our fp32 output (rel = |out - ref| / |ref|, max abs).
After --budget-s seconds the remaining variants are timed once (`runs` in the table).

    python bench/bench_vae.py            # GPU, full size, < 5 minutes on one H200
    python bench/bench_vae.py --smoke    # CPU, tiny widths and sizes, a few seconds

Prints a table and writes JSON (with GPU, versions, commit, command) to $OUT/bench_vae[_smoke].json,
OUT defaulting to bench/results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import git_commit  # noqa: E402

from tests.tiny.vae import diffusers_config, random_weights, to_diffusers  # noqa: E402
from wan.modules.vae2_1 import Wan2_1_VAE, build_vae21  # noqa: E402
from wan.modules.vae2_2 import Wan2_2_VAE, build_vae22  # noqa: E402

CASES = {
    # version: wrapper, builder, release widths, full latent [z, n, h, w], tiny widths, tiny latent
    '2.2': (Wan2_2_VAE, build_vae22, dict(dim=160, dec_dim=256), (48, 31, 44, 80),
            dict(dim=8, dec_dim=12), (48, 3, 4, 4)),
    '2.1': (Wan2_1_VAE, build_vae21, dict(dim=96), (16, 21, 90, 160),
            dict(dim=8), (16, 3, 4, 6)),
}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_ours(cls, tensors, dtype, device):
    vae = cls.from_tensors(tensors, 'random', dtype=dtype, device=device)
    return lambda z: vae.decode([z])[0]


def make_diffusers(cls, tensors, dtype, device, version, widths):
    from diffusers import AutoencoderKLWan
    config = diffusers_config(version, widths['dim'], widths.get('dec_dim'))
    with torch.device('meta'):
        model = AutoencoderKLWan(**config)
    model.load_state_dict(to_diffusers(tensors, version), strict=True, assign=True)
    model = model.to(device).eval().requires_grad_(False)
    mean = torch.tensor(cls.mean, device=device).view(-1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cls.std, device=device).view(-1, 1, 1, 1)

    @torch.no_grad()
    def decode(z):  # diffusers' pipelines de-normalise before calling the VAE; do the same here
        raw = (z.float() / inv_std + mean).to(dtype)
        return model.decode(raw[None]).sample[0].float()
    return decode


def measure(decode, z, repeats, device):
    decode(z[:, :2])  # warm-up: kernels, allocator
    times, peak, out = [], None, None
    for _ in range(repeats):
        out = None
        sync(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        out = decode(z)
        sync(device)
        times.append(time.perf_counter() - start)
        if device.type == 'cuda':
            used = torch.cuda.max_memory_allocated(device) - base
            peak = used if peak is None else max(peak, used)
    return times, peak, out


def errors(out, ref):
    diff = (out - ref).view(-1)
    return (diff.norm() / ref.norm()).item(), diff.abs().max().item()


def run_version(version, args, device, started):
    cls, build, widths, latent, tiny_widths, tiny_latent = CASES[version]
    if args.smoke:
        widths, latent = tiny_widths, tiny_latent
    with torch.device('meta'):
        meta = build(**widths)
    state32 = random_weights(meta, seed=0, device=device)
    state16 = {k: v.to(torch.bfloat16) for k, v in state32.items()}
    del meta
    z = torch.randn(latent, generator=torch.Generator(device).manual_seed(1), device=device)
    rows, ref = [], None
    for impl in ('ours', 'diffusers'):
        for name, dtype in DTYPES.items():
            tensors = state32 if dtype == torch.float32 else state16
            if impl == 'ours':
                decode = make_ours(cls, tensors, dtype, device)
            else:
                decode = make_diffusers(cls, tensors, dtype, device, version, widths)
            over_budget = time.perf_counter() - started > args.budget_s
            times, peak, out = measure(decode, z, 1 if over_budget else args.repeats, device)
            del decode
            if ref is None:
                ref = out  # ours, fp32; stays on the device (its memory is not in later peaks)
            rel, max_abs = errors(out, ref)
            rows.append(dict(vae=version, impl=impl, dtype=name, frames=out.shape[1],
                             height=out.shape[2], width=out.shape[3], times_s=times,
                             median_s=statistics.median(times),
                             peak_gib=None if peak is None else peak / 2 ** 30,
                             rel_err_vs_ours_fp32=rel, max_abs_vs_ours_fp32=max_abs,
                             unclamped_fraction=out.abs().lt(1).float().mean().item()))
            del out
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    return rows


def print_table(rows):
    print(f"{'vae':4} {'impl':9} {'dtype':5} {'video':>15} {'median s':>9} {'runs':>4} "
          f"{'peak GiB':>9} {'rel err':>9} {'max abs':>9}")
    for r in rows:
        peak = '-' if r['peak_gib'] is None else f"{r['peak_gib']:.2f}"
        video = f"{r['frames']}x{r['height']}x{r['width']}"
        print(f"{r['vae']:4} {r['impl']:9} {r['dtype']:5} {video:>15} {r['median_s']:9.3f} "
              f"{len(r['times_s']):4} {peak:>9} {r['rel_err_vs_ours_fp32']:9.2e} "
              f"{r['max_abs_vs_ours_fp32']:9.2e}")


def environment(device):
    import diffusers
    return dict(
        device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
        torch=torch.__version__, cuda=torch.version.cuda, diffusers=diffusers.__version__,
        python=sys.version.split()[0], commit=git_commit(),
        command=' '.join([Path(sys.executable).name, *sys.argv]),
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        date=time.strftime('%Y-%m-%d %H:%M:%S %Z'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smoke', action='store_true', help='CPU, tiny widths and sizes')
    parser.add_argument('--repeats', type=int, default=2, help='timed decodes per variant')
    parser.add_argument('--versions', nargs='+', default=['2.2', '2.1'], choices=list(CASES))
    parser.add_argument('--budget-s', type=float, default=150.0,
                        help='after this many seconds, time each remaining variant once')
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error('the full-size benchmark needs a CUDA GPU (or pass --smoke)')
    device = torch.device('cpu' if args.smoke else 'cuda')
    torch.manual_seed(0)
    started = time.perf_counter()
    rows = []
    for version in args.versions:
        rows += run_version(version, args, device, started)
    print_table(rows)
    out_dir = Path(os.environ.get('OUT', ROOT / 'bench' / 'results'))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ('bench_vae_smoke.json' if args.smoke else 'bench_vae.json')
    result = dict(environment=environment(device), total_s=time.perf_counter() - started, rows=rows)
    path.write_text(json.dumps(result, indent=1))
    print(f'wrote {path} ({result["total_s"]:.0f} s)')


if __name__ == '__main__':
    main()
