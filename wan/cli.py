"""Command line: `wan generate ...` or `python generate.py ...`, with the reference's flags and defaults.

One GPU:
    python generate.py --task t2v-A14B --size 1280*720 --ckpt_dir ./models/Wan2.2-T2V-A14B \\
        --offload_model True --convert_model_dtype --prompt "Two cats boxing on a stage."
    wan generate --task i2v-A14B --size 832*480 --image photo.jpg --prompt "The cat turns its head."
    wan generate --task ti2v-5B --prompt "..."      # --size defaults to 1280*704 for ti2v-5B

Several GPUs (docs/multi_gpu.md):
    torchrun --nproc_per_node=8 generate.py --task t2v-A14B --ckpt_dir ./models/Wan2.2-T2V-A14B \\
        --dit_fsdp --t5_fsdp --ulysses_size 8 --prompt "..."

Flow: parse -> validate (every cheap check, nothing loaded yet) -> prompt extension (rank 0) ->
pipeline -> sample -> decode -> save (rank 0). A user mistake prints one line and exits with code 2;
Ctrl-C during sampling exits with 130 and writes nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .configs import SIZE_CONFIGS, SUPPORTED_SIZES, TASK_ALIASES, WAN_CONFIGS
from .errors import UserError

log = logging.getLogger('wan')

EXAMPLE_PROMPT = {
    't2v-A14B': 'Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a '
                'spotlighted stage.',
    'i2v-A14B': 'Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The '
                'fluffy-furred feline gazes directly at the camera with a relaxed expression. Blurred beach '
                'scenery forms the background featuring crystal-clear waters, distant green hills, and a blue '
                'sky dotted with white clouds. The cat assumes a naturally relaxed posture, as if savoring the '
                "sea breeze and warm sunlight. A close-up shot highlights the feline's intricate details and "
                'the refreshing atmosphere of the seaside.',
}
EXAMPLE_PROMPT['ti2v-5B'] = EXAMPLE_PROMPT['t2v-A14B']
EXAMPLE_PROMPT['ti2v-tiny'] = 'a red circle moves left on a blue background'  # the bundled model's vocabulary
EXAMPLE_IMAGE = {'i2v-A14B': 'examples/i2v_input.JPG'}

DEFAULT_CKPT_DIRS = {
    't2v-A14B': './models/Wan2.2-T2V-A14B',
    'i2v-A14B': './models/Wan2.2-I2V-A14B',
    'ti2v-5B': './models/Wan2.2-TI2V-5B',
    'v2v-14B': './models/Wan2.2-I2V-A14B',
    'v2v-5B': './models/Wan2.2-TI2V-5B',
    's2v-14B': './models/Wan2.2-S2V-14B',
    'animate-14B': './models/Wan2.2-Animate-14B',
    'ti2v-tiny': './models/ti2v-tiny',  # shipped with the project
}
DEFAULT_SIZE = '1280*720'  # the reference's default; a task without it takes its widest size (ti2v: 1280*704)

V2V_TASKS = ('v2v-14B', 'v2v-5B')
VIDEO_TASKS = ('t2v-A14B', 'i2v-A14B', 'ti2v-5B', 'ti2v-tiny')
IMAGE_TASKS = ('i2v-A14B', 'ti2v-5B', 'ti2v-tiny')


def default_size(task: str) -> str:
    sizes = SUPPORTED_SIZES[task]
    return DEFAULT_SIZE if DEFAULT_SIZE in sizes else max(sizes, key=lambda s: SIZE_CONFIGS[s])


def str2bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ('yes', 'true', 't', 'y', '1'):
        return True
    if lowered in ('no', 'false', 'f', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError('Boolean value expected (True/False)')


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit code 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser(prog: str = 'generate.py') -> argparse.ArgumentParser:
    p = _OneLineParser(prog=prog, description='Generate a video with Wan2.2.')
    tasks = list(WAN_CONFIGS) + list(TASK_ALIASES)
    p.add_argument('--task', type=str, default='t2v-A14B', choices=tasks, help='The task to run.')
    p.add_argument('--size', type=str, default=None, choices=list(SIZE_CONFIGS),
                   help='width*height of the video; for image-conditioned tasks only its area counts. '
                        f'Default {DEFAULT_SIZE}, or the widest size of a task without it (ti2v-5B: 1280*704).')
    p.add_argument('--frame_num', type=int, default=None,
                   help='Number of frames, 4n+1 (default: the task config, 81 or 121).')
    p.add_argument('--ckpt_dir', type=str, default=None,
                   help='Checkpoint folder (default ./models/Wan2.2-<T2V-A14B|I2V-A14B|TI2V-5B> by task).')
    p.add_argument('--offload_model', type=str2bool, default=None,
                   help='Move models to the CPU when not in use (default: True on one GPU).')
    p.add_argument('--ulysses_size', type=int, default=1, help='Ulysses sequence-parallel degree of the DiT.')
    p.add_argument('--t5_fsdp', action='store_true', default=False, help='Shard T5 with FSDP.')
    p.add_argument('--t5_cpu', action='store_true', default=False, help='Run T5 on the CPU.')
    p.add_argument('--dit_fsdp', action='store_true', default=False, help='Shard the DiT with FSDP.')
    p.add_argument('--cfg_parallel', action='store_true', default=False,
                   help='Run the two guidance passes on two halves of the GPUs (not in the reference).')
    p.add_argument('--save_file', type=str, default=None, help='Output .mp4 (default: a name from the prompt).')
    p.add_argument('--prompt', type=str, default=None, help='The text prompt.')
    p.add_argument('--use_prompt_extend', action='store_true', default=False, help='Rewrite the prompt first.')
    p.add_argument('--prompt_extend_method', type=str, default='local_qwen', choices=['dashscope', 'local_qwen'])
    p.add_argument('--prompt_extend_model', type=str, default=None, help='Prompt extension model.')
    p.add_argument('--prompt_extend_target_lang', type=str, default='zh', choices=['zh', 'en'])
    p.add_argument('--base_seed', type=int, default=-1, help='Seed; < 0 picks a random one.')
    p.add_argument('--image', type=str, default=None, help='Conditioning image (i2v; switches ti2v to image mode).')
    p.add_argument('--sample_solver', type=str, default='unipc', choices=['unipc', 'dpm++'])
    p.add_argument('--sample_steps', type=int, default=None, help='Sampling steps (default: task config).')
    p.add_argument('--sample_shift', type=float, default=None, help='Flow shift (default: task config).')
    p.add_argument('--sample_guide_scale', type=float, default=None,
                   help='Guidance scale; one value for both A14B experts (default: task config).')
    p.add_argument('--convert_model_dtype', action='store_true', default=False, help='Cast the DiT to bf16.')
    p.add_argument('--vae_dtype', choices=['fp32', 'bf16'], default='fp32',
                   help='VAE precision: fp32 as the reference, or bf16 (about 1.9x faster decode in half '
                        'the memory, within bf16 rounding; not in the reference).')
    p.add_argument('--compile', action='store_true', default=False,
                   help='torch.compile each DiT block (faster steps after a one-off compile; not in the reference).')
    # animate-14B
    p.add_argument('--src_root_path', type=str, default=None, help='animate: preprocessing output folder.')
    p.add_argument('--refert_num', type=int, default=77, help='animate: frames carried between clips (1 or 5).')
    p.add_argument('--replace_flag', action='store_true', default=False, help='animate: replacement mode.')
    p.add_argument('--use_relighting_lora', action='store_true', default=False, help='animate: relighting LoRA.')
    # s2v-14B
    p.add_argument('--num_clip', type=int, default=None, help='s2v: number of clips.')
    p.add_argument('--audio', type=str, default=None, help='s2v: audio file.')
    p.add_argument('--enable_tts', action='store_true', default=False, help='s2v: speech from CosyVoice.')
    p.add_argument('--tts_prompt_audio', type=str, default=None, help='s2v: TTS voice sample.')
    p.add_argument('--tts_prompt_text', type=str, default=None, help='s2v: text of the voice sample.')
    p.add_argument('--tts_text', type=str, default=None, help='s2v: text to speak.')
    p.add_argument('--pose_video', type=str, default=None, help='s2v: pose video.')
    p.add_argument('--start_from_ref', action='store_true', default=False, help='s2v: start from the image.')
    p.add_argument('--infer_frames', type=int, default=80, help='s2v: frames per clip (multiple of 4).')
    # v2v-14B / v2v-5B
    p.add_argument('--video', type=str, default=None, help='v2v: the video to continue.')
    p.add_argument('--vlm_path', type=str, default='./models/InternVL3_5-8B', help='v2v: captioning VLM.')
    p.add_argument('--vlm_device', type=str, default=None, help='v2v: device of the VLM.')
    p.add_argument('--vlm_prompt', type=str, default=None, help='v2v: question asked to the VLM.')
    p.add_argument('--num_segments', type=int, default=1, help='v2v: continuation segments, each continuing the previous one.')
    return p


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment."""
    env = os.environ
    return int(env.get('RANK', 0)), int(env.get('WORLD_SIZE', 1)), int(env.get('LOCAL_RANK', 0))


