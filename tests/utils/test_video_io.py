"""wan/utils/video_io.py: the reference's mp4 encoding, atomic writes, decoding and its errors."""
import json
import subprocess

import numpy as np
import pytest
import torch

from wan.errors import UserError
from wan.utils import video_io


def smooth_video(num_frames=9, height=48, width=64, seed=0) -> torch.Tensor:
    """Gradients and a moving square in [-1, 1]: content H.264 at crf 10 keeps nearly intact."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, num_frames)[:, None, None]
    y = torch.linspace(-1, 1, height)[None, :, None]
    x = torch.linspace(-1, 1, width)[None, None, :]
    phase = torch.rand(3, generator=g)
    video = torch.stack([0.8 * torch.sin(2 * x + 3 * y + 4 * t + phase[c]) for c in range(3)])
    for i in range(num_frames):  # on the 2x2 chroma grid of yuv420p
        video[:, i, 10:20, 4 + 2 * i:14 + 2 * i] = torch.tensor([0.6, 0.1, 0.3])[:, None, None]
    return video


def ffmpeg(*args):
    subprocess.run([video_io.ffmpeg_exe(), '-v', 'error', '-y', *args], check=True)


def test_truncation_not_rounding():
    values = torch.tensor([-3.0, -1.0, 0.0, 0.9999, 1.0, 2.0, 0.5, -0.999])
    video = values.view(1, -1, 1, 1).expand(3, -1, 2, 2)
    out = video_io.to_uint8_frames(video)[:, 0, 0, 0]
    # (x+1)/2*255: 0 -> 127.5 -> 127 and 0.9999 -> 254.99 -> 254; rounding would give 128 and 255.
    assert out.tolist() == [0, 0, 127, 254, 255, 255, 191, 0]
    rand = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = ((np.clip(rand.numpy(), -1, 1) + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 3, 0)
    np.testing.assert_array_equal(video_io.to_uint8_frames(rand), expected)


def test_round_trip(tmp_path):
    video = smooth_video()
    meta = {'prompt': '一只猫 = ; # \\ "quoted"', 'seed': 7, 'nested': {'a': [1, 2.5]}}
    path = video_io.save_video(video, tmp_path / 'sub' / 'clip.mp4', fps=16, metadata=meta)
    assert path == tmp_path / 'sub' / 'clip.mp4' and path.is_file()
    frames, fps = video_io.read_video(path)
    assert frames.shape == (9, 48, 64, 3) and frames.dtype == np.uint8 and fps == 16.0
    expected = video_io.to_uint8_frames(video).astype(np.float64)
    err = np.abs(frames - expected)
    psnr = 10 * np.log10(255 ** 2 / np.mean(err ** 2))
    assert err.mean() < 2.5 and err.max() < 32 and psnr > 38, (err.mean(), err.max(), psnr)
    assert video_io.read_metadata(path) == meta
    assert json.loads((tmp_path / 'sub' / 'clip.json').read_text()) == meta
    assert sorted(p.name for p in path.parent.iterdir()) == ['clip.json', 'clip.mp4']
    # Partial reads agree with the full decode.
    np.testing.assert_array_equal(video_io.read_video(path, max_frames=3)[0], frames[:3])
    np.testing.assert_array_equal(video_io.read_frames(path, [8, 0, 0, 4]), frames[[8, 0, 0, 4]])
    np.testing.assert_array_equal(np.asarray(video_io.last_frame(path)), frames[-1])
    assert video_io.count_frames(path) == 9
    with pytest.raises(IndexError, match='9 frames'):
        video_io.read_frames(path, [9])


def test_same_stream_as_imageio_writer(tmp_path):
    """The reference writes with imageio.get_writer(codec='libx264', quality=8), i.e. imageio-ffmpeg."""
    import imageio_ffmpeg
    video = smooth_video(num_frames=5, seed=3)
    frames = video_io.to_uint8_frames(video)
    ours = video_io.save_video(video, tmp_path / 'ours.mp4', fps=24)
    writer = imageio_ffmpeg.write_frames(str(tmp_path / 'ref.mp4'), (64, 48), fps=24.0, codec='libx264',
                                         quality=8, macro_block_size=16, ffmpeg_log_level='warning')
    writer.send(None)
    for frame in frames:
        writer.send(frame)
    writer.close()
    decoded_ref, fps_ref = video_io.read_video(tmp_path / 'ref.mp4')
    decoded_ours, fps_ours = video_io.read_video(ours)
    assert fps_ours == fps_ref == 24.0
    np.testing.assert_array_equal(decoded_ours, decoded_ref)
    assert video_io.read_metadata(ours) == {} and not (tmp_path / 'ours.json').exists()


def test_size_not_multiple_of_16_is_padded_like_imageio(tmp_path):
    path = video_io.save_video(smooth_video(num_frames=2, height=47, width=63), tmp_path / 'odd.mp4', fps=16)
    assert video_io.read_video(path)[0].shape == (2, 48, 64, 3)


def test_failed_encode_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / 'out.mp4'
    target.write_bytes(b'previous result')
    monkeypatch.setattr(video_io, 'CODEC', 'no_such_codec')
    with pytest.raises(RuntimeError, match='ffmpeg failed to encode'):
        video_io.save_video(smooth_video(num_frames=2), target, fps=16, metadata={'a': 1})
    assert target.read_bytes() == b'previous result'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.mp4']


def test_unserialisable_metadata_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        video_io.save_video(smooth_video(num_frames=2), tmp_path / 'out.mp4', fps=16, metadata={'a': object()})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(UserError, match='cannot write to folder'):
        video_io.save_video(smooth_video(num_frames=2), blocker / 'out.mp4', fps=16)


@pytest.mark.parametrize('reader', [video_io.read_video, video_io.last_frame, video_io.read_metadata,
                                    video_io.count_frames, lambda p: video_io.read_frames(p, [0])])
def test_read_errors(tmp_path, reader):
    good = video_io.save_video(smooth_video(num_frames=3), tmp_path / 'good.mp4', fps=16)
    (tmp_path / 'truncated.mp4').write_bytes(good.read_bytes()[:600])
    (tmp_path / 'text.mp4').write_text('hello')
    ffmpeg('-f', 'lavfi', '-i', 'sine=duration=0.2', '-c:a', 'aac', str(tmp_path / 'audio.mp4'))
    ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=32x32', '-frames:v', '0', '-c:v', 'mpeg4',
           str(tmp_path / 'empty.nut'))
    cases = {
        'missing.mp4': 'video not found: .*missing.mp4',
        '.': 'video not found',
        'truncated.mp4': 'cannot read video .*truncated.mp4: Invalid data.*re-encode',
        'text.mp4': 'cannot read video .*text.mp4',
        'audio.mp4': 'has no video stream',
        'empty.nut': 'has no decodable frames',
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=message) as info:
            reader(tmp_path / name)
        assert '\n' not in str(info.value)


def test_metadata_too_long_for_the_mp4_goes_to_the_sidecar_only(tmp_path):
    meta = {'captions': ['x' * 1000] * 150}  # 150 kB: more than one command-line argument holds
    path = video_io.save_video(smooth_video(num_frames=2), tmp_path / 'long.mp4', fps=16, metadata=meta)
    assert video_io.read_metadata(path) == {}
    assert json.loads((tmp_path / 'long.json').read_text()) == meta


def test_writer_streams_chunks_into_the_same_video(tmp_path):
    video = smooth_video(num_frames=9)
    whole = video_io.save_video(video, tmp_path / 'whole.mp4', fps=16, metadata={'a': 1})
    with video_io.VideoWriter(tmp_path / 'chunks.mp4', fps=16, metadata={'a': 1}) as writer:
        for start, end in [(0, 1), (1, 5), (5, 9)]:  # as the VAE decode hands them over
            writer.write(video_io.to_uint8_frames(video[:, start:end]))
    assert (tmp_path / 'chunks.mp4').read_bytes() == whole.read_bytes()
    assert json.loads((tmp_path / 'chunks.json').read_text()) == {'a': 1}


def test_writer_leaves_nothing_on_failure(tmp_path):
    frames = video_io.to_uint8_frames(smooth_video(num_frames=3))
    with pytest.raises(RuntimeError, match='decode failed'):
        with video_io.VideoWriter(tmp_path / 'out.mp4', fps=16, metadata={'a': 1}) as writer:
            writer.write(frames)
            raise RuntimeError('decode failed')
    assert list(tmp_path.iterdir()) == []
    # a failure to start (an unwritable folder) surfaces at close, never in write
    blocker = tmp_path / 'file'
    blocker.write_text('')
    writer = video_io.VideoWriter(blocker / 'out.mp4', fps=16)
    writer.write(frames)
    with pytest.raises(UserError, match='cannot write to folder'):
        writer.close()
    with pytest.raises(ValueError, match='zero frames'):
        video_io.VideoWriter(tmp_path / 'none.mp4', fps=16).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_writer_survives_ffmpeg_dying_mid_stream(tmp_path, monkeypatch):
    """Writes after ffmpeg has gone do not raise (the producer finishes); close says why."""
    monkeypatch.setattr(video_io, '_encode_command',
                        lambda out, *args: [video_io.ffmpeg_exe(), '-v', 'error', '-no_such_option'])
    writer = video_io.VideoWriter(tmp_path / 'out.mp4', fps=16)
    frames = video_io.to_uint8_frames(smooth_video(num_frames=5, height=256, width=256))
    for _ in range(20):  # far more than a pipe buffer: some writes meet a closed pipe
        writer.write(frames)
    with pytest.raises(RuntimeError, match='ffmpeg failed to encode'):
        writer.close()
    assert list(tmp_path.iterdir()) == []
