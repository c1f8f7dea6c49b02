"""The command line: the reference's flags and defaults, every task end to end on tiny checkpoints,
one-line errors with exit code 2 for bad input, Ctrl-C, and fallback files when the end fails."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny.ckpt import tiny_checkpoints  # noqa: F401 (fixture)
from wan import cli
from wan.pipelines.pipeline import VideoPipeline
from wan.utils.video_io import read_video, sidecar_path

REPO = Path(__file__).resolve().parents[1]
FAST = ['--frame_num', '5', '--sample_steps', '2', '--base_seed', '7', '--prompt', 'a red circle']
ONE_FRAME = ['--frame_num', '1', '--sample_steps', '1', '--base_seed', '7', '--prompt', 'a red circle']


def run(argv, capsys):
    code = cli.generate_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def image_file(folder: Path, width: int, height: int, name: str = 'in.png') -> Path:
    rng = np.random.RandomState(0)
    path = folder / name
    Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_loading(monkeypatch):
    """Bad input must be rejected before any model is loaded."""
    def fail(*args, **kwargs):
        raise AssertionError('a model was loaded before validation finished')
    monkeypatch.setattr(VideoPipeline, 'from_pretrained', fail)


# -- flags -----------------------------------------------------------------------------------

REFERENCE_DEFAULTS = {  # spec 9.1 (size: see test_default_size_by_task)
    'task': 't2v-A14B', 'frame_num': None, 'ckpt_dir': None, 'offload_model': None, 'ulysses_size': 1,
    't5_fsdp': False, 't5_cpu': False, 'dit_fsdp': False, 'save_file': None, 'prompt': None,
    'use_prompt_extend': False, 'prompt_extend_method': 'local_qwen', 'prompt_extend_model': None,
    'prompt_extend_target_lang': 'zh', 'base_seed': -1, 'image': None, 'sample_solver': 'unipc',
    'sample_steps': None, 'sample_shift': None, 'sample_guide_scale': None, 'convert_model_dtype': False,
    'src_root_path': None, 'refert_num': 77, 'replace_flag': False, 'use_relighting_lora': False,
    'num_clip': None, 'audio': None, 'enable_tts': False, 'tts_prompt_audio': None, 'tts_prompt_text': None,
    'tts_text': None, 'pose_video': None, 'start_from_ref': False, 'infer_frames': 80,
    # the V2V fork's flags
    'video': None, 'vlm_path': './models/InternVL3_5-8B', 'vlm_device': None, 'vlm_prompt': None,
    'num_segments': 1,
}


def test_every_reference_flag_with_its_default():
    args = vars(cli.build_parser().parse_args([]))
    assert {k: args[k] for k in REFERENCE_DEFAULTS} == REFERENCE_DEFAULTS
    parser = cli.build_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    assert choices['sample_solver'] == ['unipc', 'dpm++']
    assert {'t2v-A14B', 'i2v-A14B', 'ti2v-5B', 's2v-14B', 'animate-14B', 'v2v-14B', 'v2v-5B',
            'v2v-A14B'} <= set(choices['task'])
    assert cli.build_parser().parse_args(['--offload_model', 'False']).offload_model is False
    assert cli.build_parser().parse_args(['--sample_guide_scale', '2.5']).sample_guide_scale == 2.5


@pytest.mark.parametrize('value, expected', [('True', True), ('yes', True), ('1', True), ('f', False),
                                             ('NO', False), ('0', False)])
def test_str2bool(value, expected):
    assert cli.str2bool(value) is expected


def test_default_size_ckpt_dir_and_sampling_by_task(tiny_checkpoints, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for task, size, ckpt in [('t2v-A14B', '1280*720', './models/Wan2.2-T2V-A14B'),
                             ('ti2v-5B', '1280*704', './models/Wan2.2-TI2V-5B')]:
        args = cli.build_parser().parse_args(['--task', task])
        with pytest.raises(cli.UserError, match='checkpoint folder not found'):
            cli.validate(args)
        assert (args.size, args.ckpt_dir) == (size, ckpt)
    args = cli.validate(cli.build_parser().parse_args(['--ckpt_dir', str(tiny_checkpoints('t2v-A14B'))]))
    assert (args.sample_steps, args.sample_shift, args.sample_guide_scale, args.frame_num) == (40, 12.0, (3.0, 4.0), 81)
    assert args.offload_model is True and 0 <= args.base_seed <= sys.maxsize  # one process: offload
    assert args.prompt == cli.EXAMPLE_PROMPT['t2v-A14B']
    monkeypatch.setenv('WORLD_SIZE', '2')
    args = cli.validate(cli.build_parser().parse_args(['--ckpt_dir', str(tiny_checkpoints('t2v-A14B'))]))
    assert args.offload_model is False
    assert cli.guide_pair(2.0) == (2.0, 2.0) and cli.guide_pair((3.0, 4.0)) == (3.0, 4.0)


def test_default_file_name():
    from datetime import datetime
    name = cli.default_save_file('t2v-A14B', '1280*720', 1, 'two cats / boxing ' + 'x' * 60,
                                 datetime(2025, 1, 2, 3, 4, 5))
    assert name == f't2v-A14B_1280*720_1_two_cats___boxing_{"x" * 32}_20250102_030405.mp4'


# -- bad input: one line, exit code 2, nothing loaded -----------------------------------------

def assert_one_line_error(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and 'Traceback' not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unsupported_size(no_loading, capsys, tiny_checkpoints):
    code, _, err = run(['--task', 'ti2v-5B', '--size', '1280*720', '--ckpt_dir', tiny_checkpoints('ti2v-5B')],
                       capsys)
    assert_one_line_error(code, err, 'size 1280*720 is not supported by ti2v-5B', '704*1280 or 1280*704')


def test_unknown_size_and_solver(no_loading, capsys):
    code, _, err = run(['--size', '100*100'], capsys)
    assert_one_line_error(code, err, "invalid choice: '100*100'")
    code, _, err = run(['--sample_solver', 'euler'], capsys)
    assert_one_line_error(code, err, '--sample_solver', "invalid choice: 'euler'", 'unipc')


def test_frame_num_not_4n_plus_1(no_loading, capsys, tiny_checkpoints):
    code, _, err = run(['--frame_num', '80', '--ckpt_dir', tiny_checkpoints('t2v-A14B')], capsys)
    assert_one_line_error(code, err, '--frame_num 80 is not 4n+1', 'use 77 or 81')


def test_checkpoint_folder_missing(no_loading, capsys, tmp_path):
    code, _, err = run(['--ckpt_dir', tmp_path / 'nowhere'], capsys)
    assert_one_line_error(code, err, 'checkpoint folder not found', 'nowhere')


def test_checkpoint_folder_incomplete(no_loading, capsys, tmp_path):
    (tmp_path / 'models_t5_umt5-xxl-enc-bf16.pth').write_bytes(b'')
    (tmp_path / 'high_noise_model').mkdir()
    (tmp_path / 'high_noise_model' / 'config.json').write_text('{}')
    (tmp_path / 'high_noise_model' / 'diffusion_pytorch_model.safetensors.index.json').write_text(
        json.dumps({'weight_map': {'a': 'diffusion_pytorch_model-00001-of-00002.safetensors'}}))
    code, _, err = run(['--ckpt_dir', tmp_path], capsys)
    assert_one_line_error(code, err, 'is incomplete for t2v-A14B', 'Wan2.1_VAE.pth', 'google/umt5-xxl/',
                          'high_noise_model/diffusion_pytorch_model-00001-of-00002.safetensors',
                          'low_noise_model/config.json')
    assert 'models_t5_umt5-xxl-enc-bf16.pth' not in err and 'high_noise_model/config.json' not in err


def test_image_missing_or_unreadable(no_loading, capsys, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints('i2v-A14B')
    code, _, err = run(['--task', 'i2v-A14B', '--ckpt_dir', ckpt, '--image', tmp_path / 'no.png'], capsys)
    assert_one_line_error(code, err, 'image not found', 'no.png', '--image')
    bad = tmp_path / 'bad.jpg'
    bad.write_text('not a jpeg')
    code, _, err = run(['--task', 'i2v-A14B', '--ckpt_dir', ckpt, '--image', bad], capsys)
    assert_one_line_error(code, err, 'cannot read image', 'bad.jpg')


def test_ulysses_size_checks(no_loading, capsys, tiny_checkpoints):
    # not dividing the heads is allowed (padded heads), with a warning; the launch size still counts
    code, out, err = run(['--ulysses_size', '3', '--ckpt_dir', tiny_checkpoints('t2v-A14B')], capsys)
    assert_one_line_error(code, err, 'torchrun --nproc_per_node=3')
    assert 'padded to 42 heads (5 % more attention work); 1, 2, 4, 5, 8, 10, 20, 40 divide them' in out
    code, _, err = run(['--ulysses_size', '0', '--ckpt_dir', tiny_checkpoints('t2v-A14B')], capsys)
    assert_one_line_error(code, err, '--ulysses_size 0 must be at least 1')
    code, _, err = run(['--ulysses_size', '4', '--ckpt_dir', tiny_checkpoints('t2v-A14B')], capsys)
    assert_one_line_error(code, err, 'torchrun --nproc_per_node=4')
    code, _, err = run(['--dit_fsdp', '--ckpt_dir', tiny_checkpoints('t2v-A14B')], capsys)
    assert_one_line_error(code, err, 'multi-GPU launch')


def test_output_folder_not_writable(no_loading, capsys, tiny_checkpoints, tmp_path):
    a_file = tmp_path / 'file'
    a_file.write_text('')
    code, _, err = run(['--ckpt_dir', tiny_checkpoints('t2v-A14B'), '--save_file', a_file / 'out.mp4'], capsys)
    assert_one_line_error(code, err, 'is not writable', '--save_file')
    code, _, err = run(['--ckpt_dir', tiny_checkpoints('t2v-A14B'), '--save_file', tmp_path / 'out.avi'], capsys)
    assert_one_line_error(code, err, 'must end with .mp4')


@pytest.mark.parametrize('task', ['s2v-14B', 'animate-14B'])
def test_other_tasks_not_implemented(no_loading, capsys, task):
    code, _, err = run(['--task', task], capsys)
    assert_one_line_error(code, err, f'--task {task} is not implemented yet')


def test_v2v_dispatch(no_loading, capsys, tiny_checkpoints, tmp_path):
    video = tmp_path / 'in.mp4'
    video.write_bytes(b'')
    base = ['--task', 'v2v-A14B', '--ckpt_dir', tiny_checkpoints('i2v-A14B'), '--size', '832*480']
    code, _, err = run(base + ['--video', tmp_path / 'none.mp4'], capsys)
    assert_one_line_error(code, err, 'input video not found')
    code, _, err = run(base + ['--video', video, '--vlm_path', tmp_path / 'no_vlm'], capsys)
    assert_one_line_error(code, err, 'VLM folder not found', '--vlm_path')
    code, _, err = run(base + ['--video', video, '--num_segments', '0'], capsys)
    assert_one_line_error(code, err, '--num_segments 0 must be at least 1')


def test_flags_that_exclude_each_other(no_loading, capsys, tiny_checkpoints, monkeypatch):
    monkeypatch.setattr(cli, 'world', lambda: (0, 2, 0))  # rank, world size, local rank under torchrun
    base = ['--ckpt_dir', tiny_checkpoints('t2v-A14B'), '--ulysses_size', '2']
    code, _, err = run(base + ['--t5_fsdp', '--t5_cpu'], capsys)
    assert_one_line_error(code, err, '--t5_fsdp and --t5_cpu exclude each other')
    code, _, err = run(base + ['--dit_fsdp', '--offload_model', 'True'], capsys)
    assert_one_line_error(code, err, 'cannot move FSDP-sharded models', '--offload_model False')


# -- end to end through the command line ------------------------------------------------------

def check_video(path: Path, frames: int, width: int, height: int, fps: int) -> dict:
    pixels, rate = read_video(path)
    assert pixels.shape == (frames, height, width, 3) and pixels.dtype == np.uint8
    assert rate == fps
    assert not list(path.parent.glob('*.tmp*')), 'a temporary file was left behind'
    return json.loads(sidecar_path(path).read_text())


def test_t2v_end_to_end_default_name_and_prompt_extension(capsys, tiny_checkpoints, tmp_path, monkeypatch):
    import wan.utils.prompt_extend as prompt_extend
    calls = []
    monkeypatch.setattr(prompt_extend, 'extend_prompt',
                        lambda prompt, **kw: calls.append((prompt, kw)) or 'an extended red circle')
    monkeypatch.chdir(tmp_path)
    code, out, err = run(['--task', 't2v-A14B', '--size', '480*832', '--ckpt_dir', tiny_checkpoints('t2v-A14B'),
                          '--use_prompt_extend', '--prompt_extend_target_lang', 'en', *FAST], capsys)
    assert code == 0, err
    assert calls[0][0] == 'a red circle' and calls[0][1]['target_lang'] == 'en' and calls[0][1]['seed'] == 7
    (path,) = tmp_path.glob('*.mp4')
    assert path.name.startswith('t2v-A14B_480*832_1_an_extended_red_circle_')
    meta = check_video(path, 5, 480, 832, 16)
    assert meta == {'task': 't2v-A14B', 'prompt': 'an extended red circle', 'seed': 7, 'size': '480*832',
                    'frame_num': 5, 'sample_steps': 2, 'sample_solver': 'unipc', 'sample_shift': 12.0,
                    'sample_guide_scale': [3.0, 4.0], 'image': None}
    assert 'denoise' in err  # the progress bar


def test_i2v_end_to_end(capsys, tiny_checkpoints, tmp_path):
    out = tmp_path / 'sub' / 'i2v.mp4'  # a missing output folder is created
    code, _, err = run(['--task', 'i2v-A14B', '--size', '832*480', '--ckpt_dir', tiny_checkpoints('i2v-A14B'),
                        '--image', image_file(tmp_path, 1280, 720), '--save_file', out,
                        '--sample_guide_scale', '2.0', '--sample_solver', 'dpm++', *FAST], capsys)
    assert code == 0, err
    meta = check_video(out, 5, 832, 464, 16)  # 16:9 at the 480p area: 832x464 (spec 7.2)
    assert meta['size'] == '832*464' and meta['sample_guide_scale'] == [2.0, 2.0]
    assert meta['sample_solver'] == 'dpm++' and meta['image'].endswith('in.png')


def test_ti2v_text_mode_end_to_end_without_size(capsys, tiny_checkpoints, tmp_path):
    out = tmp_path / 'ti2v.mp4'
    code, _, err = run(['--task', 'ti2v-5B', '--ckpt_dir', tiny_checkpoints('ti2v-5B'), '--save_file', out,
                        '--convert_model_dtype', '--t5_cpu', '--offload_model', 'False', *FAST], capsys)
    assert code == 0, err
    assert check_video(out, 5, 1280, 704, 24)['size'] == '1280*704'


def test_ti2v_image_mode_end_to_end(capsys, tiny_checkpoints, tmp_path):
    out = tmp_path / 'ti2v_image.mp4'
    code, _, err = run(['--task', 'ti2v-5B', '--size', '704*1280', '--ckpt_dir', tiny_checkpoints('ti2v-5B'),
                        '--image', image_file(tmp_path, 1280, 720), '--save_file', out, *FAST], capsys)
    assert code == 0, err
    assert check_video(out, 5, 1248, 704, 24)['size'] == '1248*704'  # spec 7.3


# -- interruption and failures at the end -----------------------------------------------------

def test_ctrl_c_exits_130_and_writes_nothing(capsys, tiny_checkpoints, tmp_path, monkeypatch):
    from wan.pipelines import progress

    def interrupt(self, step):
        raise KeyboardInterrupt
    monkeypatch.setattr(progress.ProgressBar, '__call__', interrupt)
    code, _, err = run(['--task', 'ti2v-5B', '--ckpt_dir', tiny_checkpoints('ti2v-5B'),
                        '--save_file', tmp_path / 'x.mp4', *ONE_FRAME, '--sample_steps', '2'], capsys)
    assert code == 130 and 'Interrupted during step 1/2; nothing was saved.' in err
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_frames(capsys, tiny_checkpoints, tmp_path, monkeypatch):
    import wan.utils.video_io as video_io
    small = torch.linspace(-1, 1, 3 * 5 * 16 * 16).view(3, 5, 16, 16)

    def decode(self, latents, on_frames=None):  # streams its frames in two chunks
        on_frames(small[:, :1])
        on_frames(small[:, 1:])
        return small
    monkeypatch.setattr(VideoPipeline, 'decode', decode)

    def disk_full(*args, **kwargs):
        raise OSError('No space left on device')
    monkeypatch.setattr(video_io.VideoWriter, '_start', disk_full)
    code, _, err = run(['--task', 'ti2v-5B', '--ckpt_dir', tiny_checkpoints('ti2v-5B'),
                        '--save_file', tmp_path / 'x.mp4', *ONE_FRAME], capsys)
    fallback = tmp_path / 'x.frames.pt'
    assert code == 1 and 'No space left on device' in err and str(fallback) in err
    assert torch.equal(torch.load(fallback), torch.from_numpy(video_io.to_uint8_frames(small)))


def test_failed_decode_keeps_the_latents(capsys, tiny_checkpoints, tmp_path, monkeypatch):
    def out_of_memory(self, latents, on_frames=None):  # after streaming a first chunk
        on_frames(torch.zeros(3, 1, 16, 16))
        raise RuntimeError('CUDA out of memory')
    monkeypatch.setattr(VideoPipeline, 'decode', out_of_memory)
    code, _, err = run(['--task', 'ti2v-5B', '--ckpt_dir', tiny_checkpoints('ti2v-5B'),
                        '--save_file', tmp_path / 'x.mp4', *ONE_FRAME], capsys)
    assert code == 1 and 'CUDA out of memory' in err
    assert torch.load(tmp_path / 'x.latents.pt').shape == (48, 1, 44, 80)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['x.latents.pt']  # no partial mp4


# -- the installed commands -------------------------------------------------------------------

def test_console_script_and_generate_py(capsys):
    wan = Path(sys.executable).with_name('wan')
    result = subprocess.run([wan, 'generate', '--task', 's2v-14B'], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith('error: --task s2v-14B is not implemented yet (available: t2v-A14B, ')
    result = subprocess.run([sys.executable, REPO / 'generate.py', '--help'], capture_output=True, text=True)
    assert result.returncode == 0 and '--sample_guide_scale' in result.stdout
    assert cli.main([]) == 2 and cli.main(['render']) == 2 and 'wan {generate}' in capsys.readouterr().err
    assert cli.main(['generate', '--help']) == 0 and 'usage: wan generate' in capsys.readouterr().out
