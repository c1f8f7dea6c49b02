"""VAE decode time and peak memory, our decode levers side by side (issues 3 and 8).

Full size (GPU): Wan2.2 VAE at 704x1280x121 (latent 48x31x44x80) and Wan2.1 VAE at 720x1280x81
(latent 16x21x90x160), release widths, seeded random weights. For each VAE: first our fp32 decode
(the reference every error is measured against), then each --variants entry: '+'-joined levers
of `wan.modules.vae_common.DecodeOptions`, in bf16 unless 'fp32' is one of them:

    base      no lever (the default decode)       bench    cudnn_benchmark=True
    cl        channels_last=True                  lean     norm='lean'
    compile   norm='compiled' (torch.compile)     fp32     decode in fp32 instead of bf16

Each variant: a warm-up decode of 2 latent frames (it covers every shape: chunk 0 and the later
chunks differ; its time includes cuDNN's search and compilation), then the median of --repeats
full decodes. Peak = the CUDA allocator's peak during a decode minus what was allocated before it
(weights, latent, kept outputs): activations, caches and the output video. Errors are against our
fp32 decode (rel = |out - ref| / |ref|, max abs); 'vs base' is the max abs difference from the
bf16 'base' output (0 = bit-identical). After --budget-s seconds each remaining variant is timed
once. A variant that fails is reported with its error and the run goes on.

    python3 bench/bench_vae.py                         # GPU, both VAEs, default variants, ~3.5 min
    python3 bench/bench_vae.py --variants base,bench+cl+lean --versions 2.2
    python3 bench/bench_vae.py --diffusers             # + diffusers' AutoencoderKLWan fp32, bf16
    python3 bench/bench_vae.py --smoke                 # CPU, tiny widths and sizes
    python3 bench/bench_vae.py --analyze               # CPU, full size on the meta device: FLOPs,
                                                       # bytes moved per op, caches, memory peak

Prints a table and writes JSON (GPU, versions, commit, command) to
$OUT/bench_vae[-smoke]-<date>-<time>.json, OUT defaulting to bench/results.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment, git_commit, write_result  # noqa: E402

from tests.tiny.vae import diffusers_config, random_weights, to_diffusers  # noqa: E402
from wan.modules.vae2_1 import Wan2_1_VAE, build_vae21  # noqa: E402
from wan.modules.vae2_2 import Wan2_2_VAE, build_vae22  # noqa: E402
from wan.modules.vae_common import CausalCache, DecodeOptions  # noqa: E402

CASES = {
    # version: wrapper, builder, release widths, full latent [z, n, h, w], tiny widths, tiny latent
    '2.2': (Wan2_2_VAE, build_vae22, dict(dim=160, dec_dim=256), (48, 31, 44, 80),
            dict(dim=8, dec_dim=12), (48, 3, 4, 4)),
    '2.1': (Wan2_1_VAE, build_vae21, dict(dim=96), (16, 21, 90, 160),
            dict(dim=8), (16, 3, 4, 6)),
}
LEVERS = {'base': {}, 'bench': dict(cudnn_benchmark=True), 'cl': dict(channels_last=True),
          'lean': dict(norm='lean'), 'compile': dict(norm='compiled'), 'fp32': {}}
DEFAULT_VARIANTS = 'base,lean,cl+lean,bench+cl+lean,bench+cl+compile'  # one lever at a time


def parse_variant(name: str) -> tuple[DecodeOptions, torch.dtype]:
    levers = name.split('+')
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        raise ValueError(f'unknown lever {unknown[0]!r} in variant {name!r}; known: {list(LEVERS)}')
    kwargs = {k: v for lever in levers for k, v in LEVERS[lever].items()}
    return DecodeOptions(**kwargs), torch.float32 if 'fp32' in levers else torch.bfloat16


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_ours(cls, tensors, dtype, device, options=DecodeOptions()):
    vae = cls.from_tensors(tensors, 'random', dtype=dtype, device=device, options=options)
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
    sync(device)
    start = time.perf_counter()
    decode(z[:, :2])  # warm-up: kernels, allocator, cuDNN search, compilation
    sync(device)
    warmup = time.perf_counter() - start
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
    return warmup, times, peak, out


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
    runs = [('ours', 'fp32 (reference)', lambda: make_ours(cls, state32, torch.float32, device),
             args.ref_repeats)]
    for name in args.variants:
        options, dtype = parse_variant(name)
        tensors = state32 if dtype == torch.float32 else state16
        runs.append(('ours', name, lambda o=options, d=dtype, t=tensors: make_ours(
            cls, t, d, device, o), args.repeats))
    if args.diffusers:
        for name, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
            tensors = state32 if dtype == torch.float32 else state16
            runs.append(('diffusers', name, lambda d=dtype, t=tensors: make_diffusers(
                cls, t, d, device, version, widths), args.repeats))
    rows, ref, base = [], None, None
    for index, (impl, name, make, repeats) in enumerate(runs):
        row = dict(vae=version, impl=impl, variant=name)
        decode = None
        try:
            decode = make()
            over_budget = time.perf_counter() - started > args.budget_s
            warmup, times, peak, out = measure(decode, z, 1 if over_budget else repeats, device)
        except Exception as error:  # report it and go on with the other variants
            rows.append(dict(row, error=f'{type(error).__name__}: {error}'.splitlines()[0][:200]))
            print(f'{version} {impl} {name} failed: {rows[-1]["error"]}', flush=True)
            continue
        finally:
            del decode
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        if index == 0:
            ref = out  # ours, fp32; stays on the device (its memory is not in later peaks)
        if impl == 'ours' and name == 'base':
            base = out
        rel, max_abs = (None, None) if ref is None else errors(out, ref)
        rows.append(dict(row, frames=out.shape[1], height=out.shape[2], width=out.shape[3],
                         warmup_s=warmup, times_s=times, median_s=statistics.median(times),
                         peak_gib=None if peak is None else peak / 2 ** 30,
                         rel_err_vs_fp32=rel, max_abs_vs_fp32=max_abs,
                         max_abs_vs_base=None if base is None else (out - base).abs().max().item(),
                         unclamped_fraction=out.abs().lt(1).float().mean().item()))
        print(format_row(rows[-1]), flush=True)
        del out
    return rows


HEADER = (f"{'vae':4} {'impl':9} {'variant':20} {'video':>13} {'median s':>9} {'runs':>4} "
          f"{'warm-up s':>9} {'peak GiB':>9} {'rel err':>9} {'max abs':>9} {'vs base':>9}")


def format_row(r: dict) -> str:
    if 'error' in r:
        return f"{r['vae']:4} {r['impl']:9} {r['variant']:20} failed: {r['error']}"

    def num(key, spec):
        return '-' if r[key] is None else format(r[key], spec)
    video = f"{r['frames']}x{r['height']}x{r['width']}"
    return (f"{r['vae']:4} {r['impl']:9} {r['variant']:20} {video:>13} {r['median_s']:9.3f} "
            f"{len(r['times_s']):4} {r['warmup_s']:9.1f} {num('peak_gib', '.2f'):>9} "
            f"{num('rel_err_vs_fp32', '.2e'):>9} {num('max_abs_vs_fp32', '.2e'):>9} "
            f"{num('max_abs_vs_base', '.2e'):>9}")


def print_table(rows):
    print(HEADER)
    for r in rows:
        print(format_row(r))


class Traffic(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes each aten op reads and writes (views and allocations excluded), and the peak of live
    tensor storage (tensors alive when it starts are added with `track`)."""

    FREE = {'view', '_unsafe_view', 'transpose', 'permute', 'unsqueeze', 'squeeze', 'slice',
            'select', 'expand', 'unbind', 'detach', 'alias', 't', 'split', 'as_strided',
            'unflatten', 'empty', 'empty_strided', 'empty_like', 'new_empty'}
    WRITE_ONLY = {'copy_', 'zero_', 'fill_'}  # in-place ops that do not read their target

    def __init__(self):
        super().__init__()
        self.bytes, self.calls = collections.Counter(), collections.Counter()
        self.storages, self.refs = {}, collections.Counter()
        self.live = self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        if key not in self.storages:
            self.storages[key] = t.untyped_storage().nbytes()
            self.live += self.storages[key]
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            self.live -= self.storages.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        leaves = torch.utils._pytree.tree_leaves
        outs = [o for o in leaves(out) if isinstance(o, torch.Tensor)]
        if name not in self.FREE:
            inplace = name.endswith('_')
            reads = [a for a in leaves((args[1:] if name in self.WRITE_ONLY else args,
                                        {k: v for k, v in kwargs.items() if k != 'out'}))
                     if isinstance(a, torch.Tensor)]
            writes = [args[0]] if inplace else outs
            self.bytes[name] += sum(t.numel() * t.element_size() for t in reads + writes)
            self.calls[name] += 1
        for o in outs:
            self.track(o)
        return out


