"""`VideoPipeline`: text encoder + VAE + DiT expert(s) + placement; one request -> latents -> video.

    pipe = VideoPipeline.from_pretrained('t2v-A14B', './models/Wan2.2-T2V-A14B', Placement(device))
    video = pipe.generate(Request(prompt='...', size=(1280, 720), frame_num=81, ...))  # [3, F, H, W]

Each task contributes only a prepare_*() (t2v.py, i2v.py, ti2v.py); sampling is the one loop in denoise.py.
"""
from __future__ import annotations

import functools
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch import nn

from ..configs import WAN_CONFIGS
from ..errors import UserError
from ..modules.attention import resolve_in_background
from . import components
from .denoise import HIGH, DenoiseInputs, GuidedModel, StepInfo, denoise
from .i2v import prepare_i2v
from .placement import Placement
from .t2v import prepare_t2v
from .ti2v import prepare_ti2v
from .timing import StageTimer

log = logging.getLogger(__name__)

# task -> which prepare_*() builds its inputs (v2v runs I2V / TI2V from the input's last frame)
TASK_KIND = {'t2v-A14B': 't2v', 'i2v-A14B': 'i2v', 'ti2v-5B': 'ti2v', 'v2v-14B': 'i2v', 'v2v-5B': 'ti2v',
             'ti2v-tiny': 'ti2v'}


@dataclass
class Request:
    prompt: str
    size: tuple[int, int]            # (width, height); in image modes only the area width * height counts
    frame_num: int
    sample_steps: int
    sample_shift: float
    guide_scale: float | tuple[float, float]   # a float applies to both experts; tuple is (low, high)
    seed: int = -1                   # < 0: random in [0, sys.maxsize]
    negative_prompt: str = ''        # '' -> the config's negative prompt
    image: Image.Image | None = None
    sample_solver: str = 'unipc'


def resolve_seed(seed: int) -> int:
    return seed if seed >= 0 else random.randint(0, sys.maxsize)


def high_noise_first(experts: dict[str, nn.Module]) -> list[nn.Module]:
    """The experts in the order the sampler needs them: the high-noise one first (spec 7.1)."""
    return sorted(experts.values(), key=lambda m: m is not experts.get(HIGH))


