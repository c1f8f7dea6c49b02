"""v2v-5B at full size on random weights with a random multi-GiB InternVL: the VLM is gone before the DiT runs.

    python bench/bench_v2v.py                  # H200: v2v-5B 1280*704 x121, 2 steps, then the ti2v-5B control
    python bench/bench_v2v.py --frames 61      # shorter, if time is short
    python bench/bench_v2v.py --smoke          # CPU: the same path at toy sizes (about 15 s)

Two runs of `wan.cli.generate_main(argv)` with the user's single-GPU flags (--offload_model True
--convert_model_dtype), the models built as in bench_pipeline.py (random full-size bf16 DiT and umT5,
fp32 VAE, made in GPU memory):
  1. v2v-5B continuing a synthetic 17-frame 1280x704 video, `--vlm_path` a random InternVL (the
     tiny one of tests/tiny/vlm.py with a 40-layer, 2048-wide language model: about 4.5 GiB in bf16);
  2. the control: ti2v-5B with the same prompt (the v2v run's, caption included), the same
     conditioning image (the input's last frame, as PNG) and seed, and no VLM.
Recorded (torch.cuda allocated memory): before the VLM loads, right after it loaded (its weights),
the caption stage's peak, right after it was freed, and for every stage its peak and the memory
allocated at its start. If the VLM were still resident, v2v's denoise peak would exceed the control's
by its weights; the checks require the freed memory and the two denoise peaks to agree within 0.125 GiB.
One JSON to $OUT (default bench/results); the input video is written and read with the ffmpeg binary
of imageio-ffmpeg only (wan/utils/video_io.py), so PyAV is not needed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.bench_pipeline import RandomModels, placeholder_checkpoint  # noqa: E402
from bench.common import bench_device, environment, write_result  # noqa: E402
from tests.tiny.vlm import build_tiny_internvl, qwen_text_config, save_vlm_folder  # noqa: E402
from wan import cli  # noqa: E402
from wan.configs import SIZE_CONFIGS, SUPPORTED_SIZES  # noqa: E402
from wan.pipelines import timing, v2v  # noqa: E402
from wan.utils import video_io  # noqa: E402
from wan.utils import vlm as vlm_module  # noqa: E402

GiB = 2**30
TOLERANCE_GIB = 0.125  # cuBLAS workspaces made by the VLM's first matmuls stay allocated (tens of MiB)
PROMPT = 'The camera keeps moving.'
# language model of the random InternVL: 40 x (attention 10.5M + MLP 50.3M) = 2.4e9 parameters
FULL_VLM_TEXT = dict(hidden_size=2048, num_hidden_layers=40, num_attention_heads=16, num_key_value_heads=4,
                     intermediate_size=8192)
SMOKE_VLM_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128)
# (size, frames, input video (width, height, frames)); the smoke size is registered for the run only
FULL = ('1280*704', 121, (1280, 704, 17))
SMOKE = ('256*128', 5, (256, 128, 9))


def allocated() -> float | None:
    return torch.cuda.memory_allocated() / GiB if torch.cuda.is_available() else None


class RecordingTimer(timing.StageTimer):
    """StageTimer that also records, per stage, the memory allocated at its start and end and the
    peak reserved memory."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = allocated()
        with super().stage(name):
            yield
        if self.cuda:
            self.stages[name].update(allocated_start_gib=start, allocated_end_gib=allocated(),
                                     peak_reserved_gib=torch.cuda.max_memory_reserved(self.device) / GiB)


def build_vlm(folder: Path, text_sizes: dict, device: torch.device) -> dict:
    """tests/tiny/vlm.py's InternVL (tokenizer, 1-layer vision tower, 16 image tokens) with a larger
    language model, initialised on `device` and saved in bf16 (fp32 on the CPU, as load_captioner)."""
    from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration

    start = time.perf_counter()
    base = json.loads((build_tiny_internvl(folder) / 'config.json').read_text())  # weights replaced below
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = InternVLConfig(vision_config=base['vision_config'],
                            text_config=dict(qwen_text_config(tokenizer), **text_sizes),
                            image_token_id=base['image_token_id'], image_seq_length=base['image_seq_length'],
                            downsample_ratio=base['downsample_ratio'])
    for old in folder.glob('model*.safetensors*'):
        old.unlink()
    torch.manual_seed(0)
    with torch.device(device):
        model = InternVLForConditionalGeneration(config)
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    model = model.to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    save_vlm_folder(model, tokenizer, folder)
    del model
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return {'folder_bytes': sum(f.stat().st_size for f in folder.iterdir()), 'parameters': params,
            'dtype': str(dtype), 'text_config': text_sizes, 'build_seconds': time.perf_counter() - start}


