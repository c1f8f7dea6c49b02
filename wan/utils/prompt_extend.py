"""Prompt extension (spec 11): an LLM rewrites a short prompt into a detailed one.

Two back ends: Alibaba Cloud DashScope through its SDK (`pip install 'wan[prompt]'`; key in env
DASH_API_KEY, optional base URL in DASH_API_URL), or a local Qwen model through transformers (a text
model, or a Qwen-VL model when an image is given). Extension is best-effort: on any failure the
original prompt comes back and one warning line is logged. Only a wrong argument (method, task,
language) is an error.
"""
from __future__ import annotations

import base64
import io
import logging
import math
import os
import random

import torch
from PIL import Image

from ..errors import UserError
from .system_prompt import choose_system_prompt
from .vlm import free_memory, model_dtype, seeded

log = logging.getLogger(__name__)

METHODS = ('dashscope', 'local_qwen')
LANGUAGES = ('zh', 'en')
DASHSCOPE_URL = 'https://dashscope.aliyuncs.com/api/v1'
DASHSCOPE_MAX_IMAGE_AREA = 512 * 512

# Short names the reference accepts for local models (spec 11); anything else is a path or hub id.
LOCAL_ALIASES = {
    'QwenVL2.5_3B': 'Qwen/Qwen2.5-VL-3B-Instruct',
    'QwenVL2.5_7B': 'Qwen/Qwen2.5-VL-7B-Instruct',
    'Qwen2.5_3B': 'Qwen/Qwen2.5-3B-Instruct',
    'Qwen2.5_7B': 'Qwen/Qwen2.5-7B-Instruct',
    'Qwen2.5_14B': 'Qwen/Qwen2.5-14B-Instruct',
}
DEFAULT_MODELS = {  # (method, with image) -> model
    ('dashscope', False): 'qwen-plus',
    ('dashscope', True): 'qwen-vl-max',
    ('local_qwen', False): 'Qwen2.5_14B',
    ('local_qwen', True): 'QwenVL2.5_7B',
}
QWEN_VL_MIN_PIXELS, QWEN_VL_MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28


def prompt_kind(task: str, has_image: bool) -> str:
    """'t2v' or 'i2v' for a task name ('t2v-A14B', 'ti2v-5B', 'v2v-14B', or just 'v2v')."""
    family = task.split('-')[0]
    if family == 't2v' or (family == 'ti2v' and not has_image):
        return 't2v'
    if family in ('i2v', 'ti2v', 'v2v'):
        return 'i2v'  # v2v rewrites against the last frame of the input video
    raise UserError(f'prompt extension does not support task {task!r}: '
                    'use it with t2v, i2v, ti2v or v2v tasks')


def extend_prompt(prompt: str, *, method: str, model: str | None, task: str,
                  target_lang: str = 'zh', image: Image.Image | None = None, seed: int = -1,
                  device: str | torch.device | None = None, timeout_s: float = 60.0,
                  attempts: int = 4, max_new_tokens: int = 512) -> str:
    """Return the extended prompt, or `prompt` itself (with a logged warning) if extension fails.

    `timeout_s` and `attempts` bound a DashScope call; `device` places a local model (default:
    CUDA when available) and `max_new_tokens` bounds its answer. A negative `seed` draws a
    random one.
    """
    if method not in METHODS:
        raise UserError(f'unknown prompt extension method {method!r}: choose one of {", ".join(METHODS)}')
    if target_lang not in LANGUAGES:
        raise UserError(f'unknown prompt extension language {target_lang!r}: choose zh or en')
    kind = prompt_kind(task, image is not None)
    system = choose_system_prompt(kind, target_lang, empty_prompt=not prompt.strip())
    model = model or DEFAULT_MODELS[(method, image is not None)]
    if seed < 0:
        seed = random.randint(0, 2**31 - 1)
    try:
        if method == 'dashscope':
            text = _dashscope(system, prompt, image, model, seed, timeout_s, attempts)
        else:
            text = _local_qwen(system, prompt, image, model, seed, device, max_new_tokens)
        text = ' '.join(text.split())  # one line: T5 cleaning collapses whitespace anyway (spec 5.2)
        if not text:
            raise ValueError('the model returned an empty prompt')
    except Exception as exc:  # best-effort by design: any failure keeps the user's prompt
        reason = ' '.join(str(exc).split())[:200]
        log.warning('prompt extension with %s (%s) failed, using the original prompt: %s: %s',
                    method, model, type(exc).__name__, reason)
        return prompt
    log.info('extended prompt: %s', text)
    return text


