"""Video-to-video continuation (issue 5, spec 14): `--task v2v-14B|v2v-5B --video PATH`.

Segment i (seed = base_seed + i, as the fork's chaining script) continues the current video, which
is the input for i = 0 and the previous saved segment after that:
  1. a VLM (InternVL) describes the whole current video; it is loaded for that and freed before the
     DiT runs. Prompt = "<--prompt> <caption>" (a user prompt comes first), optionally extended;
  2. the exact decoded last frame of the current video conditions I2V (v2v-14B) or TI2V (v2v-5B);
  3. at the seam, colour drift against the input video (per-channel mean/std) and flicker (mean
     absolute frame difference across the seam against that inside the segment) are measured; the
     drift is corrected by matching the segment's colour statistics to the input's; the figures go
     into the sidecar JSON;
  4. the corrected segment is saved and becomes the current video.
One segment is written to --save_file. With --num_segments N > 1 the segments are written as
`<stem>_segNN.mp4` and joined into --save_file; each later segment drops its first frame, which
repeats the previous segment's last frame.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..configs import WAN_CONFIGS
from ..errors import UserError
from ..utils import video_io
from ..utils.vlm import DEFAULT_QUESTION, caption_video, frame_indices

log = logging.getLogger(__name__)

NUM_STAT_FRAMES = 16  # frames of the input sampled for its colour statistics


# ---------------------------------------------------------------------------------------------
# Colour drift and flicker. Videos are [3, F, H, W] in [-1, 1]; figures are in 0-255 units.

def to_unit(video: torch.Tensor) -> torch.Tensor:
    return (video.float().clamp(-1, 1) + 1) / 2


def colour_stats(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over all frames and pixels of a [3, F, H, W] video in [-1, 1]."""
    unit = to_unit(video).flatten(1)
    return unit.mean(dim=1), unit.std(dim=1)


