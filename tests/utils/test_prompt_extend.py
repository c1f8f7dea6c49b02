"""wan/utils/prompt_extend.py: DashScope against a fake local server, local Qwen on a tiny model."""
import base64
import io
import json
import logging
import sys
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.tiny.vlm import build_tiny_qwen2, build_tiny_tokenizer, qwen_text_config, save_vlm_folder
from wan.errors import UserError
from wan.utils import prompt_extend, system_prompt

def ok_reply(content):
    return 200, {'request_id': 'r', 'output': {'choices': [
        {'finish_reason': 'stop', 'message': {'role': 'assistant', 'content': content}}]},
        'usage': {'input_tokens': 1, 'output_tokens': 1}}


class FakeDashScope:
    """A local HTTP server speaking DashScope's generation API; `reply` decides each answer."""

    def __init__(self):
        self.requests, self.reply = [], lambda: ok_reply('A detailed prompt.')
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                fake.requests.append((self.path, dict(self.headers), body))
                status, payload = fake.reply()
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header('Content-Type', 'application/json')
                    self.send_header('Content-Length', str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}/api/v1'
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    pytest.importorskip('dashscope', reason="the DashScope tests need the 'prompt' extra (dashscope)")
    fake = FakeDashScope()
    monkeypatch.setenv('DASH_API_KEY', 'test-key')
    monkeypatch.setenv('DASH_API_URL', fake.url)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def extend(prompt='a cat', **kwargs):
    args = dict(method='dashscope', model=None, task='t2v-A14B', target_lang='en', seed=7)
    return prompt_extend.extend_prompt(prompt, **{**args, **kwargs})


def test_dashscope_text(server):
    assert extend() == 'A detailed prompt.'
    (path, headers, body), = server.requests
    assert path == '/api/v1/services/aigc/text-generation/generation'
    assert headers['Authorization'] == 'Bearer test-key'
    assert body['model'] == 'qwen-plus' and body['parameters']['seed'] == 7
    assert body['input']['messages'] == [{'role': 'system', 'content': system_prompt.T2V_EN},
                                         {'role': 'user', 'content': 'a cat'}]
    # ti2v without an image is text-to-video; Chinese output asks for the Chinese prompt.
    extend(task='ti2v-5B', target_lang='zh', model='qwen-max')
    body = server.requests[-1][2]
    assert body['model'] == 'qwen-max' and body['input']['messages'][0]['content'] == system_prompt.T2V_ZH


@pytest.mark.parametrize('task', ['i2v-A14B', 'ti2v-5B', 'v2v-14B', 'v2v-5B'])
def test_dashscope_image(server, task):
    server.reply = lambda: ok_reply([{'text': 'The cat turns\nits head.'}])
    image = Image.new('RGB', (1024, 768), (10, 200, 30))
    assert extend(task=task, image=image) == 'The cat turns its head.'
    path, _, body = server.requests[-1]
    assert path == '/api/v1/services/aigc/multimodal-generation/generation'
    assert body['model'] == 'qwen-vl-max'
    system, user = body['input']['messages']
    assert system == {'role': 'system', 'content': [{'text': system_prompt.I2V_EN}]}
    assert user['content'][0] == {'text': 'a cat'}
    url = user['content'][1]['image']
    assert url.startswith('data:image/png;base64,')
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(',', 1)[1])))
    # area 512*512 at the image's 4:3 aspect (spec 11)
    assert sent.size == (591, 443) and sent.getpixel((100, 100)) == (10, 200, 30)
    # An empty prompt asks the model to invent the motion.
    extend('', task=task, image=image)
    assert server.requests[-1][2]['input']['messages'][0]['content'][0]['text'] == system_prompt.I2V_EMPTY_EN


