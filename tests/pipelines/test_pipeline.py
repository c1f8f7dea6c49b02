"""VideoPipeline against diffusers' WanPipeline / WanImageToVideoPipeline on identical tiny weights.

Both sides load the same official-layout tiny checkpoint (diffusers through the key maps of
tests/tiny), get the same text embeddings (our umT5 output, zero-padded to 512 as the DiT pads it;
the encoder itself has its own parity test), draw noise from the same seeded CPU generator, and
sample with UniPC on the reference's sigma ladder (diffusers' own UniPC, given the reference's
linspace(0.999, 0, N+1) in place of its linspace(1, 0.001, N+1)). Compared: the latent after every
step and the decoded video. fp32 on the CPU.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny.ckpt import tiny_checkpoints  # noqa: F401 (fixture)
from tests.tiny.dit import diffusers_config as dit_config
from tests.tiny.dit import to_diffusers_state_dict
from tests.tiny.vae import diffusers_config as vae_config
from tests.tiny.vae import to_diffusers
from wan.configs import WAN_CONFIGS
from wan.errors import UserError
from wan.modules.vae2_1 import Wan2_1_VAE
from wan.modules.vae2_2 import Wan2_2_VAE
from wan.pipelines.components import dit_folders
from wan.pipelines.pipeline import Request, VideoPipeline
from wan.pipelines.placement import Placement
from wan.utils.checkpoint import read_sharded, read_tensors
from wan.utils.solvers import build_solver

diffusers = pytest.importorskip('diffusers')

CPU = torch.device('cpu')
PROMPT, NEGATIVE = 'a red circle moves left', 'a blue square'
STEPS = 4
# fp32 on both sides; the two DiTs differ in summation order (RoPE, attention, fused ops), which
# CFG (g = 3..5) amplifies over the steps: observed per-step latent error <= 3.4e-6. The random tiny
# VAE amplifies a latent difference ~10x (its decode alone agrees to 5e-6): observed video error
# <= 5.9e-5.
LATENT_RTOL, VIDEO_RTOL = 1e-5, 2e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def their_transformer(folder: Path):
    config = json.loads((folder / 'config.json').read_text())
    model = diffusers.WanTransformer3DModel(**dit_config(config))
    model.load_state_dict(to_diffusers_state_dict(read_sharded(folder)[0]), strict=True)
    return model.eval()


def their_vae(task: str, ckpt: Path):
    from tests.tiny.ckpt import VAE21_DIM, VAE22_DEC_DIM, VAE22_DIM
    name = WAN_CONFIGS[task].vae_checkpoint
    if name == 'Wan2.2_VAE.pth':
        config = vae_config('2.2', VAE22_DIM, VAE22_DEC_DIM)
        ours = Wan2_2_VAE
        version = '2.2'
    else:
        config, ours, version = vae_config('2.1', VAE21_DIM), Wan2_1_VAE, '2.1'
    vae = diffusers.AutoencoderKLWan(**config, latents_mean=list(ours.mean), latents_std=list(ours.std))
    vae.load_state_dict(to_diffusers(read_tensors(ckpt / name), version), strict=True)
    return vae.eval()


def reference_unipc(shift: float):
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True,
                                                  flow_shift=shift, num_train_timesteps=1000)
    set_timesteps = scheduler.set_timesteps

    def reference_ladder(num_inference_steps=None, device=None, **_):
        set_timesteps(sigmas=np.linspace(0.999, 0, num_inference_steps + 1)[:-1], device=device)
    scheduler.set_timesteps = reference_ladder
    return scheduler


def pad512(context: torch.Tensor) -> torch.Tensor:
    return torch.cat([context, context.new_zeros(512 - context.shape[0], context.shape[1])])[None]


def run_ours(pipe: VideoPipeline, request: Request):
    steps = []
    latents, inputs = pipe.sample(request, callback=lambda s: steps.append(s.latents.clone()))
    video = pipe.decode(latents)
    return steps, latents, (video.clamp(-1, 1) + 1) / 2  # [3, F, H, W] in [0, 1]


def run_theirs(task: str, ckpt: Path, pipe: VideoPipeline, request: Request, width: int, height: int):
    config = WAN_CONFIGS[task]
    folders = dit_folders(config, ckpt)
    models = {name: their_transformer(folder) for name, folder in folders.items()}
    low, high = request.guide_scale
    kwargs = dict(tokenizer=None, text_encoder=None, vae=their_vae(task, ckpt),
                  scheduler=reference_unipc(request.sample_shift))
    if 'boundary' in config:  # transformer = high-noise expert, guidance_scale its scale (diffusers' naming)
        kwargs.update(transformer=models['high'], transformer_2=models['low'], boundary_ratio=config.boundary)
    else:
        kwargs.update(transformer=models['dit'], expand_timesteps=True)
    cls = diffusers.WanPipeline if request.image is None else diffusers.WanImageToVideoPipeline
    their = cls(**kwargs)
    context, context_null = pipe.encode_prompts(request.prompt, request.negative_prompt)
    steps = []

    def record(_, i, t, tensors):
        steps.append(tensors['latents'][0].clone())
        return {}

    extra = {} if request.image is None else {'image': request.image}
    out = their(prompt_embeds=pad512(context), negative_prompt_embeds=pad512(context_null), height=height,
                width=width, num_frames=request.frame_num, num_inference_steps=request.sample_steps,
                guidance_scale=high, guidance_scale_2=low if 'boundary' in config else None,
                generator=torch.Generator().manual_seed(request.seed), output_type='pt',
                callback_on_step_end=record, callback_on_step_end_tensor_inputs=['latents'], **extra)
    return steps, out.frames[0].permute(1, 0, 2, 3)  # [T, C, H, W] -> [3, F, H, W]


CASES = {  # task, size, image?, shift, guide (low, high)
    't2v-A14B': ('t2v-A14B', (64, 48), False, 12.0, (3.0, 4.0)),
    'i2v-A14B': ('i2v-A14B', (64, 64), True, 5.0, (3.5, 2.5)),
    'ti2v-5B-text': ('ti2v-5B', (64, 64), False, 5.0, (5.0, 5.0)),
    'ti2v-5B-image': ('ti2v-5B', (64, 64), True, 5.0, (4.0, 4.0)),
}


@pytest.mark.parametrize('case', list(CASES))
def test_parity_with_diffusers(case, tiny_checkpoints):
    task, (width, height), with_image, shift, guide = CASES[case]
    ckpt = tiny_checkpoints(task)
    pipe = VideoPipeline.from_pretrained(task, ckpt, Placement(CPU))
    image = None
    if with_image:  # already at the output size: both sides' resizes are the identity
        rng = np.random.RandomState(0)
        image = Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))
    request = Request(prompt=PROMPT, negative_prompt=NEGATIVE, size=(width, height), frame_num=5,
                      sample_steps=STEPS, sample_shift=shift, guide_scale=guide, seed=1234, image=image)
    our_steps, latents, our_video = run_ours(pipe, request)
    their_steps, their_video = run_theirs(task, ckpt, pipe, request, width, height)

    _, timesteps = build_solver('unipc', STEPS, shift, CPU)
    if 'boundary' in WAN_CONFIGS[task]:  # both experts take part
        high = (timesteps >= WAN_CONFIGS[task].boundary * 1000).sum().item()
        assert 0 < high < STEPS
    first = 1 if case == 'ti2v-5B-image' else 0  # diffusers imposes frame 0 on the model input only
    errors = [rel_err(ours[:, first:], theirs[:, first:]) for ours, theirs in zip(our_steps, their_steps)]
    video_err = rel_err(our_video, their_video)
    print(f'{case}: per-step latent rel. err {["%.1e" % e for e in errors]}, video rel. err {video_err:.1e}, '
          f'max abs {(our_video - their_video).abs().max().item():.1e}')
    assert len(our_steps) == len(their_steps) == STEPS
    assert max(errors) < LATENT_RTOL and video_err < VIDEO_RTOL
    assert our_video.shape == their_video.shape == (3, 5, height, width)


def test_same_seed_same_video_and_float_guide(tiny_checkpoints):
    pipe = VideoPipeline.from_pretrained('t2v-A14B', tiny_checkpoints('t2v-A14B'), Placement(CPU))
    request = dict(prompt=PROMPT, size=(32, 32), frame_num=1, sample_steps=2, sample_shift=12.0, seed=5)
    a, _ = pipe.sample(Request(guide_scale=(4.0, 4.0), **request))
    b, _ = pipe.sample(Request(guide_scale=4.0, **request))  # one float -> both experts
    c, _ = pipe.sample(Request(guide_scale=4.0, **{**request, 'seed': 6}))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_i2v_needs_an_image(tiny_checkpoints):
    pipe = VideoPipeline.from_pretrained('i2v-A14B', tiny_checkpoints('i2v-A14B'), Placement(CPU))
    with pytest.raises(UserError, match='needs an image'):
        pipe.sample(Request(prompt=PROMPT, size=(32, 32), frame_num=1, sample_steps=1, sample_shift=5.0,
                            guide_scale=3.5))