def analyze(versions: list[str]) -> None:
    """Per steady-state decode chunk (the third latent frame) at full size, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    for version in versions:
        cls, build, widths, latent, _, _ = CASES[version]
        for dtype, norm in ((torch.bfloat16, 'exact'), (torch.bfloat16, 'lean'),
                            (torch.float32, 'exact')):
            with torch.device('meta'):
                model = build(**widths)
            model = model.to(dtype).eval().requires_grad_(False)
            model.configure_decode(DecodeOptions(norm=norm))
            z = torch.empty((1, latent[0], 3, *latent[2:]), device='meta', dtype=dtype)
            cache = CausalCache()
            with torch.no_grad():
                for i in range(2):
                    model.decoder(model.conv2(z[:, :, i:i + 1]), cache)
                    cache.first_chunk = False
                traffic, flops = Traffic(), FlopCounterMode(display=False)
                for tail in cache.tails.values():
                    traffic.track(tail)
                caches = traffic.live
                with flops, traffic:
                    x = model.decoder(model.conv2(z[:, :, 2:3]), cache)
                    del x
            frames = 1 + cls.stride[0] * (latent[1] - 1)
            video = 3 * frames * latent[2] * latent[3] * cls.stride[1] ** 2 * 4
            total = sum(traffic.bytes.values())
            print(f'== Wan{version} VAE, {str(dtype)[6:]}, norm {norm}: one chunk of {latent[1]} = '
                  f'{flops.get_total_flops() / 1e12:.1f} TFLOP, {total / 1e9:.0f} GB moved; '
                  f'caches {caches / 2 ** 30:.2f} GiB; peak live {traffic.peak / 2 ** 30:.2f} GiB '
                  f'(+ fp32 video {video / 2 ** 30:.2f} GiB)')
            for name, moved in traffic.bytes.most_common(10):
                print(f'   {name:28} {moved / 1e9:7.1f} GB {traffic.calls[name]:4d} calls')


def decode_environment(device, with_diffusers):
    """`bench.common.environment` plus cuDNN, the TF32 switches, commit, command and date."""
    env = dict(
        environment(device), cudnn=torch.backends.cudnn.version(), commit=git_commit(),
        command=' '.join([Path(sys.executable).name, *sys.argv]),
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        date=time.strftime('%Y-%m-%d %H:%M:%S %Z'))
    if with_diffusers:
        import diffusers
        env['diffusers'] = diffusers.__version__
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smoke', action='store_true', help='CPU, tiny widths and sizes')
    parser.add_argument('--analyze', action='store_true',
                        help='CPU, full size on the meta device: FLOPs, bytes per op, memory')
    parser.add_argument('--repeats', type=int, default=2, help='timed decodes per variant')
    parser.add_argument('--ref-repeats', type=int, default=1, help='timed fp32 reference decodes')
    parser.add_argument('--versions', nargs='+', default=['2.2', '2.1'], choices=list(CASES))
    parser.add_argument('--variants', default=DEFAULT_VARIANTS,
                        help=f"comma-separated, each '+'-joined levers of {list(LEVERS)} "
                             f"(default {DEFAULT_VARIANTS})")
    parser.add_argument('--diffusers', action='store_true',
                        help="also time diffusers' AutoencoderKLWan (fp32 and bf16)")
    parser.add_argument('--budget-s', type=float, default=180.0,
                        help='after this many seconds, time each remaining variant once')
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(',') if v]
    try:
        for name in args.variants:
            parse_variant(name)
    except ValueError as error:
        parser.error(str(error))
    if args.analyze:
        analyze(args.versions)
        return
    if not args.smoke and not torch.cuda.is_available():
        parser.error('the full-size benchmark needs a CUDA GPU (or pass --smoke or --analyze)')
    device = torch.device('cpu' if args.smoke else 'cuda')
    torch.manual_seed(0)
    started = time.perf_counter()
    rows = []
    print(HEADER, flush=True)
    for version in args.versions:
        rows += run_version(version, args, device, started)
    print_table(rows)
    result = dict(environment=decode_environment(device, args.diffusers),
                  total_s=time.perf_counter() - started, rows=rows)
    print(f'total {result["total_s"]:.0f} s')
    write_result(f'bench_vae{"-smoke" if args.smoke else ""}', result)


if __name__ == '__main__':
    main()