def default_save_file(task: str, size: str, ulysses_size: int, prompt: str, now: datetime | None = None) -> str:
    """The reference's name: task_size_ulysses_prompt[:50]_YYYYmmdd_HHMMSS.mp4 (spec 7.6)."""
    stamp = (now or datetime.now()).strftime('%Y%m%d_%H%M%S')
    formatted_prompt = prompt.replace(' ', '_').replace('/', '_')[:50]
    formatted_size = size.replace('*', 'x') if sys.platform == 'win32' else size
    return f'{task}_{formatted_size}_{ulysses_size}_{formatted_prompt}_{stamp}.mp4'


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.wan-write-test-'):
            pass
    except OSError as exc:
        raise UserError(f'output folder {folder} is not writable ({exc.strerror or exc}); '
                        'pass --save_file in a writable folder') from exc


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults and check everything cheap, before any model loads (spec 9.2)."""
    from .pipelines.components import check_checkpoint_dir

    args.task = TASK_ALIASES.get(args.task, args.task)
    if args.task not in VIDEO_TASKS + V2V_TASKS:
        raise UserError(f'--task {args.task} is not implemented yet '
                        f'(available: {", ".join(VIDEO_TASKS + V2V_TASKS)})')
    cfg = WAN_CONFIGS[args.task]
    _fill_defaults(args, cfg)
    _check_sampling(args)
    _check_parallel(args, cfg)
    _check_output(args)
    check_checkpoint_dir(cfg, args.ckpt_dir, args.task)
    _check_inputs(args)
    if args.base_seed < 0:
        args.base_seed = random.randint(0, sys.maxsize)
    return args


def _fill_defaults(args: argparse.Namespace, cfg) -> None:
    task = args.task
    args.size = args.size or default_size(task)
    args.ckpt_dir = args.ckpt_dir or DEFAULT_CKPT_DIRS.get(task)
    if args.ckpt_dir is None:
        raise UserError(f'{task} has no default checkpoint folder; pass --ckpt_dir')
    if args.prompt is None:
        args.prompt = EXAMPLE_PROMPT.get(task)
        if args.prompt is None and task not in V2V_TASKS:
            raise UserError(f'{task} has no example prompt; pass --prompt')
    args.image = args.image or EXAMPLE_IMAGE.get(task)
    args.sample_steps = cfg.sample_steps if args.sample_steps is None else args.sample_steps
    args.sample_shift = cfg.sample_shift if args.sample_shift is None else args.sample_shift
    args.sample_guide_scale = cfg.sample_guide_scale if args.sample_guide_scale is None else args.sample_guide_scale
    args.frame_num = cfg.frame_num if args.frame_num is None else args.frame_num
    if args.offload_model is None:  # the reference's auto-rule: offload on one GPU
        args.offload_model = world()[1] == 1


def _check_sampling(args: argparse.Namespace) -> None:
    if args.size not in SUPPORTED_SIZES[args.task]:
        raise UserError(f'size {args.size} is not supported by {args.task}; use --size '
                        f'{" or ".join(SUPPORTED_SIZES[args.task])}')
    if args.frame_num < 1 or (args.frame_num - 1) % 4:
        lower = max(1, (args.frame_num - 1) // 4 * 4 + 1)
        raise UserError(f'--frame_num {args.frame_num} is not 4n+1; use {lower} or {lower + 4}')
    if args.sample_steps < 1:
        raise UserError(f'--sample_steps {args.sample_steps} must be at least 1')


def _check_parallel(args: argparse.Namespace, cfg) -> None:
    world_size = world()[1]
    if args.ulysses_size < 1:
        raise UserError(f'--ulysses_size {args.ulysses_size} must be at least 1')
    if cfg.num_heads % args.ulysses_size:  # the reference refuses; the all-to-all pads the heads instead
        padded = -(-cfg.num_heads // args.ulysses_size) * args.ulysses_size
        divisors = [d for d in range(1, cfg.num_heads + 1) if cfg.num_heads % d == 0]
        log.warning('--ulysses_size %d does not divide the %d attention heads of %s: padded to %d heads '
                    '(%.0f %% more attention work); %s divide them', args.ulysses_size, cfg.num_heads,
                    args.task, padded, 100 * (padded / cfg.num_heads - 1), ', '.join(map(str, divisors)))
    if world_size == 1 and (args.t5_fsdp or args.dit_fsdp):
        raise UserError('--t5_fsdp/--dit_fsdp need a multi-GPU launch (torchrun --nproc_per_node=N generate.py ...)')
    if args.t5_fsdp and args.t5_cpu:
        raise UserError('--t5_fsdp and --t5_cpu exclude each other: drop one')
    if args.offload_model and (args.t5_fsdp or args.dit_fsdp):
        raise UserError('--offload_model True cannot move FSDP-sharded models; pass --offload_model False')
    degree = args.ulysses_size * (2 if args.cfg_parallel else 1)
    if degree != 1 and degree != world_size:
        flags = f'--ulysses_size {args.ulysses_size}' + (' with --cfg_parallel' if args.cfg_parallel else '')
        raise UserError(f'{flags} needs a launch with {degree} processes, this one has {world_size} '
                        f'(torchrun --nproc_per_node={degree} generate.py ...)')


def _check_output(args: argparse.Namespace) -> None:
    if args.save_file is not None:
        if Path(args.save_file).suffix.lower() != '.mp4':
            raise UserError(f'--save_file {args.save_file} must end with .mp4')
        _check_writable(Path(args.save_file).resolve().parent)
    elif world()[0] == 0:
        _check_writable(Path.cwd())  # the default name goes into the current folder


def _check_inputs(args: argparse.Namespace) -> None:
    """Open the conditioning image now (a missing or broken file is a one-line error, not a traceback later)."""
    from .pipelines.images import load_image

    args.image_data = None
    if args.task in IMAGE_TASKS and args.image is not None:
        args.image_data = load_image(args.image)
    elif args.image is not None:
        log.warning('--image is ignored by %s', args.task)
    if args.task in V2V_TASKS:
        if args.video is None or not Path(args.video).is_file():
            raise UserError(f'input video not found: {args.video} (pass an existing file with --video)')
        if args.num_segments < 1:
            raise UserError(f'--num_segments {args.num_segments} must be at least 1')
        from .utils.vlm import check_vlm_folder
        check_vlm_folder(args.vlm_path)


def guide_pair(guide_scale: float | tuple[float, float]) -> tuple[float, float]:
    """(low-noise, high-noise) scales; a single value applies to both experts (spec 15.20)."""
    if isinstance(guide_scale, (int, float)):
        return float(guide_scale), float(guide_scale)
    low, high = guide_scale
    return float(low), float(high)


@contextlib.contextmanager
def process_group(args: argparse.Namespace):
    """Yield None in a single process; under torchrun join the group, yield a wan.distributed.Parallel,
    make a failure on any rank stop every rank, and leave the group at the end."""
    if world()[1] == 1:
        yield None
        return
    from .distributed import Parallel, ParallelConfig, failing_together, finish, init_distributed
    device = init_distributed()
    with failing_together():
        yield Parallel(ParallelConfig(ulysses_size=args.ulysses_size, cfg_parallel=args.cfg_parallel,
                                      dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp), device)
    finish()


def build_pipeline(args: argparse.Namespace, timer, parallel=None):
    """The pipeline for validated `args`: device, offload, T5 and dtype flags; `parallel` under torchrun."""
    import torch

    from .pipelines.pipeline import VideoPipeline
    from .pipelines.placement import Placement, default_device

    device = parallel.device if parallel is not None else default_device(world()[2])
    # one process keeps DiT weights on the CPU until used; a multi-process run places them once
    placement = Placement(device, offload_model=args.offload_model, t5_cpu=args.t5_cpu,
                          init_on_cpu=parallel is None)
    cfg = WAN_CONFIGS[args.task]
    # bf16 autocast on the GPU as the reference; fp32 on the CPU unless the weights are cast to bf16
    autocast_dtype = cfg.param_dtype if device.type == 'cuda' or args.convert_model_dtype else None
    return VideoPipeline.from_pretrained(args.task, args.ckpt_dir, placement,
                                         convert_model_dtype=args.convert_model_dtype,
                                         autocast_dtype=autocast_dtype, timer=timer, parallel=parallel,
                                         compile_dit=args.compile,
                                         vae_dtype={'fp32': torch.float32, 'bf16': torch.bfloat16}[args.vae_dtype])


def _fallback_path(save_file: Path, suffix: str) -> Path:
    """Next to the intended output, or in the temp folder when that folder refuses."""
    candidate = save_file.with_suffix(suffix)
    try:
        _check_writable(candidate.parent)
        return candidate
    except UserError:
        return Path(tempfile.gettempdir()) / candidate.name


def _save_fallback(tensor, save_file: Path, suffix: str) -> Path:
    import torch
    path = _fallback_path(save_file, suffix)
    torch.save(tensor.detach().cpu(), path)
    return path


class FinishedWorkSaved(Exception):
    """Decoding or saving failed at the end of a run; the finished work was written to a fallback file."""


@dataclass
class GenerationReport:
    save_file: Path
    seed: int
    prompt: str
    metadata: dict
    timer: object = field(repr=False)


def extend_prompt_on_rank0(args: argparse.Namespace) -> str:
    """--use_prompt_extend: rewrite the prompt on rank 0 (falls back to the original on failure)."""
    if not args.use_prompt_extend:
        return args.prompt
    prompt = None
    if world()[0] == 0:
        from .utils.prompt_extend import extend_prompt
        prompt = extend_prompt(args.prompt, method=args.prompt_extend_method, model=args.prompt_extend_model,
                               task=args.task, target_lang=args.prompt_extend_target_lang,
                               image=args.image_data, seed=args.base_seed)
        log.info('Extended prompt: %s', prompt)
    return _broadcast(prompt)


def _broadcast(obj):
    """Rank 0's value on every rank (the identity in one process)."""
    if world()[1] == 1:
        return obj
    from .distributed import broadcast_object
    return broadcast_object(obj)


