"""Video files: write H.264 mp4 exactly as the reference does, read frames back (spec 7.6).

Everything goes through the ffmpeg binary that imageio-ffmpeg ships (it has libx264), driven as a
subprocess: frames in as raw RGB, frames out as a PPM stream (each frame carries its own size, so
rotated inputs need no guessing). A written file appears only when complete (temp file + rename).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

log = logging.getLogger(__name__)

# imageio's `quality=8` for libx264 means crf = int((1 - 8/10) * 51) = 10 (spec 7.6).
CODEC = 'libx264'
CRF = int((1 - 8 / 10) * 51)
MACRO_BLOCK = 16
MAX_COMMENT_BYTES = 100_000  # one command-line argument holds at most 128 KiB on Linux
_REENCODE_HINT = 're-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`'


def ffmpeg_exe() -> str:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------------------------------------
# Writing

def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8, with the reference's truncation (spec 7.6)."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f'expected a video tensor [3, T, H, W], got shape {tuple(video.shape)}')
    # computed where the video is (on a GPU: exact IEEE elementwise ops, the same bytes as on the
    # CPU), so only the uint8 frames cross to the host
    x = video.detach().float().clamp(-1, 1)
    x = (x + 1) / 2  # make_grid(normalize=True, value_range=(-1, 1))
    x = (x * 255).to(torch.uint8)  # truncation, not rounding
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def _padded_size(width: int, height: int) -> tuple[int, int]:
    """imageio scales frames up to a multiple of the macro block (all Wan sizes already are)."""
    return (-(-width // MACRO_BLOCK) * MACRO_BLOCK, -(-height // MACRO_BLOCK) * MACRO_BLOCK)


def _encode_command(out: Path, width: int, height: int, fps: int, comment: str | None) -> list[str]:
    """The command imageio-ffmpeg builds for get_writer(codec='libx264', quality=8)."""
    cmd = [ffmpeg_exe(), '-y', '-f', 'rawvideo', '-vcodec', 'rawvideo', '-s', f'{width}x{height}',
           '-pix_fmt', 'rgb24', '-r', str(Fraction(fps).limit_denominator()), '-i', '-', '-an',
           '-vcodec', CODEC, '-pix_fmt', 'yuv420p', '-crf', str(CRF)]
    if _padded_size(width, height) != (width, height):
        cmd += ['-vf', 'scale={}:{}'.format(*_padded_size(width, height))]
    cmd += ['-v', 'warning']
    if comment is not None:
        cmd += ['-metadata', f'comment={comment}']
    return cmd + [str(out)]


def _reserve_temp(path: Path) -> Path:
    """Create an empty temp file next to `path` (same file system, so os.replace is atomic)."""
    temp = path.with_name(f'.{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix or ".mp4"}')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, 'xb'):
            pass
    except OSError as exc:
        raise UserError(f'cannot write to folder {path.parent} ({exc.strerror or exc}): '
                        'choose a writable output path (--save_file)') from exc
    return temp


def _write_json_atomic(path: Path, data: dict) -> None:
    temp = _reserve_temp(path)
    try:
        temp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def save_video(video: torch.Tensor, path: str | Path, fps: int,
               metadata: dict | None = None) -> Path:
    """Encode `video` ([3, T, H, W] in [-1, 1]) to an H.264 mp4 at `path`; return the path.

    `metadata` (JSON-serialisable) goes into the mp4's `comment` tag and into `<stem>.json`
    next to the video. Nothing is left at `path` (or its sidecar) unless encoding succeeded.
    """
    return save_frames(to_uint8_frames(video), path, fps, metadata)


def save_frames(frames: np.ndarray, path: str | Path, fps: int,
                metadata: dict | None = None) -> Path:
    """As save_video, for frames already in uint8 [T, H, W, 3]."""
    _check_frames(frames)
    if frames.shape[0] == 0:
        raise ValueError('cannot save a video with zero frames')
    with VideoWriter(path, fps, metadata) as writer:
        writer.write(frames)
    return writer.path


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}')


class VideoWriter:
    """An mp4 written as its frames arrive, encoded as `save_video` encodes.

        with VideoWriter(path, fps, metadata) as writer:   # the file appears on a clean exit
            for frames in chunks:                            # uint8 [T, H, W, 3], same H and W
                writer.write(frames)

    A background thread pipes the frames to ffmpeg, so whoever produces them (the VAE decode)
    and the encoder run at the same time. `write` never raises for a failed encode: the first
    failure (no temp file, ffmpeg gone) is kept and raised by `close`, so a producer always
    finishes. Nothing is left at `path` or its sidecar unless `close` succeeds; `abort` (or an
    exception leaving the `with`) removes everything.
    """

    def __init__(self, path: str | Path, fps: int, metadata: dict | None = None):
        if fps <= 0:
            raise ValueError(f'fps must be positive, got {fps}')
        self.path, self.fps, self.metadata = Path(path), fps, metadata
        self.comment = None if metadata is None else json.dumps(metadata, ensure_ascii=False)
        if self.comment is not None and len(self.comment.encode()) > MAX_COMMENT_BYTES:
            log.warning('metadata of %s is too long for the mp4 comment; it is only in %s',
                        self.path, sidecar_path(self.path).name)
            self.comment = None
        self._size: tuple[int, int] | None = None  # (height, width) of the first frames
        self._temp: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray) -> None:
        """Queue uint8 frames [T, H, W, 3] for encoding."""
        _check_frames(frames)
        if self._size is None:
            self._size = frames.shape[1:3]
            try:
                self._start(*self._size)
            except BaseException as exc:  # e.g. an unwritable folder: raised by close()
                self._error = exc
        elif frames.shape[1:3] != self._size:
            raise ValueError(f'frames of {frames.shape[1:3]} after frames of {self._size}')
        if self._thread is not None:
            self._queue.put(np.ascontiguousarray(frames))

    def _start(self, height: int, width: int) -> None:
        self._temp = _reserve_temp(self.path)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(_encode_command(self._temp, width, height, self.fps, self.comment),
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        self._thread = threading.Thread(target=self._pump, name='video-writer', daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while (frames := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._proc.stdin.write(frames.data)
                except OSError as exc:  # BrokenPipeError: ffmpeg stopped; its exit code says why
                    self._error = exc

    def _finish_encoder(self) -> int | None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._proc is None:
            return None
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        return self._proc.wait()

    def close(self) -> Path:
        """Finish encoding and put the file (and its sidecar) in place; raises what went wrong."""
        try:
            if self._size is None:
                raise ValueError('cannot save a video with zero frames')
            returncode = self._finish_encoder()
            if returncode:
                self._log.seek(0)
                message = self._log.read().decode(errors='replace').strip().splitlines()
                raise RuntimeError(f'ffmpeg failed to encode {self.path} (exit {returncode}): '
                                   f'{message[-1] if message else "no message"}')
            if self._error is not None:
                raise self._error
            os.replace(self._temp, self.path)
        finally:
            self._cleanup()
        if self.metadata is not None:
            _write_json_atomic(sidecar_path(self.path), self.metadata)
        return self.path

    def abort(self) -> None:
        """Stop encoding and remove the partial file."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._finish_encoder()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None


