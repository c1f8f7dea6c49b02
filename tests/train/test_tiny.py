"""The tiny-model recipe: a few-step run exports the official ti2v layout that the large models'
loaders read, and the full-size recipe fits the shipping budget."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch

from wan.configs import WAN_CONFIGS
from wan.modules.model import WanModel
from wan.modules.t5 import T5Encoder
from wan.modules.vae2_2 import Wan2_2_VAE
from wan.pipelines import components
from wan.train.text import frozen_t5_state_dict, tokenizer_pieces
from wan.train.tiny import SMOKE, TASK, Recipe, dit_config, run
from wan.train.vae import build_small_vae22

CFG = WAN_CONFIGS[TASK]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp('tiny_recipe')
    recipe = replace(SMOKE, vae_steps=2, dit_steps=3, stats_clips=4, latent_clips=8, encode_batch=4,
                     dit_batch=4, warmup_steps=2, eval_prompts=0)
    return out, run(recipe, out, device=torch.device('cpu'))


def test_export_is_the_official_layout(exported):
    out, folder = exported
    assert folder == out / TASK
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())
    assert names == sorted(['config.json', 'diffusion_pytorch_model.safetensors', CFG.t5_checkpoint,
                            CFG.vae_checkpoint, f'{CFG.t5_tokenizer}/tokenizer.json',
                            f'{CFG.t5_tokenizer}/tokenizer_config.json'])
    assert components.missing_files(CFG, folder) == []
    config = json.loads((folder / 'config.json').read_text())
    assert config['_class_name'] == 'WanModel' and config['model_type'] == 'ti2v'
    assert (config['in_dim'], config['out_dim'], config['text_len']) == (48, 48, CFG.text_len)


def test_export_loads_through_the_pipeline_classes(exported):
    _, folder = exported
    dit = WanModel.from_pretrained(folder)
    assert all(p.dtype == torch.float32 for p in dit.parameters())
    vae = Wan2_2_VAE(folder / CFG.vae_checkpoint)
    encoder = T5Encoder(folder / CFG.t5_checkpoint, folder / CFG.t5_tokenizer, text_len=CFG.text_len)
    context = encoder(['a red circle moves left on a blue background'])[0].float()
    latent = vae.encode([torch.zeros(3, 5, 32, 32)])[0]
    assert latent.shape == (48, 2, 2, 2)
    out = dit([latent], t=torch.tensor([500]), context=[context], seq_len=2)[0]
    assert out.shape == latent.shape and bool(out.isfinite().all())
    assert vae.decode([out])[0].shape == (3, 5, 32, 32)


def test_resume_trains_the_exported_dit_further(exported, tmp_path):
    _, folder = exported
    recipe = replace(SMOKE, dit_steps=2, latent_clips=8, encode_batch=4, dit_batch=4, warmup_steps=1, eval_prompts=0)
    again = run(recipe, tmp_path, device=torch.device('cpu'), resume=folder)
    for name in (CFG.t5_checkpoint, CFG.vae_checkpoint, f'{CFG.t5_tokenizer}/tokenizer.json'):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    assert json.loads((again / 'config.json').read_text()) == json.loads((folder / 'config.json').read_text())
    before, after = WanModel.from_pretrained(folder), WanModel.from_pretrained(again)
    assert not torch.equal(before.head.head.weight, after.head.head.weight)
    rows = list(csv.DictReader((tmp_path / f'{TASK}_losses.csv').open()))
    assert [r['phase'] for r in rows] == ['dit'] * 2


def test_resume_needs_an_exported_folder(tmp_path):
    from wan.errors import UserError
    with pytest.raises(UserError, match='missing: models_t5_umt5-xxl-enc-bf16.pth'):
        run(SMOKE, tmp_path / 'out', device=torch.device('cpu'), resume=tmp_path)


def test_loss_curves_are_written(exported):
    out, _ = exported
    rows = list(csv.DictReader((out / f'{TASK}_losses.csv').open()))
    assert [r['phase'] for r in rows] == ['vae'] * 2 + ['dit'] * 3
    assert all(float(r['loss']) > 0 for r in rows)
    assert (out / f'{TASK}_losses.png').stat().st_size > 1000


def test_full_recipe_fits_the_shipping_budget():
    """fp32 DiT and VAE, bf16 T5: at most 25 MB together and 16 MB a file (sizes from meta modules)."""
    recipe = Recipe()
    with torch.device('meta'):
        dit = WanModel(**dit_config(recipe, 48))
        vae = build_small_vae22(recipe.vae_dim, recipe.vae_dec_dim, recipe.vae_res_blocks)
    sizes = {
        'dit': 4 * sum(p.numel() for p in dit.parameters()),
        'vae': 4 * sum(v.numel() for v in vae.state_dict().values()),
        't5': 2 * sum(v.numel() for v in frozen_t5_state_dict(-(-len(tokenizer_pieces()) // 16) * 16).values()),
    }
    assert max(sizes.values()) < 16e6, sizes
    assert sum(sizes.values()) < 25e6, sizes
    assert (dit_config(recipe, 48)['dim'], dit_config(recipe, 48)['num_layers']) == (CFG.dim, CFG.num_layers)
