"""The bundled tiny model, end to end, in one command.

    python -m wan.train.tiny --out OUT            # one H200: about 8 minutes
    python -m wan.train.tiny --out OUT --smoke    # CPU, toy sizes, under 2 minutes: the recipe runs

1. text: a tokenizer over the caption words and a frozen 1-layer umT5 (wan/train/text.py);
2. VAE: a small Wan2.2 VAE trained on fresh synthetic clips through the streaming encode/decode,
   then its latent statistics folded into conv1/conv2 so the stock wrapper normalises to ~N(0, 1);
3. latents: clips encoded once by the exported VAE, loaded through `Wan2_2_VAE`, cached;
4. DiT: a `WanModel` of the ti2v-tiny config trained by flow matching (text dropout for CFG, image
   mode for TI2V), weights averaged (EMA);
5. export: OUT/<name>/ in the official ti2v layout (config.json, diffusion_pytorch_model.safetensors,
   models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/, Wan2.2_VAE.pth); loss curves in
   OUT/<name>_losses.csv and OUT/<name>_losses.png;
6. check: a few prompts sampled through `VideoPipeline`, their colour and direction read from the pixels
   (frames in OUT/<name>_samples.png).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..configs import WAN_CONFIGS
from ..data.synthetic import (DIRECTION_NAMES, caption, captions, measure, render, render_with_coverage, sample_specs,
                              vary)
from ..errors import UserError
from ..modules.vae2_2 import Wan2_2_VAE
from ..utils.checkpoint import SAFETENSORS_STEM
from .flow_matching import FlowMatching, init_dit_weights
from .loop import EMA, Budget, LossLog, optimizer_step, warmup_cosine
from .text import write_text_encoder
from .vae import build_small_vae22, fold_normalisation, latent_statistics, reconstruction_loss

TASK = 'ti2v-tiny'
VAE_CHECKPOINT = WAN_CONFIGS[TASK].vae_checkpoint    # Wan2.2_VAE.pth
DIT_WEIGHTS = f'{SAFETENSORS_STEM}.safetensors'      # diffusion_pytorch_model.safetensors


@dataclass
class Recipe:
    # clips
    height: int = 128
    width: int = 128
    frames: int = 17
    # VAE (Wan2.2 levels; encoder/decoder base widths). 9 frames = the first frame alone, a chunk
    # cached from it and a chunk cached from a full chunk: every case of the streaming scheme.
    vae_frames: int = 9
    vae_dim: int = 8
    vae_dec_dim: int = 12
    vae_res_blocks: int = 1
    vae_batch: int = 64
    vae_lr: float = 1.5e-3
    vae_shape_weight: float = 4.0   # pixels of the moving shape weigh 1 + this in the loss
    vae_steps: int | None = None
    vae_seconds: float | None = 210.0
    stats_clips: int = 1024
    # latent cache
    latent_clips: int = 32768
    encode_batch: int = 256
    # DiT (None: the ti2v-tiny config)
    dit_dim: int | None = None
    dit_ffn_dim: int | None = None
    dit_heads: int | None = None
    dit_layers: int | None = None
    dit_batch: int = 256
    dit_lr: float = 1e-3
    dit_steps: int | None = None
    dit_seconds: float | None = 210.0
    warmup_steps: int = 200
    ema_decay: float = 0.999
    text_drop: float = 0.1
    image_prob: float = 0.3
    # check after export (prompts sampled through the pipeline; 0 = skip)
    eval_prompts: int = 16
    seed: int = 0


SMOKE = Recipe(height=32, width=32, frames=9, vae_frames=5, vae_dim=4, vae_dec_dim=4, vae_batch=4,
               vae_lr=3e-3, vae_steps=60, vae_seconds=None, stats_clips=8, latent_clips=64, encode_batch=16,
               dit_dim=32, dit_ffn_dim=64, dit_heads=2, dit_layers=2, dit_batch=16, dit_lr=1e-3,
               dit_steps=100, dit_seconds=None, warmup_steps=10, eval_prompts=1)


def say(message: str) -> None:
    print(f'[tiny {time.strftime("%H:%M:%S")}] {message}', flush=True)


def autocast(device: torch.device):
    """bf16 autocast on the GPU as the pipelines use; plain fp32 on the CPU."""
    if device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clips(recipe: Recipe, n: int, generator: torch.Generator, device: torch.device, frames: int | None = None):
    specs = sample_specs(n, height=recipe.height, width=recipe.width, generator=generator, device=device)
    return specs, render(specs, frames=frames or recipe.frames, height=recipe.height, width=recipe.width)


def clips_with_coverage(recipe: Recipe, n: int, generator: torch.Generator, device: torch.device):
    specs = sample_specs(n, height=recipe.height, width=recipe.width, generator=generator, device=device)
    return render_with_coverage(specs, frames=recipe.vae_frames, height=recipe.height, width=recipe.width)


# ---------------------------------------------------------------------------------------------
# 2. VAE

def train_vae(recipe: Recipe, device: torch.device, log: LossLog):
    model = build_small_vae22(recipe.vae_dim, recipe.vae_dec_dim, recipe.vae_res_blocks).to(device)
    say(f'VAE: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, batch {recipe.vae_batch} '
        f'x {recipe.vae_frames}x{recipe.height}x{recipe.width}')
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(recipe.seed + 1)
    budget, step, last = Budget(recipe.vae_steps, recipe.vae_seconds), 0, 0.0
    while not budget.done(step):
        video, coverage = clips_with_coverage(recipe, recipe.vae_batch, generator, device)
        with autocast(device):
            loss, stats = reconstruction_loss(model, video, weight=1 + recipe.vae_shape_weight * coverage)
        lr = recipe.vae_lr * warmup_cosine(budget.progress(step), step, recipe.warmup_steps)
        optimizer_step(optimizer, loss, lr, max_norm=1.0)
        log.add('vae', step, budget.elapsed(), loss.item(), lr)
        if budget.elapsed() - last > 15 or step == 0:
            last = budget.elapsed()
            say(f'VAE step {step} {last:.0f}s loss {loss.item():.4f} psnr {float(stats["psnr"]):.1f} dB')
        step += 1
    say(f'VAE: {step} steps in {budget.elapsed():.0f}s')
    return model.eval().requires_grad_(False)


def export_vae(model, recipe: Recipe, folder: Path, device: torch.device) -> Wan2_2_VAE:
    """Fold the measured latent statistics in, save the official file, reload it through the wrapper."""
    generator = torch.Generator(device).manual_seed(recipe.seed + 2)
    batch = min(recipe.encode_batch, recipe.stats_clips)
    mean, std = latent_statistics(model, (clips(recipe, batch, generator, device)[1]
                                          for _ in range(max(1, recipe.stats_clips // batch))))
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    state = fold_normalisation(state, mean.cpu(), std.cpu())
    torch.save(state, folder / VAE_CHECKPOINT)
    vae = Wan2_2_VAE(folder / VAE_CHECKPOINT, dtype=torch.float32, device=device)
    # check: the stock wrapper's normalised latents of fresh clips are ~N(0, 1) per channel
    _, video = clips(recipe, batch, generator, device)
    z = normalised_latents(vae, video)
    zm, zs = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4))
    say(f'VAE latents after folding: channel means in [{zm.min():.2f}, {zm.max():.2f}], '
        f'stds in [{zs.min():.2f}, {zs.max():.2f}]; raw std range [{std.min():.3g}, {std.max():.3g}]')
    def psnr(x: torch.Tensor) -> float:
        return 10 * math.log10(4 / float((vae.model.decode(vae.model.encode(x)) - x).pow(2).mean()))

    say(f'VAE reconstruction PSNR {psnr(video[:4]):.1f} dB, first frame alone {psnr(video[:4, :, :1]):.1f} dB '
        '(fp32, exported weights)')
    return vae


_MEAN = torch.tensor(Wan2_2_VAE.mean).view(1, -1, 1, 1, 1)
_STD = torch.tensor(Wan2_2_VAE.std).view(1, -1, 1, 1, 1)


@torch.no_grad()
def normalised_latents(vae: Wan2_2_VAE, video: torch.Tensor) -> torch.Tensor:
    """`vae.encode` for a batch [B, 3, T, H, W]: the wrapper's model and its normalisation (spec 6.4)."""
    mu = vae.model.encode(video).float()
    return (mu - _MEAN.to(mu.device)) / _STD.to(mu.device)


