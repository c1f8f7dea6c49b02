"""The shipped tiny model (models/ti2v-tiny) end to end on the CPU: the prompt's colour and direction
are what the pixels show, image mode keeps the given first frame, and the README's command makes a
real video in under a minute, all through the large models' loading, denoising, decoding and saving.

The folder is trained by `python -m wan.train.tiny` (bench/train_tiny.md); WAN_TINY_DIR overrides
where it is looked for. Without it every test here is skipped.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wan.configs import SIZE_CONFIGS, WAN_CONFIGS
from wan.data.synthetic import ClipSpecs, COLOUR_NAMES, DIRECTION_NAMES, SHAPES, caption, measure, render

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(os.environ.get('WAN_TINY_DIR', REPO / 'models' / 'ti2v-tiny'))
TASK, SIZE = 'ti2v-tiny', '128*128'
CFG = WAN_CONFIGS[TASK]

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / 'config.json').is_file(),
    reason=f'the tiny model is not at {MODEL_DIR}: train it with `python -m wan.train.tiny --out models` '
           '(bench/train_tiny.md) or set WAN_TINY_DIR')

# (colour, shape, direction, background): every colour and direction, seeds 0..9
PROMPTS = [('red', 'circle', 'left', 'blue'), ('yellow', 'square', 'right', 'black'),
           ('white', 'triangle', 'up', 'green'), ('blue', 'circle', 'down', 'yellow'),
           ('green', 'square', 'left', 'purple'), ('orange', 'triangle', 'right', 'white'),
           ('purple', 'circle', 'up', 'orange'), ('black', 'square', 'down', 'white'),
           ('red', 'triangle', 'right', 'green'), ('white', 'circle', 'left', 'red')]
README_PROMPT = caption('red', 'circle', 'left', 'blue')


def uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8, as the video writer converts."""
    from wan.utils.video_io import to_uint8_frames
    return to_uint8_frames(video)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255 ** 2 / max(mse, 1e-12))


@pytest.fixture(scope='module')
def pipe():
    from wan.pipelines.pipeline import VideoPipeline
    from wan.pipelines.placement import Placement
    return VideoPipeline.from_pretrained(TASK, MODEL_DIR, Placement(torch.device('cpu')))


def generate(pipe, prompt: str, seed: int, image: Image.Image | None = None) -> torch.Tensor:
    from wan.pipelines.pipeline import Request
    request = Request(prompt=prompt, size=SIZE_CONFIGS[SIZE], frame_num=CFG.frame_num,
                      sample_steps=CFG.sample_steps, sample_shift=CFG.sample_shift,
                      guide_scale=CFG.sample_guide_scale, seed=seed, image=image)
    return pipe.generate(request)


def test_prompts_steer_colour_and_direction(pipe):
    rows, correct = [], 0
    for seed, (colour, shape, direction, background) in enumerate(PROMPTS):
        video = generate(pipe, caption(colour, shape, direction, background), seed)
        assert video.shape == (3, CFG.frame_num, 128, 128)
        seen = measure(uint8_frames(video))
        ok = seen.colour == colour and seen.direction == direction
        correct += ok
        rows.append(f'seed {seed} {"ok  " if ok else "MISS"} asked {colour} {shape} {direction} on {background}; '
                    f'saw {seen.colour} on {seen.background} moving {seen.direction} '
                    f'{tuple(round(d) for d in seen.displacement)}')
    print('\n' + '\n'.join(rows))
    assert correct >= 8, f'{correct}/10 right:\n' + '\n'.join(rows)


def test_image_mode_keeps_the_first_frame_and_moves_as_asked(pipe):
    labels = ('yellow', 'square', 'right', 'purple')
    specs = ClipSpecs(colour=torch.tensor([COLOUR_NAMES.index(labels[0])]),
                      background=torch.tensor([COLOUR_NAMES.index(labels[3])]),
                      shape=torch.tensor([SHAPES.index(labels[1])]),
                      direction=torch.tensor([DIRECTION_NAMES.index(labels[2])]),
                      start=torch.tensor([[40.0, 60.0]]), travel=torch.tensor([[40.0, 0.0]]),
                      radius=torch.tensor([20.0]))
    first = uint8_frames(render(specs, frames=1, height=128, width=128)[0])[0]
    video = generate(pipe, caption(*labels), seed=0, image=Image.fromarray(first))
    frames = uint8_frames(video)
    value = psnr(frames[0], first)
    seen = measure(frames)
    print(f'\nimage mode: first-frame PSNR {value:.1f} dB; saw {seen.colour} on {seen.background} '
          f'moving {seen.direction} {tuple(round(d) for d in seen.displacement)}')
    assert value >= 26.0
    assert (seen.colour, seen.background, seen.direction) == ('yellow', 'purple', 'right')


def test_readme_command_makes_the_video(tmp_path):
    """The README's first command, with its defaults (checkpoint folder, size), on the CPU.

    Its time is a benchmark figure (bench/train_tiny.md), not asserted here."""
    from wan.utils.video_io import read_video
    save_file = tmp_path / 'red_circle.mp4'
    command = [sys.executable, 'generate.py', '--task', TASK, '--prompt', README_PROMPT, '--base_seed', '0',
               '--save_file', str(save_file)]
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    frames, fps = read_video(save_file)
    assert frames.shape == (CFG.frame_num, 128, 128, 3) and fps == CFG.sample_fps
    seen = measure(frames)
    assert (seen.colour, seen.direction) == ('red', 'left'), seen
