"""wan/pipelines/v2v.py: colour drift/flicker figures, and a tiny end-to-end continuation run."""
import json
import struct
import subprocess

import numpy as np
import pytest
import torch

from tests.tiny.ckpt import tiny_checkpoints  # noqa: F401 (a fixture)
from tests.tiny.vlm import build_tiny_internvl
from wan import cli
from wan.pipelines import v2v
from wan.utils import video_io


@pytest.fixture(scope='module')
def tiny_internvl(tmp_path_factory):
    return build_tiny_internvl(tmp_path_factory.mktemp('internvl'))


@pytest.fixture
def tiny_v2v(monkeypatch, tmp_path, tiny_checkpoints, tiny_internvl):  # noqa: F811
    """A 9-frame 48x48 input video and the CLI flags of a tiny v2v-14B run at 64*64; captions are
    recorded and kept to 8 tokens."""
    frames = torch.linspace(-0.6, 0.6, 9).view(1, -1, 1, 1).repeat(3, 1, 48, 48)
    frames[1] *= 0.5
    source = video_io.save_video(frames, tmp_path / 'input.mp4', fps=16)
    monkeypatch.setitem(cli.SIZE_CONFIGS, '64*64', (64, 64))  # a tiny area for the test
    monkeypatch.setitem(cli.SUPPORTED_SIZES, 'v2v-14B', ('64*64',))
    captions = []
    real_caption = v2v.caption_video
    monkeypatch.setattr(v2v, 'caption_video', lambda path, **kw: captions.append((path, kw))
                        or real_caption(path, **kw, max_new_tokens=8))
    argv = ['--task', 'v2v-A14B', '--video', str(source), '--ckpt_dir', str(tiny_checkpoints('i2v-A14B')),
            '--size', '64*64', '--frame_num', '5', '--sample_steps', '2', '--base_seed', '11',
            '--prompt', 'continue video', '--vlm_prompt', 'What happens next?']
    return source, argv, captions


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


def test_continuation_end_to_end(tmp_path, tiny_v2v, tiny_internvl, capsys):
    """v2v-14B on a tiny I2V-A14B checkpoint and a tiny InternVL: two segments, joined."""
    source, argv, captions = tiny_v2v
    internvl = tiny_internvl
    out = tmp_path / 'out' / 'cont.mp4'
    argv = argv + ['--num_segments', '2', '--save_file', str(out)]
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


def test_three_segments_chain(tmp_path, tiny_v2v, tiny_internvl):
    """--num_segments 3: three segment files, one joined video of 5 + 4 + 4 frames, seam figures per seam."""
    source, argv, captions = tiny_v2v
    out = tmp_path / 'out' / 'chain.mp4'
    argv += ['--num_segments', '3', '--save_file', str(out), '--vlm_path', str(tiny_internvl)]
    assert cli.generate_main(argv) == 0

    segments = [tmp_path / 'out' / f'chain_seg0{i}.mp4' for i in (1, 2, 3)]
    seg_frames = [video_io.read_video(path)[0] for path in segments]
    assert [frames.shape for frames in seg_frames] == [(5, 64, 64, 3)] * 3
    joined, fps = video_io.read_video(out)
    assert fps == 16.0 and joined.shape == (13, 64, 64, 3)
    expected = np.concatenate([seg_frames[0], seg_frames[1][1:], seg_frames[2][1:]])
    assert np.abs(joined.astype(float) - expected).mean() < 3  # H.264 re-encoding only
    assert sorted(p.name for p in out.parent.glob('*.mp4')) == ['chain.mp4'] + [p.name for p in segments]

    # each segment continues the previous one's file: captioned and conditioned on it
    assert [path for path, _ in captions] == [source] + segments[:2]
    meta = json.loads(out.with_suffix('.json').read_text())
    assert meta['num_segments'] == 3 and len(meta['segments']) == 3
    seam_keys = {'first_frame_error', 'seam_diff', 'within_diff', 'flicker_index'}
    for i, record in enumerate(meta['segments']):
        assert record['segment'] == i + 1 and record['seed'] == 11 + i
        assert record['file'] == str(segments[i])
        assert record['conditioning'] == f'last frame of {([source] + segments)[i]}'
        assert set(record['seam']) == seam_keys and set(record['seam_after_colour_match']) == seam_keys
        assert all(np.isfinite(v) and v >= 0 for v in record['seam'].values())
        assert max(map(abs, record['colour_drift_after_colour_match']['mean_diff'])) < 2.0
        assert video_io.read_metadata(segments[i])['segment'] == i + 1