# ---------------------------------------------------------------------------------------------
# 3. latents

@torch.no_grad()
def encode_dataset(vae: Wan2_2_VAE, recipe: Recipe, device: torch.device) -> tuple[torch.Tensor, list[str]]:
    generator = torch.Generator(device).manual_seed(recipe.seed + 3)
    latents, texts, start = [], [], time.perf_counter()
    for i in range(0, recipe.latent_clips, recipe.encode_batch):
        n = min(recipe.encode_batch, recipe.latent_clips - i)
        specs, video = clips(recipe, n, generator, device)
        latents.append(normalised_latents(vae, video))  # fp32 like inference: bf16 would swamp quiet channels
        texts += captions(specs)
    latents = torch.cat(latents)
    say(f'latents: {tuple(latents.shape)} from {len(texts)} clips in {time.perf_counter() - start:.0f}s')
    return latents, texts


# ---------------------------------------------------------------------------------------------
# 4. DiT

def dit_config(recipe: Recipe, z_dim: int) -> dict:
    cfg = WAN_CONFIGS[TASK]
    return dict(model_type='ti2v', text_len=cfg.text_len, in_dim=z_dim, out_dim=z_dim, freq_dim=cfg.freq_dim,
                dim=recipe.dit_dim or cfg.dim, ffn_dim=recipe.dit_ffn_dim or cfg.ffn_dim,
                num_heads=recipe.dit_heads or cfg.num_heads, num_layers=recipe.dit_layers or cfg.num_layers,
                eps=cfg.eps)