class VideoPipeline:
    def __init__(self, task: str, *, text_encoder, vae, experts: dict[str, nn.Module], placement: Placement,
                 sp_size: int = 1, autocast_dtype: torch.dtype | None = None, timer: StageTimer | None = None,
                 parallel=None):
        if task not in TASK_KIND:
            raise UserError(f'task {task} has no text/image-to-video pipeline')
        self.task = task
        self.kind = TASK_KIND[task]
        self.config = WAN_CONFIGS[task]
        self.text_encoder, self.vae, self.experts = text_encoder, vae, experts
        self.placement = placement
        self.device = placement.device
        self.parallel = parallel  # wan.distributed.Parallel of a multi-process run, else None
        self.sp_size = parallel.sp_size if parallel is not None else sp_size
        self.autocast_dtype = autocast_dtype
        self.timer = timer or StageTimer(self.device)

    @classmethod
    def from_pretrained(cls, task: str, ckpt_dir: str | Path, placement: Placement, *,
                        convert_model_dtype: bool = False, sp_size: int = 1,
                        autocast_dtype: torch.dtype | None = None,
                        timer: StageTimer | None = None, parallel=None,
                        compile_dit: bool = False, vae_dtype: torch.dtype = torch.float32) -> VideoPipeline:
        config = WAN_CONFIGS[task]
        components.check_checkpoint_dir(config, ckpt_dir, task)
        timer = timer or StageTimer(placement.device)
        with timer.stage('load'):
            resolve_in_background(placement.device)  # FA4's import and kernel load hide behind loading
            text_encoder = components.load_text_encoder(config, ckpt_dir)
            if parallel is None:
                placement.prepare_text_encoder(text_encoder.model)
            vae = components.load_vae(config, ckpt_dir, placement.device, vae_dtype)
            dtype = config.param_dtype if convert_model_dtype else None
            if parallel is None:
                folders = components.dit_folders(config, ckpt_dir)  # the high-noise expert first
                experts = {}
                for name, folder in folders.items():  # each host copy builds while the next loads
                    experts[name] = components.load_dit(folder, dtype, placement.dit_load_device)
                    placement.prepare([experts[name]], swapping=len(folders) > 1)
            else:  # multi-process: CPU (memory-mapped) weights in; seams, FSDP shards or a device move out
                if parallel.config.dit_fsdp:
                    dtype = None  # FSDP gathers in bf16 itself, as the reference (spec 10.1)
                experts = {name: parallel.parallelize_dit(components.load_dit(folder, dtype, torch.device('cpu')))
                           for name, folder in components.dit_folders(config, ckpt_dir).items()}
                parallel.shard_text_encoder(text_encoder.model)
            if compile_dit:
                experts = {name: components.compile_dit(model) for name, model in experts.items()}
        return cls(task, text_encoder=text_encoder, vae=vae, experts=experts, placement=placement,
                   sp_size=sp_size, autocast_dtype=autocast_dtype, timer=timer, parallel=parallel)

    @property
    def boundary(self) -> float | None:
        """The timestep where A14B switches from the high- to the low-noise expert (spec 7.1)."""
        if 'boundary' not in self.config:
            return None
        return self.config.boundary * self.config.num_train_timesteps

    def encode_prompts(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Two separate batch-1 calls; each result trimmed to its true length [L_i, 4096] (spec 5.3)."""
        with self.placement.text_encoder(self.text_encoder.model) as device:
            context = self.text_encoder([prompt], device)[0]
            context_null = self.text_encoder([negative_prompt], device)[0]
        return context.to(self.device, torch.float32), context_null.to(self.device, torch.float32)

    def prepare(self, request: Request, generator: torch.Generator) -> DenoiseInputs:
        common = dict(vae_stride=self.config.vae_stride, patch_size=self.config.patch_size,
                      generator=generator, device=self.device, sp_size=self.sp_size)
        if self.kind == 't2v':
            return prepare_t2v(request.size, request.frame_num, z_dim=self.vae.z_dim, **common)
        if self.kind == 'i2v':
            if request.image is None:
                raise UserError(f'{self.task} needs an image (pass --image PATH)')
            width, height = request.size
            return prepare_i2v(request.image, width * height, request.frame_num, vae=self.vae, **common)
        return prepare_ti2v(request.image, request.size, request.frame_num, vae=self.vae, **common)

    @torch.no_grad()
    def sample(self, request: Request, callback: Callable[[StepInfo], None] | None = None
               ) -> tuple[torch.Tensor, DenoiseInputs]:
        """Encode, prepare, denoise; returns the final latent [C, T, h, w] and the prepared inputs."""
        from ..utils.solvers import build_solver

        seed = resolve_seed(request.seed)
        negative_prompt = request.negative_prompt or self.config.sample_neg_prompt
        guide = request.guide_scale
        guide_scale = (float(guide), float(guide)) if isinstance(guide, (int, float)) else tuple(guide)

        self.placement.prepare(high_noise_first(self.experts))  # built since loading, unless made otherwise
        with self.timer.stage('text'):
            context, context_null = self.encode_prompts(request.prompt, negative_prompt)
        # noise from a generator on the target device, seeded with the seed (spec 15.15)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with self.timer.stage('prepare'):
            inputs = self.prepare(request, generator)
        solver, timesteps = build_solver(request.sample_solver, request.sample_steps, request.sample_shift,
                                         self.device, num_train_timesteps=self.config.num_train_timesteps)
        model_fn = GuidedModel(functools.partial(self.placement.activate, self.experts),
                               context=context, context_null=context_null, seq_len=inputs.seq_len,
                               guide_scale=guide_scale, boundary=self.boundary, y=inputs.y,
                               token_mask=inputs.token_mask, autocast_dtype=self.autocast_dtype,
                               cfg_parallel=self.parallel.cfg if self.parallel is not None else None)

        def on_step(step: StepInfo) -> None:
            self.timer.add_step(step.index, step.timestep, step.expert, step.seconds)
            if callback is not None:
                callback(step)

        with self.timer.stage('denoise'):
            latents = denoise(model_fn, inputs.latents, solver, timesteps, generator=generator,
                              reimpose=inputs.reimpose, callback=on_step)
            self.placement.release(self.experts)
        return latents, inputs

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, on_frames: Callable[[torch.Tensor], None] | None = None
               ) -> torch.Tensor:
        """Latent [C, T, h, w] -> video [3, 1 + 4(T-1), H, W] in [-1, 1]; `on_frames` sees the
        frames [3, k, H, W] as they are decoded."""
        with self.timer.stage('decode'):
            return self.vae.decode([latents], on_frames=on_frames)[0]

    def generate(self, request: Request, callback: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
        latents, _ = self.sample(request, callback)
        return self.decode(latents)