def output_metadata(args: argparse.Namespace, prompt: str, size: tuple[int, int]) -> dict:
    """What goes into the mp4's metadata and its sidecar JSON; `size` is the output (width, height)."""
    low, high = guide_pair(args.sample_guide_scale)
    return {'task': args.task, 'prompt': prompt, 'seed': args.base_seed, 'size': f'{size[0]}*{size[1]}',
            'frame_num': args.frame_num, 'sample_steps': args.sample_steps, 'sample_solver': args.sample_solver,
            'sample_shift': args.sample_shift, 'sample_guide_scale': [low, high],
            'image': args.image if getattr(args, 'image_data', None) is not None else None}


def decode_and_save(pipe, latents, save_file: Path, fps: int, metadata: dict) -> Path:
    """Decode and write the mp4, encoding each decoded chunk while the next one decodes; if either
    fails, the finished work goes to a fallback file."""
    import torch

    from .utils.video_io import VideoWriter, to_uint8_frames
    writer = VideoWriter(save_file, fps=fps, metadata=metadata)
    log.info('Decoding and saving the video to %s', save_file)
    try:
        video = pipe.decode(latents, on_frames=lambda frames: writer.write(to_uint8_frames(frames)))
    except (Exception, KeyboardInterrupt) as exc:  # never lose the sampled latents
        writer.abort()
        where = _save_fallback(latents, save_file, '.latents.pt')
        raise FinishedWorkSaved(f'decoding failed ({type(exc).__name__}: {exc}); the sampled latents '
                                f'([C, T, h, w], torch.load) are in {where}') from exc
    try:
        with pipe.timer.stage('save'):  # what encoding still needs once decoding is done
            return writer.close()
    except (Exception, KeyboardInterrupt) as exc:  # never lose the decoded frames
        writer.abort()
        where = _save_fallback(torch.from_numpy(to_uint8_frames(video)), save_file, '.frames.pt')
        raise FinishedWorkSaved(f'saving {save_file} failed ({type(exc).__name__}: {exc}); the frames '
                                f'(uint8 [T, H, W, 3], torch.load) are in {where}') from exc