def write_input_video(path: Path, width: int, height: int, frames: int) -> Path:
    """Moving colour gradients, 16 fps."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing='ij')
    t = torch.arange(frames).view(-1, 1, 1) / frames
    video = torch.stack([0.5 + 0.3 * torch.sin(6 * x + 4 * t), 0.45 + 0.25 * torch.cos(5 * y - 3 * t),
                         0.5 + 0.3 * torch.sin(4 * (x + y) + 2 * t)])  # [3, F, H, W] in [0.15, 0.85]
    return video_io.save_video(video * 2 - 1, path, fps=16)


def run_cli(argv: list[str], memory: dict, caption_tokens: int) -> RecordingTimer:
    """generate.py's main with `argv`; the timer it made, `memory` filled around the caption."""
    timers: list[RecordingTimer] = []

    def make_timer(device=None):
        timers.append(RecordingTimer(device))
        return timers[-1]

    real_caption, real_load = v2v.caption_video, vlm_module.load_captioner

    def caption(path, **kwargs):
        memory['allocated_before_vlm_gib'] = allocated()
        text = real_caption(path, **kwargs, max_new_tokens=caption_tokens)
        memory['allocated_after_vlm_freed_gib'] = allocated()
        if torch.cuda.is_available():
            memory['reserved_after_vlm_freed_gib'] = torch.cuda.memory_reserved() / GiB
        return text

    def load_captioner(path, device):
        captioner = real_load(path, device)
        memory['allocated_vlm_loaded_gib'] = allocated()
        memory['vlm_weights_gib'] = sum(p.numel() * p.element_size() for p in captioner.model.parameters()) / GiB
        return captioner

    with mock.patch.object(timing, 'StageTimer', make_timer), \
            mock.patch.object(v2v, 'caption_video', caption), \
            mock.patch.object(vlm_module, 'load_captioner', load_captioner):
        code = cli.generate_main(argv)
    if code != 0:
        raise SystemExit(f'generate.py {shlex.join(argv)} exited with {code}')
    (timer,) = timers
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return timer


def run_result(argv: list[str], timer: RecordingTimer, memory: dict, out: Path) -> dict:
    pixels, fps = video_io.read_video(out)
    return {'command': shlex.join(['python', 'generate.py', *argv]), 'stages': timer.stages,
            'steps': timer.steps, 'memory': memory, 'summary': timer.summary(),
            'output': {'frames': int(pixels.shape[0]), 'height': int(pixels.shape[1]),
                       'width': int(pixels.shape[2]), 'fps': fps, 'mp4_bytes': out.stat().st_size}}


def checks(v2v_run: dict, control: dict) -> dict:
    memory, stages, control_stages = v2v_run['memory'], v2v_run['stages'], control['stages']
    if memory.get('allocated_before_vlm_gib') is None:
        return {'note': 'no GPU: memory not measured'}
    left = memory['allocated_after_vlm_freed_gib'] - memory['allocated_before_vlm_gib']
    peak_diff = stages['denoise']['peak_gib'] - control_stages['denoise']['peak_gib']
    start_diff = stages['denoise']['allocated_start_gib'] - control_stages['denoise']['allocated_start_gib']
    return {
        'vlm_weights_gib': memory['vlm_weights_gib'],
        'caption_peak_gib': stages['caption_1']['peak_gib'],
        'left_after_vlm_freed_gib': left,
        'denoise_peak_minus_control_gib': peak_diff,
        'denoise_start_minus_control_gib': start_diff,
        'vlm_freed': abs(left) < TOLERANCE_GIB,
        'denoise_peak_unaffected': abs(peak_diff) < TOLERANCE_GIB and abs(start_diff) < TOLERANCE_GIB,
        'vlm_visible': memory['vlm_weights_gib'] > 8 * TOLERANCE_GIB,
    }


