"""End-to-end command-line benchmark on random full-size weights, one run per model family.

    python bench/bench_pipeline.py                  # H200: ti2v-5B 1280*704 x121 and t2v-A14B 832*480 x81, 3 steps
    python bench/bench_pipeline.py --family a14b --steps 2
    python bench/bench_pipeline.py --smoke          # CPU: the same path with tiny models (about a minute)

No full-size checkpoint touches the disk: the loaders in wan.pipelines.components are replaced by
ones that build random models in memory (bf16 DiT and umT5, fp32 VAE; meta device, then random
tensors assigned on the GPU, then handed over where the real loaders put them: DiT on the
placement's load device, umT5 on the CPU), and a placeholder checkpoint folder (empty files, a
small tokenizer) satisfies the command line's checks. Everything after loading is
`wan.cli.generate_main(argv)` with a real argv and the reference's single-GPU flags
(--offload_model True --convert_model_dtype), so the A14B run swaps its experts through the CPU at
the boundary as a user's run does. Reported per
run: seconds and peak GPU memory of each stage (load = random init here, text, prepare, denoise,
decode, save), seconds of every denoising step with its expert, each expert swap (the placement's
activate calls that moved an expert) and each host-copy operation (building the page-locked copy,
copies to the GPU with their GB/s, pointing back), the output checked (frames, size).
One JSON file goes to $OUT (default bench/results) with the GPU, versions, commit and commands.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch._dynamo.utils as dynamo_utils  # noqa: E402

from bench.common import bench_device, environment, write_result  # noqa: E402

from tests.tiny.dit import random_init  # noqa: E402
from tests.tiny.t5 import tokenizer_pieces, write_tokenizer  # noqa: E402
from tests.tiny.vae import random_weights  # noqa: E402
from wan import cli  # noqa: E402
from wan.configs import WAN_CONFIGS  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402
from wan.modules.t5 import T5Encoder, UMT5Encoder, load_tokenizer  # noqa: E402
from wan.modules.vae2_1 import Wan2_1_VAE, build_vae21  # noqa: E402
from wan.modules.vae2_2 import Wan2_2_VAE, build_vae22  # noqa: E402
from wan.pipelines import components, placement  # noqa: E402
from wan.utils.checkpoint import load_into  # noqa: E402
from wan.utils.video_io import read_video  # noqa: E402

# family -> (task, size, frames, DiT in/out channels)
FAMILIES = {'5b': ('ti2v-5B', '1280*704', 121, (48, 48)), 'a14b': ('t2v-A14B', '832*480', 81, (16, 16))}
PROMPT = 'Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.'
FULL_T5 = dict(dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32)


class RandomModels:
    """Loader replacements: random models of the task's full size (or tiny with `smoke`)."""

    def __init__(self, task: str, device: torch.device, smoke: bool, seed: int = 0):
        self.config = WAN_CONFIGS[task]
        self.in_out = FAMILIES[next(f for f, v in FAMILIES.items() if v[0] == task)][3]
        self.device, self.smoke = device, smoke
        self.generator = torch.Generator(device).manual_seed(seed)

    def _randomize(self, module: torch.nn.Module, dtype: torch.dtype, dim: int,
                   target: torch.device | str | None = None) -> torch.nn.Module:
        """Assign random non-zero tensors (tests/tiny/dit.py scales) to a meta-built module, drawn
        on self.device, then each moved to `target` (default: stay)."""
        tensors = {}
        for key, ref in module.state_dict().items():
            mean, std = random_init(key, tuple(ref.shape), dim)
            tensor = (torch.randn(ref.shape, generator=self.generator, device=self.device, dtype=dtype)
                      .mul_(std).add_(mean))
            tensors[key] = tensor if target is None else self._to(tensor, torch.device(target))
        return load_into(module, tensors, 'random weights').eval().requires_grad_(False)

    def _to(self, tensor: torch.Tensor, target: torch.device) -> torch.Tensor:
        """GPU -> pageable CPU memory (where a loaded checkpoint lives) through a reused pinned
        buffer: a plain .to('cpu') of GPU memory runs at about 1 GB/s here."""
        if target.type != 'cpu' or tensor.device.type != 'cuda':
            return tensor.to(target)
        if getattr(self, '_staging', None) is None:
            self._staging = torch.empty(2**28, dtype=torch.uint8, pin_memory=True)
        out = torch.empty(tensor.shape, dtype=tensor.dtype)
        src, dst = tensor.reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.uint8)
        for start in range(0, src.numel(), self._staging.numel()):
            part = src[start:start + self._staging.numel()]
            self._staging[:part.numel()].copy_(part)
            dst[start:start + part.numel()].copy_(self._staging[:part.numel()])
        return out

    def text_encoder(self, config, ckpt_dir) -> T5Encoder:
        sizes = dict(FULL_T5, num_layers=1, dim_attn=64, dim_ffn=64, num_heads=2) if self.smoke else FULL_T5
        vocab = 256 if self.smoke else 256384
        assert len(tokenizer_pieces()) <= vocab
        with torch.device('meta'):
            model = UMT5Encoder(vocab_size=vocab, **sizes)
        encoder = T5Encoder.__new__(T5Encoder)
        encoder.text_len = config.text_len
        encoder.tokenizer = load_tokenizer(Path(ckpt_dir) / config.t5_tokenizer, config.text_len)
        encoder.model = self._randomize(model, config.t5_dtype, sizes['dim'], 'cpu')  # as T5Encoder loads
        return encoder

    def vae(self, config, ckpt_dir, device, dtype=torch.float32):
        wide = config.vae_checkpoint == 'Wan2.2_VAE.pth'
        with torch.device('meta'):
            if wide:
                model = build_vae22(dim=2, dec_dim=2) if self.smoke else build_vae22()
            else:
                model = build_vae21(dim=2) if self.smoke else build_vae21()
        cls = Wan2_2_VAE if wide else Wan2_1_VAE
        return cls.from_tensors(random_weights(model, seed=0, device=self.device), 'random weights',
                                dtype=dtype, device=device, options=components.decode_options(dtype))

    def dit(self, folder, dtype, device) -> WanModel:
        """Random init on the GPU (on the CPU it would dominate), then moved to `device` as loaded
        weights are, so the placement moves experts between CPU and GPU exactly as in a real run
        (a module born on the GPU would take another path: its host copy made from the GPU)."""
        in_dim, out_dim = self.in_out
        c = self.config
        dims = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2) if self.smoke else dict(
            dim=c.dim, ffn_dim=c.ffn_dim, num_heads=c.num_heads, num_layers=c.num_layers)
        model_type = 'ti2v' if in_dim == 48 else 't2v'
        with torch.device('meta'):
            model = WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, freq_dim=c.freq_dim,
                             text_len=c.text_len, eps=c.eps, **dims)
        return self._randomize(model, dtype or torch.float32, dims['dim'], device)

    def install(self) -> None:
        components.load_text_encoder = self.text_encoder
        components.load_vae = self.vae
        components.load_dit = self.dit


