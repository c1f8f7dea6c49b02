"""Tiny text/image-to-video model bundled with the project (spec 7.3 pipeline, own small sizes).

Same layout, classes and pipeline as ti2v-5B (Wan2.2 VAE, 48 latent channels, stride 4x16x16, one
dense DiT), trained on synthetic clips of coloured shapes by `python -m wan.train.tiny`. It runs on
a CPU in seconds; it knows only captions like 'a red circle moves left on a blue background'.
"""
import copy

from .wan_ti2v_5B import ti2v_5B

ti2v_tiny = copy.deepcopy(ti2v_5B)
ti2v_tiny.__name__ = 'Config: Wan TI2V tiny'

# t5: the same file names; a 1-layer umT5 (width 4096, as the DiT's text_dim) over the caption words
ti2v_tiny.text_len = 32
ti2v_tiny.sample_neg_prompt = ''  # the unconditional text the model was trained with

# transformer (the shipped config.json holds the same values). dim must exceed the 2*2*48 = 192
# values of a token: the velocity carries the noise of every one of them through the residual stream.
ti2v_tiny.dim = 256
ti2v_tiny.ffn_dim = 384
ti2v_tiny.num_heads = 4
ti2v_tiny.num_layers = 3

# inference
ti2v_tiny.sample_fps = 8
ti2v_tiny.sample_shift = 3.0
ti2v_tiny.sample_steps = 25
ti2v_tiny.sample_guide_scale = 4.0
ti2v_tiny.frame_num = 17
