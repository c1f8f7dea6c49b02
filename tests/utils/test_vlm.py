"""wan/utils/vlm.py: InternVL captioning on a tiny random InternVL, frame sampling, freeing."""
import json
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny.vlm import build_tiny_internvl, build_tiny_qwen2
from wan.errors import UserError
from wan.utils import video_io, vlm

NUM_VIDEO_FRAMES = 21


@pytest.fixture(scope='module')
def tiny_internvl(tmp_path_factory):
    return build_tiny_internvl(tmp_path_factory.mktemp('internvl'))


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    """21 frames, each a different flat grey level with a coloured bar, 64x96."""
    frames = torch.linspace(-0.9, 0.9, NUM_VIDEO_FRAMES).view(1, -1, 1, 1).repeat(3, 1, 64, 96)
    frames[0, :, 20:40, 30:60] = 0.8
    return video_io.save_video(frames, tmp_path_factory.mktemp('video') / 'in.mp4', fps=16)


def internvl_get_index(num_video_frames, num_segments):
    """InternVL's own example sampler (bound=None), with numpy's round-half-to-even."""
    start_idx, end_idx = 0, num_video_frames - 1
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + seg_size / 2 + np.round(seg_size * k)) for k in range(num_segments)]


def test_frame_indices_as_the_fork():
    assert vlm.frame_indices(121) == [7 + 15 * k for k in range(8)]
    for n in (1, 2, 5, 9, 21, 81, 100, 121, 333):
        for num_frames in (4, 8):
            indices = vlm.frame_indices(n, num_frames)
            assert indices == internvl_get_index(n, num_frames)
            assert all(0 <= i < n for i in indices) and indices == sorted(indices)


