"""InternVL video captioner for video-to-video continuation (spec 14.2).

The VLM is loaded for one caption and freed right after (every reference dropped, gc, CUDA cache
emptied), so its memory is back before the DiT loads. Two checkpoint layouts load:
- transformers-native InternVL (config.json `model_type: internvl`, e.g. `InternVL3_5-8B-HF`):
  AutoModelForImageTextToText + AutoTokenizer;
- the original layout that carries its own modelling code (e.g. `OpenGVLab/InternVL3_5-8B`):
  AutoModel with trust_remote_code and its `chat()` method, as the V2V fork calls it.
Both see the same pixels: 8 frames spread over the whole video, each a single 448x448 tile
(PIL bicubic resize, ImageNet normalisation), introduced as "Frame{i}: <image>" lines. We do this
preprocessing ourselves rather than through transformers' InternVL processor, which requires
torchvision. Sampling is seeded, so a caption is reproducible for a given seed.
"""
from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from . import video_io

log = logging.getLogger(__name__)

DEFAULT_QUESTION = 'Describe this video in detail.'
IMAGE_SIZE = 448
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_PLACEHOLDER = '<image>'
# InternVL's image tokens, when the tokenizer does not name them itself.
START_IMAGE, END_IMAGE, CONTEXT_IMAGE = '<img>', '</img>', '<IMG_CONTEXT>'


# -- shared by the transformers models loaded for one call (this VLM, the local prompt extender)

def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if device.type == 'cuda' else torch.float32


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Sampling with its own seed, the global RNG state (CPU, and `device` on CUDA) left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield


def free_memory(device: torch.device) -> None:
    """Collect dropped models now and hand their CUDA memory back."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def frame_indices(num_video_frames: int, num_frames: int = 8) -> list[int]:
    """Centres of `num_frames` equal segments of the video, as the fork samples (spec 14.2)."""
    segment = (num_video_frames - 1) / num_frames
    return [int(segment / 2 + round(segment * k)) for k in range(num_frames)]


def sample_frames(video_path: str | Path, num_frames: int = 8, num_video_frames: int | None = None
                  ) -> list[Image.Image]:
    """`num_frames` RGB frames spread over the whole video (of `num_video_frames` frames, counted
    here when not given: a decode of its own)."""
    if num_video_frames is None:
        num_video_frames = video_io.count_frames(video_path)
    indices = frame_indices(num_video_frames, num_frames)
    return [Image.fromarray(frame) for frame in video_io.read_frames(video_path, indices)]


def pixel_values(frames: list[Image.Image]) -> torch.Tensor:
    """[N, 3, 448, 448] fp32: one 448x448 tile per frame (InternVL dynamic tiling with max_num=1)."""
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    tiles = []
    for frame in frames:
        tile = frame.convert('RGB').resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        tiles.append((np.asarray(tile, np.float32) / 255 - mean) / std)
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


def question_with_frames(question: str, num_frames: int) -> str:
    """'Frame1: <image>\\nFrame2: <image>\\n...' followed by the question (spec 14.2)."""
    return ''.join(f'Frame{i + 1}: {IMAGE_PLACEHOLDER}\n' for i in range(num_frames)) + question


class _Captioner:
    """A loaded VLM; `release()` drops the weights so they can be freed."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device

    def caption(self, frames: list[Image.Image], question: str = DEFAULT_QUESTION, *,
                seed: int = 0, max_new_tokens: int = 512) -> str:
        if self.model is None:
            raise RuntimeError('the VLM was released')
        dtype = next(self.model.parameters()).dtype
        pixels = pixel_values(frames).to(self.device, dtype)
        prompt = question_with_frames(question, len(frames))
        with seeded(seed, self.device), torch.no_grad():  # do_sample=True as in the fork, reproducible
            text = self._generate(pixels, prompt, max_new_tokens)
        return ' '.join(text.split())  # one line: it becomes the prompt and the file name

    def _generate(self, pixels: torch.Tensor, prompt: str, max_new_tokens: int) -> str:
        raise NotImplementedError

    def release(self) -> None:
        self.model = self.tokenizer = None


