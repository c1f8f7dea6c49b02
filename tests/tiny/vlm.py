"""Tiny random language models saved with save_pretrained, for the VLM and prompt-extension tests.

- `build_tiny_internvl`: a transformers-native InternVL (tiny InternVL vision tower + tiny Qwen2
  text model) with a locally trained byte-level BPE tokenizer that knows InternVL's image tokens.
- `build_tiny_qwen2`: a tiny Qwen2 causal LM with the same kind of tokenizer and a chat template.
Nothing is downloaded; each builds in well under a second once transformers is imported.
"""
from __future__ import annotations

from pathlib import Path

import torch

# Qwen's chat format; image items render as InternVL's context token.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}<IMG_CONTEXT>{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<img>', '</img>', '<IMG_CONTEXT>',
                  '<video>']
CORPUS = [
    'a cat plays the piano in a warm room, the camera slowly pushes in',
    'Describe this video in detail. Frame1: Frame2: continue video',
    'a red car drives along a coastal road at sunset, aerial shot',
    '一只猫在弹钢琴 镜头缓缓推近 写实风格',
]


def build_tiny_tokenizer(chat_template: str = CHAT_TEMPLATE, vocab_size: int = 320):
    """A byte-level BPE tokenizer (any text encodes) with Qwen/InternVL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token='<|im_end|>', pad_token='<|endoftext|>',
        chat_template=chat_template,
        extra_special_tokens={'start_image_token': '<img>', 'end_image_token': '</img>',
                              'context_image_token': '<IMG_CONTEXT>', 'video_token': '<video>'})


def qwen_text_config(tokenizer) -> dict:
    return dict(model_type='qwen2', vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                max_position_embeddings=4096, tie_word_embeddings=True,
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def save_vlm_folder(model, tokenizer, folder: Path) -> Path:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_internvl(folder: str | Path, image_seq_length: int = 16, seed: int = 0) -> Path:
    """InternVL with 448x448 input, 56-pixel patches (8x8 grid), pixel shuffle 0.5 -> 16 tokens."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    vision = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  image_size=448, patch_size=56)
    config = InternVLConfig(vision_config=vision, text_config=qwen_text_config(tokenizer),
                            image_token_id=tokenizer.context_image_token_id,
                            image_seq_length=image_seq_length, downsample_ratio=0.5)
    torch.manual_seed(seed)
    return save_vlm_folder(InternVLForConditionalGeneration(config), tokenizer, Path(folder))


def build_tiny_qwen2(folder: str | Path, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = qwen_text_config(tokenizer)
    config.pop('model_type')
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**config))
    model.generation_config.do_sample = True  # as Qwen2.5-Instruct's generation_config.json
    return save_vlm_folder(model, tokenizer, Path(folder))