class MoveRecorder:
    """Times the placement's moves during one run: every `activate` call that changed which expert
    is on the device (the swap, as a step sees it) and every HostCopy operation (build, copy in,
    point back), with a device synchronize around each so the seconds are the moves' own."""

    def __init__(self):
        self.swaps: list[dict] = []
        self.host_copies: list[dict] = []
        self._saved = []

    def _timed(self, device: torch.device, fn, *args):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn(*args)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return out, time.perf_counter() - start

    def install(self) -> None:
        recorder, calls = self, itertools.count()
        activate, base = placement.Placement.activate, placement.HostCopy

        def on_device(experts: dict, device: torch.device) -> list[str]:
            return sorted(name for name, m in experts.items() if placement.module_device(m) == device)

        def timed_activate(self_, experts, name):
            step, before = next(calls), on_device(experts, self_.device)
            model, seconds = recorder._timed(self_.device, activate, self_, experts, name)
            after = on_device(experts, self_.device)
            if after != before:
                recorder.swaps.append({'step': step, 'expert': name, 'seconds': seconds,
                                       'on_device_before': before, 'on_device_after': after})
            return model

        class TimedHostCopy(base):
            def __init__(self_, module, pin_for=None):
                device = pin_for if pin_for is not None else placement.CPU
                _, seconds = recorder._timed(device, super().__init__, module, pin_for)
                self_.label = type(module).__name__
                recorder._log(self_, 'build', seconds, pinned=self_.pinned)

            def to_device(self_, device):
                _, seconds = recorder._timed(device, super().to_device, device)
                recorder._log(self_, 'to_device', seconds)

            def to_host(self_):
                _, seconds = recorder._timed(placement.CPU, super().to_host)
                recorder._log(self_, 'to_host', seconds)

        self._saved = [(placement.Placement, 'activate', activate), (placement, 'HostCopy', base)]
        placement.Placement.activate = timed_activate
        placement.HostCopy = TimedHostCopy

    def _log(self, host, op: str, seconds: float, **extra) -> None:
        record = {'module': host.label, 'op': op, 'gib': host.nbytes / 2**30, 'seconds': seconds, **extra}
        if op == 'to_device':
            record['gb_per_s'] = host.nbytes / 1e9 / max(seconds, 1e-9)
        self.host_copies.append(record)

    def restore(self) -> None:
        for owner, name, value in self._saved:
            setattr(owner, name, value)
        self._saved = []

    def summary(self) -> str:
        parts = [f"step {s['step']} -> {s['expert']} {s['seconds']:.2f}s" for s in self.swaps]
        parts += [f"{h['module']} {h['op']} {h['gib']:.1f} GiB {h['seconds']:.2f}s"
                  + (f" ({h['gb_per_s']:.1f} GB/s)" if 'gb_per_s' in h else '') for h in self.host_copies]
        return '; '.join(parts) or 'no moves'