class TextCache:
    """Text embeddings from the shipped T5 files (the pipeline's encoder class), computed once per text."""

    def __init__(self, folder: Path, device: torch.device):
        from ..modules.t5 import T5Encoder
        cfg = WAN_CONFIGS[TASK]
        self.encoder = T5Encoder(folder / cfg.t5_checkpoint, folder / cfg.t5_tokenizer, text_len=cfg.text_len,
                                 dtype=cfg.t5_dtype, device=device)
        self.device = device
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> list[torch.Tensor]:
        new = sorted(set(texts) - set(self.cache))
        for i in range(0, len(new), 512):
            chunk = new[i:i + 512]
            # fp32 as the pipeline hands them to the DiT (spec 5.3, VideoPipeline.encode_prompts)
            self.cache.update(zip(chunk, (u.float() for u in self.encoder(chunk, self.device))))
        return [self.cache[t] for t in texts]


def train_dit(recipe: Recipe, latents: torch.Tensor, texts: list[str], text_cache: TextCache,
              device: torch.device, log: LossLog, resume: Path | None = None):
    """Flow-matching training of a new DiT, or of the one exported in `resume` (fine-tuning)."""
    from ..modules.model import WanModel, read_config

    cfg = WAN_CONFIGS[TASK]
    if resume is None:
        config = dit_config(recipe, latents.shape[1])
        model = WanModel(**config).to(device)
        init_dit_weights(model)
    else:
        config = read_config(resume / 'config.json')
        model = WanModel.from_pretrained(resume, dtype=torch.float32, device=device).train().requires_grad_(True)
    say(f'DiT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, {config}')
    objective = FlowMatching(shift=cfg.sample_shift, text_drop=recipe.text_drop, image_prob=recipe.image_prob,
                             num_train_timesteps=cfg.num_train_timesteps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.dit_lr, betas=(0.9, 0.99), weight_decay=0.0,
                                  fused=device.type == 'cuda')
    ema = EMA(model, recipe.ema_decay)
    generator = torch.Generator(device).manual_seed(recipe.seed + 4)
    cpu_generator = torch.Generator().manual_seed(recipe.seed + 5)
    budget, step, last = Budget(recipe.dit_steps, recipe.dit_seconds), 0, 0.0
    while not budget.done(step):
        index = torch.randint(len(texts), (recipe.dit_batch,), generator=cpu_generator)
        batch_texts = objective.drop_text(vary([texts[i] for i in index.tolist()], cpu_generator),
                                          cfg.sample_neg_prompt, cpu_generator)
        context = text_cache(batch_texts)
        with autocast(device):
            loss = objective.loss(model, latents[index.to(latents.device)], context, generator)
        lr = recipe.dit_lr * warmup_cosine(budget.progress(step), step, recipe.warmup_steps)
        optimizer_step(optimizer, loss, lr, max_norm=1.0)
        ema.update(model, step)
        log.add('dit', step, budget.elapsed(), loss.item(), lr)
        if budget.elapsed() - last > 15 or step == 0:
            last = budget.elapsed()
            say(f'DiT step {step} {last:.0f}s loss {loss.item():.4f} lr {lr:.2e}')
        step += 1
    say(f'DiT: {step} steps in {budget.elapsed():.0f}s')
    return config, ema.state_dict()


