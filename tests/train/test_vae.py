"""Small Wan2.2 VAE training: gradients through the streaming encode/decode, the loss goes down, and
the folded latent normalisation makes the stock `Wan2_2_VAE` wrapper see ~N(0, 1) latents while
decoding exactly what the unfolded model decoded."""
from __future__ import annotations

import pytest
import torch

from wan.data.synthetic import render, sample_specs
from wan.modules.vae2_2 import Wan2_2_VAE
from wan.train.vae import (build_small_vae22, decode_unclamped, fold_normalisation, latent_statistics,
                           reconstruction_loss)


def clips(n: int, seed: int, size: int = 32, frames: int = 5) -> torch.Tensor:
    specs = sample_specs(n, height=size, width=size, generator=torch.Generator().manual_seed(seed))
    return render(specs, frames=frames, height=size, width=size)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return build_small_vae22(dim=4, dec_dim=4).eval()


def test_latent_statistics_equal_a_direct_computation(model):
    videos = [clips(2, 1), clips(3, 2)]
    mean, std = latent_statistics(model, videos)
    with torch.no_grad():
        mu = torch.cat([model.encode(v) for v in videos]).transpose(0, 1).reshape(48, -1).double()
    assert torch.allclose(mean.double(), mu.mean(1), atol=1e-6)
    assert torch.allclose(std.double(), mu.std(1, unbiased=False), rtol=1e-4)


def test_folding_normalises_for_the_stock_wrapper_and_keeps_the_decode(model):
    video = clips(4, 3)
    mean, std = latent_statistics(model, [video])
    folded = fold_normalisation(model.state_dict(), mean, std)
    assert set(folded) == set(model.state_dict())
    changed = {k for k in folded if not torch.equal(folded[k], model.state_dict()[k])}
    assert changed == {'conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias'}
    vae = Wan2_2_VAE.from_tensors(folded, 'folded', dtype=torch.float32)
    z = torch.stack(vae.encode(list(video)))  # the wrapper's normalised latents
    flat = z.transpose(0, 1).reshape(48, -1)
    assert float(flat.mean(1).abs().max()) < 1e-4
    assert torch.allclose(flat.std(1, unbiased=False), torch.ones(48), atol=1e-3)
    with torch.no_grad():
        before = model.decode(model.encode(video))
    after = torch.stack(vae.decode(list(z)))
    rel = float((after - before).norm() / before.norm())
    assert rel < 1e-5, rel


def test_unclamped_decode_is_the_streaming_decode(model):
    with torch.no_grad():
        z = model.encode(clips(2, 4, frames=9))
        assert torch.equal(decode_unclamped(model, z).clamp(-1, 1), model.decode(z))


def test_pixel_weights_are_normalised(model):
    video = clips(2, 6)
    torch.manual_seed(2)
    plain, _ = reconstruction_loss(model, video, latent_noise=0.0)
    ones, _ = reconstruction_loss(model, video, weight=torch.full((2, 1, 5, 32, 32), 3.0), latent_noise=0.0)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-5)
    weight = torch.ones(2, 1, 5, 32, 32)
    weight[0] = 0  # only the second clip counts
    only_second, _ = reconstruction_loss(model, video, weight=weight, latent_noise=0.0)
    second, _ = reconstruction_loss(model, video[1:], latent_noise=0.0)
    assert only_second.item() == pytest.approx(second.item(), rel=1e-4)


def test_training_through_the_stream_lowers_the_loss():
    torch.manual_seed(1)
    model = build_small_vae22(dim=4, dec_dim=4)
    video = clips(2, 5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, stats = reconstruction_loss(model, video, latent_noise=0.0)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            for name in ('encoder.conv1.weight', 'conv1.weight', 'conv2.weight', 'decoder.head.2.weight'):
                grad = dict(model.named_parameters())[name].grad
                assert grad is not None and float(grad.abs().max()) > 0, name
        optimizer.step()
        losses.append(loss.item())
        assert set(stats) == {'l1', 'mse', 'psnr'}
    assert losses[-1] < 0.8 * losses[0], losses