def placeholder_checkpoint(task: str, folder: Path) -> Path:
    """Empty files where the command line checks for them, and a real (small) tokenizer."""
    config = WAN_CONFIGS[task]
    write_tokenizer(folder / config.t5_tokenizer)
    for name in (config.t5_checkpoint, config.vae_checkpoint):
        (folder / name).touch()
    for sub in components.dit_folders(config, folder).values():
        sub.mkdir(parents=True, exist_ok=True)
        (sub / 'config.json').write_text('{}')
        (sub / 'diffusion_pytorch_model.safetensors').touch()
    return folder


def compile_report() -> dict:
    """What --compile cost in this run: graphs, inductor's cache hits and misses, seconds compiling."""
    inductor = dynamo_utils.counters['inductor']
    return {'graphs': dynamo_utils.counters['stats'].get('unique_graphs', 0),
            'fx_cache_hits': inductor.get('fxgraph_cache_hit', 0),
            'fx_cache_misses': inductor.get('fxgraph_cache_miss', 0),
            'seconds': sum(dynamo_utils.compilation_time_metrics.get('_compile.compile_inner', []))}


def run_family(family: str, steps: int, smoke: bool, device: torch.device, work: Path,
               size: str | None = None, extra: tuple[str, ...] = ()) -> dict:
    task, default_size, frames, _ = FAMILIES[family]
    size = size or default_size
    if smoke:
        frames = 5
    ckpt = placeholder_checkpoint(task, work / f'ckpt_{family}')
    RandomModels(task, device, smoke).install()
    out = work / f'{family}.mp4'
    argv = ['--task', task, '--size', size, '--frame_num', str(frames), '--sample_steps', str(steps),
            '--ckpt_dir', str(ckpt), '--base_seed', '42', '--prompt', PROMPT, '--save_file', str(out)]
    if not smoke:
        argv += ['--offload_model', 'True', '--convert_model_dtype']
    argv += list(extra)

    reports = []
    run_video = cli.run_video
    dynamo_utils.counters.clear()  # this run's compilation only
    dynamo_utils.compilation_time_metrics.clear()

    def capture(args, parallel=None):
        reports.append(run_video(args, parallel))
        return reports[-1]
    cli.run_video = capture
    moves = MoveRecorder()
    moves.install()
    try:
        code = cli.generate_main(argv)
    finally:
        cli.run_video = run_video
        moves.restore()
    if code != 0:
        raise SystemExit(f'{family}: generate.py exited with {code}')
    (report,) = reports
    pixels, fps = read_video(out)
    result = {
        'family': family, 'task': task, 'size': size, 'frame_num': frames, 'sample_steps': steps,
        'command': shlex.join(['python', 'generate.py', *argv]),
        'stages': report.timer.stages, 'steps': report.timer.steps,
        'expert_swaps': moves.swaps, 'host_copies': moves.host_copies, 'moves_summary': moves.summary(),
        # the load stage holds every model on the GPU at once (random init there): not a user's peak
        'peak_gib': max((s['peak_gib'] for name, s in report.timer.stages.items()
                         if 'peak_gib' in s and name != 'load'), default=None),
        'output': {'frames': int(pixels.shape[0]), 'height': int(pixels.shape[1]),
                   'width': int(pixels.shape[2]), 'fps': fps, 'mp4_bytes': out.stat().st_size},
        'summary': report.timer.summary(),
        'compile': compile_report(),
    }
    out.unlink()
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