def match_colour(video: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Shift and scale each channel so its mean/std over the whole video become `mean`/`std`."""
    unit = to_unit(video)
    own_mean, own_std = colour_stats(video)
    view = (3, 1, 1, 1)
    scale = (std.to(unit) / own_std.to(unit).clamp_min(1e-6)).view(view)
    matched = (unit - own_mean.to(unit).view(view)) * scale + mean.to(unit).view(view)
    return matched.clamp(0, 1) * 2 - 1


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((to_unit(a) - to_unit(b)).abs().mean() * 255)


def _round(values) -> list[float]:
    return [round(float(v) * 255, 3) for v in values]


def drift(video: torch.Tensor, ref_mean: torch.Tensor, ref_std: torch.Tensor) -> dict:
    """Colour statistics of `video` minus those of the reference, per channel (R, G, B)."""
    mean, std = colour_stats(video)
    return {'mean_diff': _round(mean.cpu() - ref_mean), 'std_diff': _round(std.cpu() - ref_std)}


def seam_figures(condition: torch.Tensor, segment: torch.Tensor) -> dict:
    """`condition` [3, H, W]: the previous last frame as the segment saw it; `segment` [3, F, H, W].

    first_frame_error: conditioning frame vs generated frame 0 (fidelity to the condition);
    seam_diff: conditioning frame vs frame 1, the frame after the seam in the joined video;
    within_diff: mean difference of consecutive frames inside the segment (from frame 1);
    flicker_index = seam_diff / within_diff (about 1 for a seamless join).
    """
    figures = {'first_frame_error': round(mean_abs_diff(condition, segment[:, 0]), 3)}
    if segment.shape[1] >= 3:
        seam = mean_abs_diff(condition, segment[:, 1])
        within = float(np.mean([mean_abs_diff(segment[:, k], segment[:, k + 1])
                                for k in range(1, segment.shape[1] - 1)]))
        figures.update(seam_diff=round(seam, 3), within_diff=round(within, 3),
                       flicker_index=round(seam / max(within, 1e-6), 3))
    return figures


def input_colour_stats(video_path: Path, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames = video_io.read_frames(video_path, sorted(set(frame_indices(num_frames, NUM_STAT_FRAMES))))
    unit = torch.from_numpy(frames).float().div(255).permute(3, 0, 1, 2)
    return colour_stats(unit * 2 - 1)


# ---------------------------------------------------------------------------------------------
# The run

def segment_paths(save_file: Path, num_segments: int) -> list[Path]:
    if num_segments == 1:
        return [save_file]
    return [save_file.with_name(f'{save_file.stem}_seg{i + 1:02d}{save_file.suffix}')
            for i in range(num_segments)]


def run(args: argparse.Namespace) -> int:
    """Continue `args.video` `args.num_segments` times; returns the exit code (0)."""
    from ..cli import FinishedWorkSaved, _save_fallback, build_pipeline, default_save_file, guide_pair, sample, world
    from .placement import default_device
    from .timing import StageTimer

    rank, world_size, local_rank = world()
    if world_size > 1:
        raise UserError('multi-GPU v2v runs are not implemented yet; run one process')
    num_segments = args.num_segments  # checked, as the VLM folder, by the command line's validation
    question = args.vlm_prompt or DEFAULT_QUESTION
    task, cfg = args.task, WAN_CONFIGS[args.task]
    device = default_device(local_rank)
    vlm_device = args.vlm_device or device
    input_video = Path(args.video)

    num_input_frames = video_io.count_frames(input_video)  # also reports an unreadable input
    ref_mean, ref_std = input_colour_stats(input_video, num_input_frames)
    log.info('Input %s: %d frames, colour mean %s std %s', input_video, num_input_frames,
             _round(ref_mean), _round(ref_std))

    timer = StageTimer(device)
    pipe, save_file, paths = None, None, None
    current, num_frames, segments_u8, records = input_video, num_input_frames, [], []
    for i in range(num_segments):
        seed = args.base_seed + i
        with timer.stage(f'caption_{i + 1}'):
            caption = caption_video(current, vlm_path=args.vlm_path, device=vlm_device,
                                    question=question, seed=seed, num_video_frames=num_frames)
        prompt = f'{args.prompt} {caption}' if args.prompt else caption
        condition_image = Image.fromarray(video_io.read_frames(current, [num_frames - 1])[0], 'RGB')
        if args.use_prompt_extend:
            from ..utils.prompt_extend import extend_prompt
            prompt = extend_prompt(prompt, method=args.prompt_extend_method, model=args.prompt_extend_model,
                                   task=task, target_lang=args.prompt_extend_target_lang,
                                   image=condition_image, seed=seed)
        log.info('Segment %d/%d, seed %d, prompt: %s', i + 1, num_segments, seed, prompt)
        if save_file is None:
            save_file = Path(args.save_file or default_save_file(task, args.size, args.ulysses_size, prompt))
            paths = segment_paths(save_file, num_segments)
        if pipe is None:
            pipe = build_pipeline(args, timer)  # after the first caption: the VLM is already freed

        latents, inputs = sample(pipe, args, prompt, seed, condition_image, rank)
        try:
            video = pipe.decode(latents)
        except Exception as exc:
            where = _save_fallback(latents, paths[i], '.latents.pt')
            raise FinishedWorkSaved(f'decoding segment {i + 1} failed ({type(exc).__name__}: {exc}); '
                                    f'its latents are in {where}') from exc
        del latents

        condition = inputs.condition.clamp(-1, 1).to(video.device)  # the frame as the model saw it
        record = {'segment': i + 1, 'seed': seed, 'caption': caption, 'prompt': prompt,
                  'conditioning': f'last frame of {current}',
                  'seam': seam_figures(condition, video),
                  'colour_drift': drift(video, ref_mean, ref_std)}
        video = match_colour(video, ref_mean, ref_std)
        record['seam_after_colour_match'] = seam_figures(condition, video)
        record['colour_drift_after_colour_match'] = drift(video, ref_mean, ref_std)
        log.info('Segment %d seam %s, colour drift %s', i + 1, record['seam'], record['colour_drift'])

        frames = video_io.to_uint8_frames(video)
        del video
        metadata = {'task': task, 'input_video': str(input_video), 'num_segments': num_segments,
                    'size': f'{inputs.size[0]}*{inputs.size[1]}', 'frame_num': args.frame_num,
                    'sample_steps': args.sample_steps, 'sample_solver': args.sample_solver,
                    'sample_shift': args.sample_shift,
                    'sample_guide_scale': list(guide_pair(args.sample_guide_scale)),
                    'vlm_path': str(args.vlm_path), 'vlm_question': question, 'color_match': True,
                    'input_colour_mean': _round(ref_mean), 'input_colour_std': _round(ref_std), **record}
        with timer.stage(f'save_{i + 1}'):
            video_io.save_frames(frames, paths[i], fps=cfg.sample_fps, metadata=metadata)
        record['file'] = str(paths[i])
        records.append(record)
        segments_u8.append(frames if i == 0 else frames[1:])  # frame 0 repeats the previous last frame
        current, num_frames = paths[i], len(frames)

    if num_segments > 1:
        metadata = {'task': task, 'input_video': str(input_video), 'num_segments': num_segments,
                    'color_match': True, 'input_colour_mean': _round(ref_mean),
                    'input_colour_std': _round(ref_std), 'segments': records}
        with timer.stage('save_joined'):
            video_io.save_frames(np.concatenate(segments_u8), save_file, fps=cfg.sample_fps,
                                 metadata=metadata)
    log.info('Done: %s (%s)', save_file, timer.summary())
    return 0