def sidecar_path(path: str | Path) -> Path:
    """`out/video.mp4` -> `out/video.json`."""
    return Path(path).with_suffix('.json')


# ---------------------------------------------------------------------------------------------
# Reading

def _probe(path: Path) -> tuple[str, float]:
    """Check that `path` is a readable file with a video stream; return ffmpeg's header and fps."""
    if not path.is_file():
        raise UserError(f'video not found: {path} (check the path given with --video)')
    result = subprocess.run([ffmpeg_exe(), '-hide_banner', '-i', str(path)],
                            capture_output=True, text=True, errors='replace')
    header = result.stderr  # ffmpeg with no output file prints the header and exits 1
    streams = [line for line in header.splitlines() if line.strip().startswith('Stream #')]
    if not streams and 'EOF before video frames' in header:
        raise _no_frames(path)
    if not streams:
        errors = [line for line in header.splitlines() if 'Error' in line]
        reason = errors[-1].split(': ', 1)[-1] if errors else 'the file holds no streams'
        raise UserError(f'cannot read video {path}: {reason}; '
                        f'the file is corrupt or not a video - {_REENCODE_HINT}')
    video_streams = [line for line in streams if ': Video:' in line]
    if not video_streams:
        raise UserError(f'{path} has no video stream (audio only?): pass a video file')
    match = re.search(r'(\d+(?:\.\d+)?)(k?) fps', video_streams[0]) or \
        re.search(r'(\d+(?:\.\d+)?)(k?) tbr', video_streams[0])
    fps = float(match.group(1)) * (1000 if match and match.group(2) else 1) if match else 0.0
    return header, fps


