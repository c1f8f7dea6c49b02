"""`torchrun --nproc_per_node=2 generate.py ...` on CPU/gloo: the launch a user types, end to end.

Ulysses 2 + DiT FSDP + T5 FSDP with a random seed: rank 0 alone writes the video, and it equals a
one-process run with the seed recorded in the output (so every rank sampled with rank 0's seed).
torchrun gives each process one CPU thread; the one-process run uses one thread too, since fp32
matmuls round differently with other thread counts (and the tiny random VAE amplifies that).
"""
import subprocess
import sys

import numpy as np
import torch

from tests.distributed.conftest import REPO
from tests.tiny.ckpt import write_task_checkpoint
from wan import cli
from wan.utils.video_io import read_metadata, read_video

ARGS = ['--task', 't2v-A14B', '--size', '832*480', '--frame_num', '1', '--sample_steps', '2',
        '--prompt', 'a red circle moves left.']


def test_two_process_launch_writes_one_video_equal_to_one_process(tmp_path, capsys):
    ckpt = write_task_checkpoint(tmp_path / 'ckpt', 't2v-A14B')
    out_dir = tmp_path / 'out'
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               'generate.py', *ARGS, '--ckpt_dir', str(ckpt), '--ulysses_size', '2', '--dit_fsdp', '--t5_fsdp',
               '--base_seed', '-1', '--save_file', str(out_dir / 'two.mp4')]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ['two.json', 'two.mp4']  # rank 0 only, once
    seed = read_metadata(out_dir / 'two.mp4')['seed']

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = cli.generate_main([*ARGS, '--ckpt_dir', str(ckpt), '--base_seed', str(seed),
                                  '--save_file', str(tmp_path / 'one.mp4')])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr()
    two, _ = read_video(out_dir / 'two.mp4')
    one, _ = read_video(tmp_path / 'one.mp4')
    assert two.shape == one.shape == (1, 480, 832, 3)
    assert one.std() > 5  # a real picture, not a constant
    np.testing.assert_array_equal(two, one)