# ---------------------------------------------------------------------------------------------
# DashScope

def _image_data_url(image: Image.Image) -> str:
    """Shrink to at most 512*512 pixels keeping the aspect ratio (spec 11); inline as a PNG."""
    width, height = image.size
    area = min(width * height, DASHSCOPE_MAX_IMAGE_AREA)
    size = (round(math.sqrt(area * width / height)), round(math.sqrt(area * height / width)))
    buffer = io.BytesIO()
    image.convert('RGB').resize(size, Image.BICUBIC).save(buffer, format='PNG')
    return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()


def _reply_text(response) -> str:
    """The assistant's text from a DashScope response (a string, or a list of {'text': ...})."""
    content = response.output.choices[0].message.content
    if isinstance(content, list):
        content = ''.join(part['text'] for part in content if 'text' in part)
    if not isinstance(content, str):
        raise ValueError(f'unexpected reply content {content!r:.100}')
    return content


def _dashscope(system: str, prompt: str, image: Image.Image | None, model: str, seed: int,
               timeout_s: float, attempts: int) -> str:
    try:
        import dashscope
    except ImportError as exc:
        raise RuntimeError("the dashscope package is missing: pip install 'wan[prompt]'") from exc
    api_key = os.environ.get('DASH_API_KEY')
    if not api_key:
        raise RuntimeError('set DASH_API_KEY to use DashScope prompt extension')
    dashscope.base_http_api_url = os.environ.get('DASH_API_URL') or DASHSCOPE_URL
    if image is None:
        api = dashscope.Generation
        messages = [{'role': 'system', 'content': system}, {'role': 'user', 'content': prompt}]
        extra = {'result_format': 'message'}
    else:
        api = dashscope.MultiModalConversation
        messages = [{'role': 'system', 'content': [{'text': system}]},
                    {'role': 'user', 'content': [{'text': prompt}, {'image': _image_data_url(image)}]}]
        extra = {}

    error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            response = api.call(model=model, messages=messages, seed=seed, api_key=api_key,
                                request_timeout=timeout_s, **extra)
            if response.status_code != 200:
                raise RuntimeError(f'HTTP {response.status_code} {getattr(response, "code", "")}: '
                                   f'{getattr(response, "message", "")}')
            return _reply_text(response)
        except Exception as exc:  # network errors, timeouts, HTTP errors, malformed replies
            log.debug('DashScope attempt %d/%d failed: %s', attempt, attempts, exc)
            error = exc
    raise RuntimeError(f'{attempts} attempts failed, last: {error}') from error


# ---------------------------------------------------------------------------------------------
# Local Qwen through transformers

def _local_qwen(system: str, prompt: str, image: Image.Image | None, model: str, seed: int,
                device: str | torch.device | None, max_new_tokens: int) -> str:
    import transformers

    path = LOCAL_ALIASES.get(model, model)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtype = model_dtype(device)
    llm = None
    try:
        if image is None:
            processor = transformers.AutoTokenizer.from_pretrained(path)
            llm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            messages = [{'role': 'system', 'content': system}, {'role': 'user', 'content': prompt}]
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = processor([text], return_tensors='pt')
        else:
            processor = transformers.AutoProcessor.from_pretrained(
                path, min_pixels=QWEN_VL_MIN_PIXELS, max_pixels=QWEN_VL_MAX_PIXELS)
            llm = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
            messages = [{'role': 'system', 'content': [{'type': 'text', 'text': system}]},
                        {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': prompt}]}]
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = processor(text=[text], images=[image.convert('RGB')], return_tensors='pt')
        llm = llm.to(device).eval()
        inputs = inputs.to(device)
        with seeded(seed, device):
            output = llm.generate(**inputs, max_new_tokens=max_new_tokens)
        new_tokens = output[0, inputs['input_ids'].shape[1]:]
        tokenizer = getattr(processor, 'tokenizer', processor)
        return tokenizer.decode(new_tokens, skip_special_tokens=True)
    finally:
        del llm  # free the weights before the DiT loads
        free_memory(device)