@pytest.mark.parametrize('reply', [
    lambda: (500, {'code': 'InternalError', 'message': 'boom'}),
    lambda: (200, b'this is not json'),
    lambda: (200, {'request_id': 'r', 'output': {}}),
    lambda: (200, {'request_id': 'r', 'output': {'choices': [{'message': {'content': None}}]}}),
], ids=['http-500', 'not-json', 'no-choices', 'no-content'])
def test_dashscope_failure_falls_back(server, reply, caplog):
    server.reply = reply
    with caplog.at_level(logging.WARNING, logger='wan.utils.prompt_extend'):
        assert extend('a dog', attempts=3) == 'a dog'
    assert len(server.requests) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and '\n' not in warnings[0].getMessage()
    assert 'using the original prompt' in warnings[0].getMessage()


def test_dashscope_timeout_falls_back_in_bounded_time(server):
    def slow():
        time.sleep(3)
        return ok_reply('too late')
    server.reply = slow
    start = time.monotonic()
    assert extend('a dog', timeout_s=0.3, attempts=2) == 'a dog'
    assert time.monotonic() - start < 2.5
    assert len(server.requests) == 2


def test_dashscope_without_key_or_package(server, monkeypatch, caplog):
    monkeypatch.delenv('DASH_API_KEY')
    with caplog.at_level(logging.WARNING):
        assert extend('a dog') == 'a dog'
    assert 'DASH_API_KEY' in caplog.text and server.requests == []
    monkeypatch.setenv('DASH_API_KEY', 'k')
    monkeypatch.setitem(sys.modules, 'dashscope', None)  # import fails
    with caplog.at_level(logging.WARNING):
        assert extend('a dog') == 'a dog'
    assert "pip install 'wan[prompt]'" in caplog.text


def test_argument_errors():
    with pytest.raises(UserError, match='unknown prompt extension method'):
        extend(method='openai')
    with pytest.raises(UserError, match='language'):
        extend(target_lang='fr')
    with pytest.raises(UserError, match="does not support task 's2v-14B'"):
        extend(task='s2v-14B')


def test_local_qwen(tmp_path, monkeypatch, caplog):
    import transformers
    folder = build_tiny_qwen2(tmp_path / 'qwen')
    models, real_load = [], transformers.AutoModelForCausalLM.from_pretrained

    def recording_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, 'from_pretrained', recording_load)
    args = dict(method='local_qwen', model=str(folder), task='t2v', target_lang='en',
                device='cpu', max_new_tokens=12)
    first = prompt_extend.extend_prompt('a cat', seed=1, **args)
    assert isinstance(first, str) and first and first != 'a cat' and '\n' not in first
    assert prompt_extend.extend_prompt('a cat', seed=1, **args) == first
    assert prompt_extend.extend_prompt('a cat', seed=2, **args) != first
    assert len(models) == 3 and all(ref() is None for ref in models), 'the LLM was not freed'
    with caplog.at_level(logging.WARNING):
        missing = dict(args, model=str(tmp_path / 'nowhere'))
        assert prompt_extend.extend_prompt('a cat', seed=1, **missing) == 'a cat'
    assert 'using the original prompt' in caplog.text


# Qwen2.5-VL's chat format: an image item renders as <|vision_start|><|image_pad|><|vision_end|>.
QWEN_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_VL_TOKENS = ['<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>']