def sample(pipe, args: argparse.Namespace, prompt: str, seed: int, image, rank: int):
    """One request from validated `args` through `pipe`, a progress bar on rank 0; (latents, inputs)."""
    from .pipelines.pipeline import Request
    from .pipelines.progress import ProgressBar

    request = Request(prompt=prompt, size=SIZE_CONFIGS[args.size], frame_num=args.frame_num,
                      sample_steps=args.sample_steps, sample_shift=args.sample_shift,
                      guide_scale=guide_pair(args.sample_guide_scale), seed=seed,
                      image=image, sample_solver=args.sample_solver)
    bar = ProgressBar(args.sample_steps, disable=rank != 0)
    try:
        return pipe.sample(request, callback=bar)
    finally:
        bar.close()


def run_video(args: argparse.Namespace, parallel=None) -> GenerationReport:
    """t2v-A14B, i2v-A14B, ti2v-5B from validated args; rank 0 writes the mp4 and reports where."""
    from .pipelines.placement import default_device
    from .pipelines.timing import StageTimer

    rank, _, local_rank = world()
    args.base_seed = _broadcast(args.base_seed)
    prompt = extend_prompt_on_rank0(args)
    timer = StageTimer(parallel.device if parallel is not None else default_device(local_rank))
    pipe = build_pipeline(args, timer, parallel)
    log.info('Generating %s %s, %d frames, %d steps, seed %d', args.task, args.size, args.frame_num,
             args.sample_steps, args.base_seed)
    latents, inputs = sample(pipe, args, prompt, args.base_seed, args.image_data, rank)

    save_file = Path(args.save_file or default_save_file(args.task, args.size, args.ulysses_size, prompt))
    metadata = output_metadata(args, prompt, inputs.size)
    if rank == 0:
        save_file = decode_and_save(pipe, latents, save_file, WAN_CONFIGS[args.task].sample_fps, metadata)
        log.info('Done: %s (%s)', save_file, timer.summary())
    return GenerationReport(save_file, args.base_seed, prompt, metadata, timer)