FULL_STEPS = {'5b': 50, 'a14b': 40}  # the tasks' default sample_steps


def extrapolate(result: dict, steps: int) -> dict:
    """A `steps`-step run from a short one: text + step 0 + (steps - 1) x the median later step
    (expert swaps taken out) + the swaps + decode + save; loading not counted (random weights here)."""
    swap_in = {s['step']: s['seconds'] for s in result['expert_swaps']}
    later = [s['seconds'] - swap_in.get(s['index'], 0.0) for s in result['steps'][1:]]
    if not later:
        return {}
    stages = result['stages']
    step = statistics.median(later)
    seconds = (stages['text']['seconds'] + result['steps'][0]['seconds'] + (steps - 1) * step
               + sum(v for k, v in swap_in.items() if k > 0)
               + stages['decode']['seconds'] + stages['save']['seconds'])
    return {'steps': steps, 'seconds': seconds, 'minutes': seconds / 60, 'steady_step_s': step,
            'step0_extra_s': result['steps'][0]['seconds'] - step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--family', choices=['5b', 'a14b', 'both'], default='both')
    parser.add_argument('--steps', type=int, default=3, help='denoising steps (A14B: 3 crosses the boundary)')
    parser.add_argument('--a14b_size', default=None, help="A14B size instead of 832*480, e.g. '1280*720'")
    parser.add_argument('--extra', default='', help="more generate.py flags for every run, e.g. '--compile'")
    parser.add_argument('--smoke', action='store_true', help='tiny models on the CPU: checks the script')
    parser.add_argument('--out', type=Path, default=None, help='output folder (default $OUT or bench/results)')
    args = parser.parse_args()

    device = bench_device(args.smoke)
    torch.manual_seed(0)
    from wan.modules.attention import resolve_backend
    results = {
        'benchmark': 'bench_pipeline', 'date': datetime.datetime.now().isoformat(timespec='seconds'),
        # the command and the commit: added by write_result
        **environment(device),
        'attention_backend': resolve_backend(device), 'smoke': args.smoke,
        'notes': 'random weights; load = random init of every model in GPU memory (no disk read), then the '
                 'DiT and umT5 copied to the CPU as the real loaders leave them, so its time and peak are not '
                 'real ones and peak_gib is the largest peak of the later stages; the placement then moves '
                 'models as in a real run (T5 to the GPU and back, an expert to the GPU at the first step, the '
                 'swap at the boundary, all experts to the CPU after sampling). expert_swaps: the seconds of '
                 'each such move as the step sees it (inside that step time; the first time a module moves '
                 'it includes building its page-locked host copy); host_copies: each HostCopy operation',
        'runs': [],
    }
    families = ['5b', 'a14b'] if args.family == 'both' else [args.family]
    with tempfile.TemporaryDirectory(prefix='wan-bench-') as work:
        for family in families:
            result = run_family(family, args.steps, args.smoke, device, Path(work),
                                size=args.a14b_size if family == 'a14b' else None,
                                extra=tuple(shlex.split(args.extra)))
            peak = f"{result['peak_gib']:.1f} GiB" if result['peak_gib'] is not None else 'n/a'
            print(f"{family}: {result['summary']}; peak {peak}; output {result['output']}", flush=True)
            print(f"{family} moves: {result['moves_summary']}", flush=True)
            print(f"{family} compile: {result['compile']}", flush=True)
            result['extrapolated'] = extrapolate(result, FULL_STEPS[family])
            if result['extrapolated']:
                e = result['extrapolated']
                print(f"{family} extrapolated to {e['steps']} steps: {e['seconds']:.1f} s ({e['minutes']:.2f} min; "
                      f"steady step {e['steady_step_s']:.3f} s, step 0 {e['step0_extra_s']:+.2f} s over it)",
                      flush=True)
            results['runs'].append(result)

    write_result(f"bench_pipeline{'-smoke' if args.smoke else ''}", results, args.out)


if __name__ == '__main__':
    main()