def export_dit(config: dict, state: dict[str, torch.Tensor], folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.float().cpu().contiguous() for k, v in state.items()}, str(folder / DIT_WEIGHTS))
    meta = {'_class_name': 'WanModel', '_diffusers_version': '0.33.0'}
    (folder / 'config.json').write_text(json.dumps({**meta, **config}, indent=2) + '\n')


# ---------------------------------------------------------------------------------------------
# 6. check through the pipeline

def evaluation_prompts(n: int, seed: int = 0) -> list[tuple[str, dict[str, str]]]:
    """n (prompt, labels) pairs, cycling through the directions."""
    generator = torch.Generator().manual_seed(seed)
    specs = sample_specs(n, height=128, width=128, generator=generator)
    specs.direction = torch.arange(n) % len(DIRECTION_NAMES)
    return [(caption(**specs.labels(i)), specs.labels(i)) for i in range(n)]


@torch.no_grad()
def evaluate(folder: Path, recipe: Recipe, device: torch.device, sheet: Path | None = None) -> float:
    """Fraction of prompts whose video shows the asked colour and direction (measured from pixels).

    `sheet`: a PNG with one row per prompt (every 4th frame), to look at what the model makes.
    """
    from PIL import Image

    from ..pipelines.pipeline import Request, VideoPipeline
    from ..pipelines.placement import Placement

    cfg = WAN_CONFIGS[TASK]
    pipe = VideoPipeline.from_pretrained(TASK, folder, Placement(device))
    good, rows = 0, []
    for seed, (prompt, labels) in enumerate(evaluation_prompts(recipe.eval_prompts, recipe.seed)):
        request = Request(prompt=prompt, size=(recipe.width, recipe.height), frame_num=recipe.frames,
                          sample_steps=cfg.sample_steps, sample_shift=cfg.sample_shift,
                          guide_scale=cfg.sample_guide_scale, seed=seed)
        frames = ((pipe.generate(request).permute(1, 2, 3, 0).float().cpu() + 1) / 2).clamp(0, 1)  # [T, H, W, 3]
        seen = measure(frames)
        ok = seen.colour == labels['colour'] and seen.direction == labels['direction']
        good += ok
        rows.append(torch.cat(list(frames[::4]), dim=1))
        say(f'check {"ok  " if ok else "FAIL"} {prompt!r}: saw {seen.colour} on {seen.background}, '
            f'moving {seen.direction} {tuple(round(d) for d in seen.displacement)}')
    if sheet is not None and rows:
        Image.fromarray((torch.cat(rows, dim=0) * 255).to(torch.uint8).numpy()).save(sheet)
    return good / max(recipe.eval_prompts, 1)