def table(v2v_run: dict, control: dict) -> str:
    def gib(value):
        return 'n/a' if value is None else f'{value:.3f}'

    def stage(run, name, key):
        return gib(run['stages'].get(name, {}).get(key))

    memory = v2v_run['memory']
    rows = [('allocated before the VLM loads', gib(memory.get('allocated_before_vlm_gib')), '-'),
            ('VLM weights', gib(memory.get('vlm_weights_gib')), '-'),
            ('allocated with the VLM loaded', gib(memory.get('allocated_vlm_loaded_gib')), '-'),
            ('caption stage peak', stage(v2v_run, 'caption_1', 'peak_gib'), '-'),
            ('allocated after the VLM is freed', gib(memory.get('allocated_after_vlm_freed_gib')), '-'),
            ('reserved after the VLM is freed', gib(memory.get('reserved_after_vlm_freed_gib')), '-')]
    for name in ('text', 'denoise', 'decode'):
        rows.append((f'{name}: allocated at start', stage(v2v_run, name, 'allocated_start_gib'),
                     stage(control, name, 'allocated_start_gib')))
        rows.append((f'{name}: peak', stage(v2v_run, name, 'peak_gib'), stage(control, name, 'peak_gib')))
    lines = ['| GPU memory (GiB) | v2v-5B + VLM | ti2v-5B, no VLM |', '|---|---|---|']
    lines += [f'| {label} | {a} | {b} |' for label, a, b in rows]
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=None, help='output frames, 4n+1 (default 121)')
    parser.add_argument('--steps', type=int, default=2, help='denoising steps')
    parser.add_argument('--caption-tokens', type=int, default=16, help='tokens the random VLM generates')
    parser.add_argument('--smoke', action='store_true', help='toy sizes on the CPU: checks the script')
    parser.add_argument('--out', type=Path, default=None, help='output folder (default $OUT or bench/results)')
    args = parser.parse_args()

    device = bench_device(args.smoke)
    size, frames, (in_width, in_height, in_frames) = SMOKE if args.smoke else FULL
    frames = args.frames or frames
    import transformers

    from wan.modules.attention import resolve_backend
    results = {
        'benchmark': 'bench_v2v', 'date': datetime.datetime.now().isoformat(timespec='seconds'),
        # the command and the commit: added by write_result
        **environment(device), 'transformers': transformers.__version__, 'attention_backend': resolve_backend(device), 'smoke': args.smoke,
        'settings': {'size': size, 'frame_num': frames, 'sample_steps': args.steps,
                     'caption_tokens': args.caption_tokens,
                     'input_video': {'width': in_width, 'height': in_height, 'frames': in_frames}},
        'notes': 'random weights; load = random init of T5, VAE and DiT in GPU memory after the caption; '
                 'memory figures are torch.cuda.memory_allocated (GiB); the control is ti2v-5B with the '
                 "v2v run's prompt, conditioning frame and seed, without a VLM",
    }
    smoke_sizes = {'256*128': (256, 128)} if args.smoke else {}
    with tempfile.TemporaryDirectory(prefix='wan-bench-v2v-') as work, \
            mock.patch.dict(SIZE_CONFIGS, smoke_sizes), \
            mock.patch.dict(SUPPORTED_SIZES, {task: SUPPORTED_SIZES[task] + tuple(smoke_sizes)
                                              for task in ('v2v-5B', 'ti2v-5B')}):
        work = Path(work)
        results['vlm'] = build_vlm(work / 'internvl', SMOKE_VLM_TEXT if args.smoke else FULL_VLM_TEXT, device)
        results['allocated_after_vlm_build_gib'] = allocated()
        print(f"random InternVL: {results['vlm']['parameters'] / 1e9:.2f}e9 parameters, "
              f"{results['vlm']['folder_bytes'] / GiB:.2f} GiB on disk, built in "
              f"{results['vlm']['build_seconds']:.1f} s", flush=True)
        source = write_input_video(work / 'input.mp4', in_width, in_height, in_frames)
        ckpt = placeholder_checkpoint('ti2v-5B', work / 'ckpt')  # v2v-5B has the same files
        common = ['--size', size, '--frame_num', str(frames), '--sample_steps', str(args.steps),
                  '--ckpt_dir', str(ckpt), '--base_seed', '42']
        if not args.smoke:
            common += ['--offload_model', 'True', '--convert_model_dtype']

        RandomModels('ti2v-5B', device, args.smoke).install()
        out = work / 'v2v.mp4'
        argv = ['--task', 'v2v-5B', '--video', str(source), '--vlm_path', str(work / 'internvl'),
                '--prompt', PROMPT, '--save_file', str(out), *common]
        memory: dict = {}
        timer = run_cli(argv, memory, args.caption_tokens)
        v2v_run = run_result(argv, timer, memory, out)
        print(f"v2v-5B: {v2v_run['summary']}; output {v2v_run['output']}", flush=True)

        # the control: what v2v ran after its caption, without the VLM
        prompt = json.loads(video_io.sidecar_path(out).read_text())['prompt']
        image = work / 'last_frame.png'
        video_io.last_frame(source).save(image)
        RandomModels('ti2v-5B', device, args.smoke).install()
        out = work / 'control.mp4'
        argv = ['--task', 'ti2v-5B', '--image', str(image), '--prompt', prompt, '--save_file', str(out), *common]
        memory = {'allocated_before_run_gib': allocated()}
        control = run_result(argv, run_cli(argv, memory, args.caption_tokens), memory, out)
        print(f"ti2v-5B control: {control['summary']}; output {control['output']}", flush=True)

    results['runs'] = {'v2v': v2v_run, 'control': control}
    results['checks'] = checks(v2v_run, control)
    print(table(v2v_run, control))
    print('checks:', json.dumps(results['checks']))

    write_result(f"bench_v2v{'-smoke' if args.smoke else ''}", results, args.out)


if __name__ == '__main__':
    main()