def test_pixel_values_single_448_tile():
    frames = [Image.new('RGB', (96, 64), (200, 100, 50)), Image.new('RGB', (30, 50), (0, 255, 128))]
    pixels = vlm.pixel_values(frames)
    assert pixels.shape == (2, 3, 448, 448) and pixels.dtype == torch.float32
    mean, std = torch.tensor(vlm.IMAGENET_MEAN), torch.tensor(vlm.IMAGENET_STD)
    for pixel, colour in zip(pixels, [(200, 100, 50), (0, 255, 128)]):
        expected = (torch.tensor(colour) / 255 - mean) / std
        torch.testing.assert_close(pixel.mean(dim=(1, 2)), expected, rtol=0, atol=1e-5)
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))).convert('RGB')
    expected = torch.from_numpy(np.asarray(ramp.resize((448, 448), Image.BICUBIC), np.float32))
    expected = (expected.permute(2, 0, 1) / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(vlm.pixel_values([ramp])[0], expected, rtol=0, atol=1e-6)


def test_question_format():
    assert vlm.question_with_frames('Describe this video in detail.', 3) == (
        'Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nDescribe this video in detail.')


def test_caption_is_reproducible_and_released(tiny_internvl, video, monkeypatch):
    model_refs = []
    real_load = vlm.load_captioner

    def recording_load(*args, **kwargs):
        captioner = real_load(*args, **kwargs)
        model_refs.append(weakref.ref(captioner.model))
        return captioner

    monkeypatch.setattr(vlm, 'load_captioner', recording_load)
    kwargs = dict(vlm_path=tiny_internvl, device='cpu', max_new_tokens=6)
    first = vlm.caption_video(video, seed=5, **kwargs)
    assert isinstance(first, str) and len(model_refs) == 1
    assert model_refs[0]() is None, 'the VLM is still alive after caption_video returned'
    assert vlm.caption_video(video, seed=5, **kwargs) == first
    assert vlm.caption_video(video, seed=6, **kwargs) != first


def test_model_freed_and_inputs(tiny_internvl, video):
    seen = {}
    with vlm.loaded_vlm(tiny_internvl, 'cpu') as captioner:
        model_ref = weakref.ref(captioner.model)
        real_generate = captioner.model.generate

        def spy(**inputs):
            seen.update(inputs)
            return real_generate(**inputs)

        captioner.model.generate = spy
        frames = vlm.sample_frames(video)
        captioner.caption(frames, 'What happens?', seed=0, max_new_tokens=4)
        tokenizer = captioner.tokenizer
        del spy, real_generate
    assert model_ref() is None, 'the VLM is still referenced after the context exits'
    assert captioner.model is None and captioner.tokenizer is None

    # The pixels are the fork's frames of the whole video, one 448x448 tile each.
    expected = vlm.pixel_values([Image.fromarray(f) for f in video_io.read_frames(
        video, vlm.frame_indices(NUM_VIDEO_FRAMES))])
    torch.testing.assert_close(seen['pixel_values'], expected, rtol=0, atol=0)
    assert seen['do_sample'] is True and seen['max_new_tokens'] == 4
    text = tokenizer.decode(seen['input_ids'][0])
    image = '<img>' + '<IMG_CONTEXT>' * 16 + '</img>'
    assert text == ('<|im_start|>user\n' + ''.join(f'Frame{i}: {image}\n' for i in range(1, 9))
                    + 'What happens?<|im_end|>\n<|im_start|>assistant\n')


class FakeChatModel(torch.nn.Module):
    """Stands in for InternVL's own modelling code: records the chat() call, samples from the RNG."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def chat(self, tokenizer, pixel_values, question, generation_config, num_patches_list=None,
             history=None, return_history=False):
        self.calls.append(dict(tokenizer=tokenizer, pixel_values=pixel_values, question=question,
                               generation_config=generation_config,
                               num_patches_list=num_patches_list, history=history,
                               return_history=return_history))
        return f'caption {torch.randint(0, 10**6, (1,)).item()}', []


def test_remote_code_layout(tmp_path, video, monkeypatch):
    import transformers
    folder = tmp_path / 'InternVL3_5-8B'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps(
        {'model_type': 'internvl_chat', 'auto_map': {'AutoModel': 'modeling_internvl_chat.InternVLChatModel'}}))
    models, loads = [], []

    def fake_model(path, **kwargs):
        loads.append(('model', kwargs))
        models.append(FakeChatModel())
        return models[-1]

    def fake_tokenizer(path, **kwargs):
        loads.append(('tokenizer', kwargs))
        return 'tokenizer'

    monkeypatch.setattr(transformers.AutoModel, 'from_pretrained', fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, 'from_pretrained', fake_tokenizer)
    first = vlm.caption_video(video, vlm_path=folder, device='cpu', seed=3, max_new_tokens=20)
    again = vlm.caption_video(video, vlm_path=folder, device='cpu', seed=3, max_new_tokens=20)
    other = vlm.caption_video(video, vlm_path=folder, device='cpu', seed=4, max_new_tokens=20)
    assert first == again != other
    call = models[0].calls[0]
    assert call['pixel_values'].shape == (8, 3, 448, 448)
    assert call['question'] == vlm.question_with_frames('Describe this video in detail.', 8)
    assert call['generation_config'] == {'max_new_tokens': 20, 'do_sample': True}
    assert call['num_patches_list'] == [1] * 8 and call['history'] is None and call['return_history']
    assert all(kwargs.get('trust_remote_code') for _, kwargs in loads)
    assert models[0].weight is not None and len(models) == 3  # loaded afresh for each caption


def test_missing_or_wrong_vlm_folder(tmp_path, video):
    with pytest.raises(UserError, match='VLM folder not found: .*nowhere.*--vlm_path'):
        vlm.caption_video(tmp_path / 'missing.mp4', vlm_path=tmp_path / 'nowhere', device='cpu')
    qwen = build_tiny_qwen2(tmp_path / 'qwen')
    with pytest.raises(UserError, match="not an InternVL model: .*'qwen2'"):
        vlm.caption_video(video, vlm_path=qwen, device='cpu')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='cannot read .*config.json'):
        vlm.caption_video(video, vlm_path=tmp_path / 'empty', device='cpu')


def test_preprocessing_matches_transformers_internvl_processor(tiny_internvl):
    """Our pixels and expanded prompt against transformers' InternVLProcessor (native layout), set
    up as InternVL-HF checkpoints are (448x448, bicubic, ImageNet mean/std) with one tile per frame
    (crop_to_patches=False; the processor's own default tiles). Needs torchvision, which those
    processors require: skipped where it is missing, as in CI."""
    pytest.importorskip('torchvision', reason="transformers' InternVL processors need torchvision")
    import transformers
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_internvl)
    config = transformers.AutoConfig.from_pretrained(tiny_internvl)
    settings = dict(size={'height': 448, 'width': 448}, resample=Image.BICUBIC,
                    image_mean=list(vlm.IMAGENET_MEAN), image_std=list(vlm.IMAGENET_STD))
    processor = InternVLProcessor(GotOcr2ImageProcessor(**settings), tokenizer,
                                  InternVLVideoProcessor(**settings),
                                  image_seq_length=config.image_seq_length)
    # Pixel noise, landscape or square frames: for these PIL runs the horizontal bicubic pass
    # first, as torchvision always does. For portrait frames PIL runs the vertical pass first and,
    # with uint8 rounding between the passes, noise then differs by up to ~20 of 255 levels.
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))
              for width, height in [(832, 480), (96, 64), (1280, 720), (448, 448)] * 2]
    video = rng.integers(0, 256, (len(frames), 480, 832, 3), np.uint8)
    prompt = vlm.question_with_frames('What happens?', len(frames))
    chat = tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}], tokenize=False,
                                         add_generation_prompt=True)
    image = '<img>' + '<IMG_CONTEXT>' * config.image_seq_length + '</img>'
    our_ids = tokenizer(chat.replace(vlm.IMAGE_PLACEHOLDER, image), return_tensors='pt',
                        add_special_tokens=False)['input_ids']
    video_chat = tokenizer.apply_chat_template(
        [{'role': 'user', 'content': '<video>\nWhat happens?'}], tokenize=False,
        add_generation_prompt=True)
    as_images = processor(text=[chat.replace(vlm.IMAGE_PLACEHOLDER, '<IMG_CONTEXT>')],
                          images=frames, crop_to_patches=False, return_tensors='pt')
    as_video = processor(text=[video_chat], videos=[video], return_tensors='pt')
    std = torch.tensor(vlm.IMAGENET_STD).view(3, 1, 1)
    for native, ours in [(as_images, vlm.pixel_values(frames)),
                         (as_video, vlm.pixel_values([Image.fromarray(f) for f in video]))]:
        # the video path writes the same 'Frame{i}: <img>...</img>' lines
        assert torch.equal(native['input_ids'], our_ids)
        assert native['pixel_values'].shape == ours.shape
        # PIL's bicubic (the fork's, spec 14.2) and torchvision's uint8 bicubic round a few
        # values differently: at most 2 of 255 levels, on under 1% of the values.
        levels = ((native['pixel_values'] - ours) * std * 255).abs()
        assert levels.max() < 2.01 and (levels > 0.5).float().mean() < 0.01
