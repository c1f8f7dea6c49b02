"""End-to-end command-line benchmark on random full-size weights, one run per model family.

    python bench/bench_pipeline.py                  # H200: ti2v-5B 1280*704 x121 and t2v-A14B 832*480 x81, 3 steps
    python bench/bench_pipeline.py --family a14b --steps 2
    python bench/bench_pipeline.py --smoke          # CPU: the same path with tiny models (about a minute)

No full-size checkpoint touches the disk: the loaders in wan.pipelines.components are replaced by
ones that build random models in memory (bf16 DiT and umT5, fp32 VAE; meta device, then random
tensors assigned on the GPU), and a placeholder checkpoint folder (empty files, a small tokenizer)
satisfies the command line's checks. Everything after loading is `wan.cli.generate_main(argv)` with
a real argv and the reference's single-GPU flags (--offload_model True --convert_model_dtype), so
the A14B run swaps its experts through the CPU at the boundary as a user's run does. Reported per
run: seconds and peak GPU memory of each stage (load = random init here, text, prepare, denoise,
decode, save), seconds of every denoising step with its expert, the output checked (frames, size).
One JSON file goes to $OUT (default bench/results) with the GPU, versions, commit and commands.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import git_commit  # noqa: E402

from tests.tiny.dit import random_init  # noqa: E402
from tests.tiny.t5 import tokenizer_pieces, write_tokenizer  # noqa: E402
from tests.tiny.vae import random_weights  # noqa: E402
from wan import cli  # noqa: E402
from wan.configs import WAN_CONFIGS  # noqa: E402
from wan.modules.model import WanModel  # noqa: E402
from wan.modules.t5 import T5Encoder, UMT5Encoder, load_tokenizer  # noqa: E402
from wan.modules.vae2_1 import Wan2_1_VAE, build_vae21  # noqa: E402
from wan.modules.vae2_2 import Wan2_2_VAE, build_vae22  # noqa: E402
from wan.pipelines import components  # noqa: E402
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

    def _randomize(self, module: torch.nn.Module, dtype: torch.dtype, dim: int) -> torch.nn.Module:
        """Assign random non-zero tensors (tests/tiny/dit.py scales) to a meta-built module."""
        tensors = {}
        for key, ref in module.state_dict().items():
            mean, std = random_init(key, tuple(ref.shape), dim)
            tensors[key] = (torch.randn(ref.shape, generator=self.generator, device=self.device, dtype=dtype)
                            .mul_(std).add_(mean))
        return load_into(module, tensors, 'random weights').eval().requires_grad_(False)

    def text_encoder(self, config, ckpt_dir) -> T5Encoder:
        sizes = dict(FULL_T5, num_layers=1, dim_attn=64, dim_ffn=64, num_heads=2) if self.smoke else FULL_T5
        vocab = 256 if self.smoke else 256384
        assert len(tokenizer_pieces()) <= vocab
        with torch.device('meta'):
            model = UMT5Encoder(vocab_size=vocab, **sizes)
        encoder = T5Encoder.__new__(T5Encoder)
        encoder.text_len = config.text_len
        encoder.tokenizer = load_tokenizer(Path(ckpt_dir) / config.t5_tokenizer, config.text_len)
        encoder.model = self._randomize(model, config.t5_dtype, sizes['dim'])
        return encoder

    def vae(self, config, ckpt_dir, device):
        wide = config.vae_checkpoint == 'Wan2.2_VAE.pth'
        with torch.device('meta'):
            if wide:
                model = build_vae22(dim=2, dec_dim=2) if self.smoke else build_vae22()
            else:
                model = build_vae21(dim=2) if self.smoke else build_vae21()
        cls = Wan2_2_VAE if wide else Wan2_1_VAE
        return cls.from_tensors(random_weights(model, seed=0, device=self.device), 'random weights',
                                dtype=torch.float32, device=device)

    def dit(self, folder, dtype, device) -> WanModel:
        """Built on the GPU whatever `device` says (random init on the CPU would dominate); the
        placement then moves experts between CPU and GPU exactly as for loaded weights."""
        in_dim, out_dim = self.in_out
        c = self.config
        dims = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2) if self.smoke else dict(
            dim=c.dim, ffn_dim=c.ffn_dim, num_heads=c.num_heads, num_layers=c.num_layers)
        model_type = 'ti2v' if in_dim == 48 else 't2v'
        with torch.device('meta'):
            model = WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, freq_dim=c.freq_dim,
                             text_len=c.text_len, eps=c.eps, **dims)
        return self._randomize(model, dtype or torch.float32, dims['dim'])

    def install(self) -> None:
        components.load_text_encoder = self.text_encoder
        components.load_vae = self.vae
        components.load_dit = self.dit


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


def run_family(family: str, steps: int, smoke: bool, device: torch.device, work: Path) -> dict:
    task, size, frames, _ = FAMILIES[family]
    if smoke:
        frames = 5
    ckpt = placeholder_checkpoint(task, work / f'ckpt_{family}')
    RandomModels(task, device, smoke).install()
    out = work / f'{family}.mp4'
    argv = ['--task', task, '--size', size, '--frame_num', str(frames), '--sample_steps', str(steps),
            '--ckpt_dir', str(ckpt), '--base_seed', '42', '--prompt', PROMPT, '--save_file', str(out)]
    if not smoke:
        argv += ['--offload_model', 'True', '--convert_model_dtype']

    reports = []
    run_video = cli.run_video

    def capture(args, parallel=None):
        reports.append(run_video(args, parallel))
        return reports[-1]
    cli.run_video = capture
    try:
        code = cli.generate_main(argv)
    finally:
        cli.run_video = run_video
    if code != 0:
        raise SystemExit(f'{family}: generate.py exited with {code}')
    (report,) = reports
    pixels, fps = read_video(out)
    result = {
        'family': family, 'task': task, 'size': size, 'frame_num': frames, 'sample_steps': steps,
        'command': shlex.join(['python', 'generate.py', *argv]),
        'stages': report.timer.stages, 'steps': report.timer.steps,
        # the load stage holds every model on the GPU at once (random init there): not a user's peak
        'peak_gib': max((s['peak_gib'] for name, s in report.timer.stages.items()
                         if 'peak_gib' in s and name != 'load'), default=None),
        'output': {'frames': int(pixels.shape[0]), 'height': int(pixels.shape[1]),
                   'width': int(pixels.shape[2]), 'fps': fps, 'mp4_bytes': out.stat().st_size},
        'summary': report.timer.summary(),
    }
    out.unlink()
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--family', choices=['5b', 'a14b', 'both'], default='both')
    parser.add_argument('--steps', type=int, default=3, help='denoising steps (A14B: 3 crosses the boundary)')
    parser.add_argument('--smoke', action='store_true', help='tiny models on the CPU: checks the script')
    parser.add_argument('--out', type=Path, default=None, help='output folder (default $OUT or bench/results)')
    args = parser.parse_args()

    if args.smoke:
        device = torch.device('cpu')
    elif not torch.cuda.is_available():
        raise SystemExit('no GPU: run with --smoke for the CPU check')
    else:
        device = torch.device('cuda', 0)
    torch.manual_seed(0)
    from wan.modules.attention import resolve_backend
    results = {
        'benchmark': 'bench_pipeline', 'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': shlex.join([sys.executable, *sys.argv]), 'git_commit': git_commit(),
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
        'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': sys.version.split()[0],
        'attention_backend': resolve_backend(device), 'smoke': args.smoke,
        'notes': 'random weights; load = random init of every model in GPU memory (no disk read), so its peak '
                 'is not a real one and peak_gib is the largest peak of the later stages; the placement then '
                 'moves models as in a real run (T5 to the CPU after encoding, the idle A14B expert to the CPU '
                 'at the first step, the swap at the boundary, all experts to the CPU after sampling: step 0 '
                 'and the first low-noise step include these copies)',
        'runs': [],
    }
    families = ['5b', 'a14b'] if args.family == 'both' else [args.family]
    with tempfile.TemporaryDirectory(prefix='wan-bench-') as work:
        for family in families:
            result = run_family(family, args.steps, args.smoke, device, Path(work))
            peak = f"{result['peak_gib']:.1f} GiB" if result['peak_gib'] is not None else 'n/a'
            print(f"{family}: {result['summary']}; peak {peak}; output {result['output']}", flush=True)
            results['runs'].append(result)

    out_dir = args.out or Path(os.environ.get('OUT') or ROOT / 'bench' / 'results')
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime('%Y%m%d_%H%M%S')
    path = out_dir / f"bench_pipeline{'_smoke' if args.smoke else ''}_{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
