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

from tests.tiny.vlm import build_tiny_qwen2
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