class _NativeCaptioner(_Captioner):
    """transformers' InternVLForConditionalGeneration: we expand the image tokens ourselves."""

    def _generate(self, pixels: torch.Tensor, prompt: str, max_new_tokens: int) -> str:
        tokenizer, config = self.tokenizer, self.model.config
        messages = [{'role': 'user', 'content': prompt}]
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # InternVL's chat format
            text = f'<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n'
        start = getattr(tokenizer, 'start_image_token', None) or START_IMAGE
        end = getattr(tokenizer, 'end_image_token', None) or END_IMAGE
        context = tokenizer.convert_ids_to_tokens(config.image_token_id)
        text = text.replace(IMAGE_PLACEHOLDER, start + context * config.image_seq_length + end)
        inputs = tokenizer(text, return_tensors='pt', add_special_tokens=False)
        input_ids = inputs['input_ids'].to(self.device)
        output = self.model.generate(input_ids=input_ids,
                                     attention_mask=inputs['attention_mask'].to(self.device),
                                     pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=True)
        return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


class _RemoteCodeCaptioner(_Captioner):
    """The original InternVL checkpoint's own `chat()`, called as the V2V fork calls it."""

    def _generate(self, pixels: torch.Tensor, prompt: str, max_new_tokens: int) -> str:
        response, _ = self.model.chat(self.tokenizer, pixels, prompt,
                                      dict(max_new_tokens=max_new_tokens, do_sample=True),
                                      num_patches_list=[1] * len(pixels), history=None,
                                      return_history=True)
        return response


def check_vlm_folder(vlm_path: str | Path) -> dict:
    """Cheap check that `vlm_path` holds an InternVL model in a layout we load; its config.json."""
    vlm_path = Path(vlm_path)
    if not vlm_path.is_dir():
        raise UserError(f'VLM folder not found: {vlm_path} (download an InternVL model, e.g. '
                        'OpenGVLab/InternVL3_5-8B, and pass its folder with --vlm_path)')
    try:
        config = json.loads((vlm_path / 'config.json').read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f'cannot read {vlm_path / "config.json"}: {exc}; '
                        'pass the folder of an InternVL model with --vlm_path') from exc
    if config.get('model_type') != 'internvl' and 'AutoModel' not in config.get('auto_map', {}):
        raise UserError(f'{vlm_path} is not an InternVL model: its config.json has model_type '
                        f'{config.get("model_type")!r} and no modelling code of its own (auto_map)')
    return config


def load_captioner(vlm_path: str | Path, device: str | torch.device) -> _Captioner:
    """Load the VLM in either layout; prefer the `loaded_vlm` context manager, which frees it."""
    import transformers

    vlm_path, device = Path(vlm_path), torch.device(device)
    config = check_vlm_folder(vlm_path)
    dtype = model_dtype(device)
    if config.get('model_type') == 'internvl':
        tokenizer = transformers.AutoTokenizer.from_pretrained(vlm_path)
        model = transformers.AutoModelForImageTextToText.from_pretrained(vlm_path, dtype=dtype)
        captioner_class = _NativeCaptioner
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(vlm_path, trust_remote_code=True,
                                                               use_fast=False)
        model = transformers.AutoModel.from_pretrained(vlm_path, dtype=dtype, trust_remote_code=True,
                                                       use_flash_attn=False)
        captioner_class = _RemoteCodeCaptioner
    log.info('loaded VLM %s (%s) on %s', vlm_path, captioner_class.__name__.strip('_'), device)
    return captioner_class(model.to(device).eval(), tokenizer, device)


@contextmanager
def loaded_vlm(vlm_path: str | Path, device: str | torch.device) -> Iterator[_Captioner]:
    """Load the VLM, yield it, then free it: no reference survives and the CUDA cache is emptied."""
    captioner = load_captioner(vlm_path, device)
    try:
        yield captioner
    finally:
        captioner.release()
        del captioner
        free_memory(torch.device(device))


def caption_video(video_path: str | Path, *, vlm_path: str | Path, device: str | torch.device,
                  question: str = DEFAULT_QUESTION, num_frames: int = 8, seed: int = 0,
                  max_new_tokens: int = 512, num_video_frames: int | None = None) -> str:
    """Describe the whole video with the VLM (loaded for this call only); `num_video_frames`, when
    the caller knows it, saves counting the frames."""
    check_vlm_folder(vlm_path)  # a missing VLM is reported before any decoding
    frames = sample_frames(video_path, num_frames, num_video_frames)
    with loaded_vlm(vlm_path, device) as vlm:
        caption = vlm.caption(frames, question, seed=seed, max_new_tokens=max_new_tokens)
    log.info('VLM caption: %s', caption)
    return caption