def test_colour_match_removes_a_synthetic_drift(tmp_path):
    """A continuation whose colours are scaled and offset per channel: measured through the module's
    drift figures, colour matching to the input file's statistics removes nearly all of it."""
    num_frames, size = 13, 32
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing='ij')
    t = torch.arange(num_frames).view(-1, 1, 1) / num_frames
    pattern = torch.stack([0.5 + 0.25 * torch.sin(6 * x + 3 * t), 0.45 + 0.2 * torch.cos(5 * y - 2 * t),
                           0.5 + 0.2 * torch.sin(4 * (x + y) + t)])  # [3, F, H, W] in [0.25, 0.75]
    clip = pattern * 2 - 1
    source = video_io.save_video(clip[:, :9], tmp_path / 'input.mp4', fps=16)
    ref_mean, ref_std = v2v.input_colour_stats(source, video_io.count_frames(source))

    # the continuation shows frames 8-12 (frame 0 = the input's last frame) with a colour cast
    scale, offset = torch.tensor([1.25, 0.8, 1.0]), torch.tensor([0.06, -0.05, 0.08])
    shifted = (pattern[:, 8:] * scale.view(3, 1, 1, 1) + offset.view(3, 1, 1, 1)) * 2 - 1
    assert shifted.abs().max() < 1  # no clipping: the cast is exactly scale and offset
    condition = torch.from_numpy(np.array(video_io.last_frame(source))).permute(2, 0, 1) / 127.5 - 1

    before = v2v.drift(shifted, ref_mean, ref_std)
    matched = v2v.match_colour(shifted, ref_mean, ref_std)
    after = v2v.drift(matched, ref_mean, ref_std)
    mean_before, mean_after = max(map(abs, before['mean_diff'])), max(map(abs, after['mean_diff']))
    std_before, std_after = max(map(abs, before['std_diff'])), max(map(abs, after['std_diff']))
    error_before = v2v.seam_figures(condition, shifted)['first_frame_error']
    error_after = v2v.seam_figures(condition, matched)['first_frame_error']
    print(f'mean drift {mean_before} -> {mean_after}, std drift {std_before} -> {std_after}, '
          f'first frame error {error_before} -> {error_after}')
    assert mean_before > 10 and std_before > 2  # the cast is measured: mean 0.06 * 255 and more
    assert mean_after < 0.01 * mean_before and std_after < 0.01 * std_before
    # the corrected first frame is much closer to the frame it continues (input stats != segment stats)
    assert error_after < 0.25 * error_before


def zero_frame_mp4(path) -> None:
    """A valid fragmented mp4 whose video track has no samples: ftyp + the empty moov only."""
    ffmpeg = video_io.ffmpeg_exe()
    full = path.with_name('full.mp4')
    subprocess.run([ffmpeg, '-v', 'error', '-f', 'lavfi', '-i', 'color=c=red:s=16x16:r=16', '-frames:v', '3',
                    '-c:v', 'libx264', '-movflags', 'frag_keyframe+empty_moov', str(full)], check=True)
    data, offset = full.read_bytes(), 0
    while True:
        box_size, box_type = struct.unpack('>I4s', data[offset:offset + 8])
        offset += box_size
        if box_type == b'moov':
            break
    path.write_bytes(data[:offset])
    full.unlink()


@pytest.mark.parametrize('kind, message', [
    ('corrupt', 'the file is corrupt or not a video'),
    ('zero_frames', 'has no decodable frames'),
    ('audio_only', 'has no video stream (audio only?)'),
])
def test_bad_input_video(kind, message, tmp_path, monkeypatch, capsys, tiny_checkpoints):  # noqa: F811
    """Each bad --video: one line on stderr, exit code 2, no output, no model or VLM loaded."""
    video = tmp_path / 'in' / ('in.m4a' if kind == 'audio_only' else 'in.mp4')
    video.parent.mkdir()
    if kind == 'corrupt':  # a real mp4 cut in half: its index (moov, at the end) is gone
        good = video_io.save_video(torch.zeros(3, 5, 16, 16), tmp_path / 'good.mp4', fps=16)
        video.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    elif kind == 'zero_frames':
        zero_frame_mp4(video)
    else:
        subprocess.run([video_io.ffmpeg_exe(), '-v', 'error', '-f', 'lavfi', '-i', 'sine=frequency=440:duration=1',
                        '-c:a', 'aac', str(video)], check=True)
    vlm = tmp_path / 'vlm'
    vlm.mkdir()
    (vlm / 'config.json').write_text('{"model_type": "internvl"}')  # passes the cheap folder check

    def no_loading(*args, **kwargs):
        raise AssertionError('a model was loaded before the input video was checked')
    monkeypatch.setattr(cli, 'build_pipeline', no_loading)
    monkeypatch.setattr(v2v, 'caption_video', no_loading)
    out = tmp_path / 'out' / 'cont.mp4'
    code = cli.generate_main(['--task', 'v2v-14B', '--video', str(video), '--vlm_path', str(vlm),
                              '--ckpt_dir', str(tiny_checkpoints('i2v-A14B')), '--frame_num', '5',
                              '--num_segments', '2', '--save_file', str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and 'Traceback' not in err and message in lines[0] and str(video) in lines[0], err
    assert not out.parent.exists() or not list(out.parent.iterdir())