def _no_frames(path: Path) -> UserError:
    return UserError(f'video {path} has no decodable frames (empty or truncated?): '
                     'pass a video with at least one frame')


def _iter_frames(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decode the first video stream as [H, W, 3] uint8 frames, one at a time."""
    cmd = [ffmpeg_exe(), '-v', 'error', '-nostdin', '-i', str(path), '-map', '0:v:0',
           '-fps_mode', 'passthrough']
    if max_frames is not None:
        cmd += ['-frames:v', str(max_frames)]
    cmd += ['-f', 'image2pipe', '-vcodec', 'ppm', '-']
    with tempfile.TemporaryFile() as ffmpeg_log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=ffmpeg_log)
        finished, num_frames = False, 0
        try:
            while True:
                magic = proc.stdout.readline()
                if not magic:
                    break
                width, height = map(int, proc.stdout.readline().split())
                proc.stdout.readline()  # max value, 255
                data = proc.stdout.read(width * height * 3)
                if len(data) != width * height * 3:
                    break
                num_frames += 1
                yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
            finished = True
        finally:
            if not finished:  # the caller stopped early: stop ffmpeg
                proc.kill()
            proc.stdout.close()
            returncode = proc.wait()
        if finished and num_frames == 0:
            raise _no_frames(path)
        if finished and returncode != 0:
            ffmpeg_log.seek(0)
            lines = ffmpeg_log.read().decode(errors='replace').strip().splitlines() or ['ffmpeg failed']
            raise UserError(f'cannot decode video {path}: {lines[-1]}; {_REENCODE_HINT}')


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """All frames (or the first `max_frames`) as uint8 [T, H, W, 3], and the frame rate."""
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f'max_frames must be at least 1, got {max_frames}')
    _, fps = _probe(path)
    frames = list(_iter_frames(path, max_frames))
    return np.stack(frames), fps


def count_frames(path: str | Path) -> int:
    """Number of decodable frames (decodes the whole video)."""
    path = Path(path)
    _probe(path)
    return sum(1 for _ in _iter_frames(path))


def read_frames(path: str | Path, indices: Iterable[int]) -> np.ndarray:
    """The frames at `indices` (in that order, repeats allowed) as uint8 [len(indices), H, W, 3]."""
    path = Path(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError('indices must not be empty')
    if min(indices) < 0:
        raise IndexError(f'negative frame index in {indices}')
    _probe(path)
    wanted, last = set(indices), max(indices)
    found: dict[int, np.ndarray] = {}
    num_decoded = 0
    for index, frame in enumerate(_iter_frames(path, max_frames=last + 1)):
        num_decoded = index + 1
        if index in wanted:
            found[index] = frame
    missing = sorted(wanted - found.keys())
    if missing:
        raise IndexError(f'video {path} has {num_decoded} frames, no frame {missing[0]}')
    return np.stack([found[i] for i in indices])


def last_frame(path: str | Path) -> Image.Image:
    """The exact decoded last frame, as an RGB PIL image at the video's resolution."""
    path = Path(path)
    _probe(path)
    frame = None
    for frame in _iter_frames(path):
        pass
    return Image.fromarray(frame.copy(), 'RGB')


def read_metadata(path: str | Path) -> dict:
    """The JSON stored by save_video in the mp4's `comment` tag ({} when there is none)."""
    path = Path(path)
    _probe(path)
    result = subprocess.run([ffmpeg_exe(), '-v', 'error', '-i', str(path), '-f', 'ffmetadata', '-'],
                            capture_output=True)
    text = result.stdout.decode('utf-8', errors='replace')
    # ffmetadata escapes '=', ';', '#', '\' and newline with a backslash.
    match = re.search(r'^comment=((?:[^\\\n]|\\.)*)$', text, flags=re.MULTILINE | re.DOTALL)
    if not match:
        return {}
    comment = re.sub(r'\\(.)', r'\1', match.group(1), flags=re.DOTALL)
    try:
        value = json.loads(comment)
    except ValueError:
        return {'comment': comment}
    return value if isinstance(value, dict) else {'comment': value}