def _dispatch(args: argparse.Namespace) -> int:
    if args.task in V2V_TASKS:
        from .pipelines import v2v
        return v2v.run(args)
    with process_group(args) as parallel:
        run_video(args, parallel)
    return 0


def _setup_logging() -> None:
    rank = world()[0]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('[%(asctime)s] %(levelname)s: %(message)s'))
    log.handlers = [handler]
    log.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    log.propagate = False


def generate_main(argv: list[str] | None = None, prog: str = 'generate.py') -> int:
    """`python generate.py [flags]`: returns the exit code."""
    from .pipelines.denoise import GenerationInterrupted

    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    _setup_logging()
    try:
        return _dispatch(validate(args))
    except UserError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except (GenerationInterrupted, KeyboardInterrupt) as exc:
        what = str(exc).capitalize() if isinstance(exc, GenerationInterrupted) else 'Interrupted'
        print(f'{what}; nothing was saved.', file=sys.stderr)
        return 130
    except FinishedWorkSaved as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1


COMMANDS = {'generate': generate_main}


def main(argv: list[str] | None = None) -> int:
    """The `wan` console command: `wan generate [flags]` (see `wan generate --help`)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f'usage: wan {{{",".join(COMMANDS)}}} [flags]   (wan generate --help)', file=sys.stderr)
        return 0 if argv[:1] in (['-h'], ['--help']) else 2
    return COMMANDS[argv[0]](argv[1:], prog=f'wan {argv[0]}')