# ---------------------------------------------------------------------------------------------

def run(recipe: Recipe, out: Path, name: str = TASK, device: torch.device | None = None,
        resume: Path | None = None) -> Path:
    """The whole recipe; with `resume` (an exported folder) only the DiT is trained further."""
    device = device or torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(recipe.seed)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    log, start = LossLog(), time.perf_counter()
    say(f'recipe {asdict(recipe)} on {device}')

    if resume is None:
        write_text_encoder(folder, seed=recipe.seed)
        vae = export_vae(train_vae(recipe, device, log), recipe, folder, device)
    else:  # keep the text encoder and VAE the DiT was trained with
        from ..pipelines.components import missing_files
        cfg = WAN_CONFIGS[TASK]
        if resume.resolve() == folder.resolve():
            raise UserError(f'--resume {resume} is the output folder; write to another --out')
        if missing := missing_files(cfg, resume):
            raise UserError(f'--resume {resume} is not an exported {TASK} folder, missing: {", ".join(missing)}')
        shutil.copytree(resume / cfg.t5_tokenizer, folder / cfg.t5_tokenizer, dirs_exist_ok=True)
        for file in (cfg.t5_checkpoint, VAE_CHECKPOINT):
            shutil.copy2(resume / file, folder / file)
        vae = Wan2_2_VAE(folder / VAE_CHECKPOINT, dtype=torch.float32, device=device)
    latents, texts = encode_dataset(vae, recipe, device)
    config, state = train_dit(recipe, latents, texts, TextCache(folder, device), device, log, resume)
    export_dit(config, state, folder)
    del latents
    log.write_csv(out / f'{name}_losses.csv')
    log.write_png(out / f'{name}_losses.png', title=f'{name}: python -m wan.train.tiny ({device.type})')
    sizes = {p.name: p.stat().st_size for p in folder.rglob('*') if p.is_file()}
    say(f'exported {folder}: {sum(sizes.values()) / 1e6:.2f} MB '
        + ', '.join(f'{k} {v / 1e6:.2f}' for k, v in sorted(sizes.items())))
    if recipe.eval_prompts:
        try:
            accuracy = evaluate(folder, recipe, device, out / f'{name}_samples.png')
            say(f'check: colour and direction right in {accuracy:.0%} of {recipe.eval_prompts} prompts')
        except UserError as exc:  # e.g. a pipeline that does not know the task yet
            say(f'check skipped: {exc}')
    say(f'done in {time.perf_counter() - start:.0f}s')
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m wan.train.tiny', description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, required=True, help='Output folder; the model goes to OUT/NAME/.')
    p.add_argument('--name', default=TASK, help=f'Model folder name (default {TASK}).')
    p.add_argument('--smoke', action='store_true', help='Toy sizes and step counts (CPU, < 2 minutes).')
    p.add_argument('--resume', type=Path, default=None,
                   help='An exported model folder: keep its text encoder and VAE, train its DiT further.')
    p.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available).')
    overridable = ('vae_steps', 'vae_seconds', 'vae_batch', 'vae_lr', 'latent_clips', 'dit_steps', 'dit_seconds',
                   'dit_batch', 'dit_lr', 'eval_prompts', 'seed')
    for name in overridable:
        kind = int if name.endswith(('steps', 'batch', 'clips', 'prompts', 'seed')) else float
        p.add_argument('--' + name.replace('_', '-'), type=kind, default=None, help=f'Override Recipe.{name}.')
    args = p.parse_args(argv)
    recipe = replace(SMOKE if args.smoke else Recipe(),
                     **{k: getattr(args, k) for k in overridable if getattr(args, k) is not None})
    try:
        run(recipe, args.out, args.name, torch.device(args.device) if args.device else None, args.resume)
    except UserError as exc:
        print(f'error: {exc}')
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
