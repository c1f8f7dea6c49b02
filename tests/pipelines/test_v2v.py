"""wan/pipelines/v2v.py: colour drift/flicker figures, and a tiny end-to-end continuation run."""
import json

import numpy as np
import pytest
import torch

from tests.tiny.ckpt import write_task_checkpoint
from tests.tiny.vlm import build_tiny_internvl
from wan import cli
from wan.pipelines import v2v
from wan.utils import video_io


def test_match_colour_sets_the_statistics():
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(3, 4, 16, 16, generator=g) * 0.5 - 0.4)  # inside [-1, 1], dull and dark
    target_mean, target_std = torch.tensor([0.5, 0.4, 0.6]), torch.tensor([0.1, 0.12, 0.08])
    matched = v2v.match_colour(video, target_mean, target_std)
    mean, std = v2v.colour_stats(matched)
    torch.testing.assert_close(mean, target_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(std, target_std, rtol=0, atol=1e-5)
    assert v2v.drift(matched, target_mean, target_std) == {'mean_diff': [0.0] * 3, 'std_diff': [0.0] * 3}
    # the independent definition: population-free per-channel z-score, then the target's moments
    unit = (video + 1) / 2
    flat = unit.flatten(1)
    expected = (unit - flat.mean(1).view(3, 1, 1, 1)) / flat.std(1).view(3, 1, 1, 1)
    expected = expected * target_std.view(3, 1, 1, 1) + target_mean.view(3, 1, 1, 1)
    torch.testing.assert_close((matched + 1) / 2, expected.clamp(0, 1), rtol=0, atol=1e-6)


def test_seam_figures():
    frames = torch.zeros(3, 5, 8, 8)
    for k in range(5):
        frames[:, k] = -0.5 + 0.1 * k  # each frame 0.05 brighter in unit scale: 12.75 / 255 per step
    condition = frames[:, 0] - 0.2  # 0.1 darker than frame 0 in unit scale
    figures = v2v.seam_figures(condition, frames)
    assert figures['first_frame_error'] == pytest.approx(25.5, abs=1e-3)
    assert figures['seam_diff'] == pytest.approx(38.25, abs=1e-3)
    assert figures['within_diff'] == pytest.approx(12.75, abs=1e-3)
    assert figures['flicker_index'] == pytest.approx(3.0, abs=1e-3)


def test_continuation_end_to_end(tmp_path, monkeypatch, capsys):
    """v2v-14B on a tiny I2V-A14B checkpoint and a tiny InternVL: two segments, joined."""
    ckpt = write_task_checkpoint(tmp_path / 'ckpt', 'i2v-A14B')
    internvl = build_tiny_internvl(tmp_path / 'internvl')
    frames = torch.linspace(-0.6, 0.6, 9).view(1, -1, 1, 1).repeat(3, 1, 48, 48)
    frames[1] *= 0.5
    source = video_io.save_video(frames, tmp_path / 'input.mp4', fps=16)
    monkeypatch.setitem(cli.SIZE_CONFIGS, '64*64', (64, 64))  # a tiny area for the test
    monkeypatch.setitem(cli.SUPPORTED_SIZES, 'v2v-14B', ('64*64',))
    out = tmp_path / 'out' / 'cont.mp4'
    captions = []
    real_caption = v2v.caption_video
    monkeypatch.setattr(v2v, 'caption_video', lambda path, **kw: captions.append((path, kw))
                        or real_caption(path, **kw, max_new_tokens=8))

    argv = ['--task', 'v2v-A14B', '--video', str(source), '--ckpt_dir', str(ckpt), '--size', '64*64',
            '--frame_num', '5', '--sample_steps', '2', '--base_seed', '11', '--prompt', 'continue video',
            '--vlm_prompt', 'What happens next?', '--num_segments', '2', '--save_file', str(out)]
    assert cli.generate_main(argv + ['--vlm_path', str(tmp_path / 'no-vlm')]) == 2
    assert 'VLM folder not found' in capsys.readouterr().err and not list(out.parent.glob('*'))

    assert cli.generate_main(argv + ['--vlm_path', str(internvl)]) == 0
    seg1, seg2 = tmp_path / 'out' / 'cont_seg01.mp4', tmp_path / 'out' / 'cont_seg02.mp4'
    joined, fps = video_io.read_video(out)
    assert fps == 16.0 and joined.shape == (9, 64, 64, 3)  # 5 + 4: the repeated seam frame dropped
    # the joined file is encoded on its own, so it matches the segment files up to H.264 error
    expected = np.concatenate([video_io.read_video(seg1)[0], video_io.read_video(seg2)[0][1:]])
    assert np.abs(joined.astype(float) - expected).mean() < 3  # 0.46 observed

    # captions: of the input, then of segment 1; seeded from --base_seed; the question passed on
    assert [path for path, _ in captions] == [source, seg1]
    assert [kw['seed'] for _, kw in captions] == [11, 12]
    assert all(kw['question'] == 'What happens next?' for _, kw in captions)

    meta = json.loads(out.with_suffix('.json').read_text())
    assert meta == video_io.read_metadata(out)
    assert meta['num_segments'] == 2 and [s['seed'] for s in meta['segments']] == [11, 12]
    for record in meta['segments']:
        assert record['prompt'] == 'continue video ' + record['caption']
        assert set(record['seam']) == {'first_frame_error', 'seam_diff', 'within_diff', 'flicker_index'}
        assert max(map(abs, record['colour_drift_after_colour_match']['mean_diff'])) < 2.0
    assert meta['segments'][1]['conditioning'] == f'last frame of {seg1}'
    seg_meta = video_io.read_metadata(seg2)
    assert seg_meta['segment'] == 2 and seg_meta['caption'] == meta['segments'][1]['caption']