def build_tiny_qwen_vl(folder):
    """Qwen2.5-VL: one vision block (14-pixel patches, 2x2 merge) + the tiny Qwen2 text model, and
    a Qwen2_5_VLProcessor whose image size limits are those of Qwen2.5-VL-7B-Instruct's
    preprocessor_config.json (min 56*56, max 16384*28*28 pixels), so extend_prompt's own limits
    (spec 11: 256*28*28 .. 1280*28*28) are what the test sees."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer = build_tiny_tokenizer(QWEN_VL_TEMPLATE)
    tokenizer.add_special_tokens({'additional_special_tokens': QWEN_VL_TOKENS})
    text = qwen_text_config(tokenizer)
    text.pop('model_type')
    text['rope_scaling'] = {'type': 'mrope', 'mrope_section': [2, 3, 3]}  # head_dim 16 -> 8 pairs
    start, end, image, video = tokenizer.convert_tokens_to_ids(QWEN_VL_TOKENS)
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=32,
                  fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=image,
                              video_token_id=video, vision_start_token_id=start,
                              vision_end_token_id=end)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.do_sample = True
    folder = save_vlm_folder(model, tokenizer, folder)
    size = {'shortest_edge': 56 * 56, 'longest_edge': 16384 * 28 * 28}
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(size=size), tokenizer=tokenizer,
                        video_processor=Qwen2VLVideoProcessor(size=size),
                        chat_template=QWEN_VL_TEMPLATE).save_pretrained(folder)
    return folder


def test_local_qwen_vl_with_image(tmp_path, monkeypatch, caplog):
    """Local Qwen2.5-VL with an image, end to end. Needs torchvision (transformers' Qwen2-VL video
    processor, which AutoProcessor loads with the image processor, requires it): skipped where it
    is missing, as in CI."""
    pytest.importorskip('torchvision', reason="transformers' Qwen2-VL processor needs torchvision")
    import torch
    import transformers
    folder = build_tiny_qwen_vl(tmp_path / 'qwen_vl')
    model_class = transformers.Qwen2_5_VLForConditionalGeneration
    seen, models, real_generate = [], [], model_class.generate

    def spy(self, **inputs):
        seen.append(inputs)
        models.append(weakref.ref(self))
        return real_generate(self, **inputs)

    monkeypatch.setattr(model_class, 'generate', spy)
    args = dict(method='local_qwen', model=str(folder), task='i2v-A14B', target_lang='en',
                device='cpu', max_new_tokens=8)
    small = Image.new('RGB', (64, 48), (10, 200, 30))
    with caplog.at_level(logging.WARNING, logger='wan.utils.prompt_extend'):
        first = prompt_extend.extend_prompt('a cat', image=small, seed=1, **args)
        again = prompt_extend.extend_prompt('a cat', image=small, seed=1, **args)
        other = prompt_extend.extend_prompt('a cat', image=small, seed=2, **args)
        large = prompt_extend.extend_prompt('a cat', image=Image.new('RGB', (2000, 1000)), seed=1,
                                            **args)
    fallbacks = [r for r in caplog.records if r.name == 'wan.utils.prompt_extend']
    assert fallbacks == [], 'prompt extension fell back to the original prompt'
    assert isinstance(first, str) and first and first != 'a cat' and '\n' not in first
    assert again == first != other and large != 'a cat'
    assert len(models) == 4 and all(ref() is None for ref in models), 'the VLM was not freed'

    # min_pixels = 256*28*28: 64x48 scales up by sqrt(200704/3072) ~ 8.08 and each side rounds up
    # to a multiple of 28 -> 532x392 pixels, a 38x28 grid of 14-pixel patches (the checkpoint's own
    # minimum, 56*56, would give 56x56 pixels: 4x4 patches).
    inputs = seen[0]
    assert inputs['image_grid_thw'].tolist() == [[1, 28, 38]]
    image_pad = transformers.AutoConfig.from_pretrained(folder).image_token_id
    assert (inputs['input_ids'] == image_pad).sum().item() == 28 * 38 // 4  # 2x2 merge
    # Every patch carries the image's colour, CLIP-normalised (3 channels x 2 frames x 14 x 14).
    mean = torch.tensor(transformers.image_utils.OPENAI_CLIP_MEAN)
    std = torch.tensor(transformers.image_utils.OPENAI_CLIP_STD)
    expected = ((torch.tensor([10, 200, 30]) / 255 - mean) / std).view(1, 3, 1)
    patches = inputs['pixel_values'].view(28 * 38, 3, 2 * 14 * 14)
    torch.testing.assert_close(patches, expected.expand_as(patches), rtol=0, atol=1e-5)
    # max_pixels = 1280*28*28: 2000x1000 shrinks by sqrt(2e6/1003520) ~ 1.41, sides rounded down
    # to multiples of 28 -> 1400x700 pixels, 100x50 patches (the checkpoint's 16384*28*28 would
    # keep 1988x1008).
    assert seen[3]['image_grid_thw'].tolist() == [[1, 50, 100]]
