"""Training a small Wan2.2-architecture VAE through the same streaming encode/decode that inference
runs (frame 0 alone, then 4-frame chunks; one latent frame per decode call; spec 6.4), so the
chunk-border behaviour it learns is the one it is used with.

`Wan2_2_VAE` normalises latents with 48 hard-coded per-channel constants (spec 6.3). A VAE of our own
has other latent statistics; `fold_normalisation` bakes the measured per-channel affine into the
1x1 convolutions around the latent (`conv1`'s mu half and `conv2`), so that the unchanged wrapper
yields latents of mean ~0 and std ~1 and decodes them back exactly.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..modules.vae2_2 import Wan2_2_VAE, build_vae22
from ..modules.vae_common import CausalVAEModel, stream, unpatchify


def build_small_vae22(dim: int, dec_dim: int, num_res_blocks: int = 1) -> CausalVAEModel:
    """A Wan2.2 VAE (48 latent channels, stride 4x16x16, the released level structure) of given widths."""
    return build_vae22(dim=dim, dec_dim=dec_dim, z_dim=len(Wan2_2_VAE.mean), num_res_blocks=num_res_blocks)


def decode_unclamped(model: CausalVAEModel, z: Tensor) -> Tensor:
    """`CausalVAEModel.decode` (one latent frame per call, one cache, spec 6.4) without its final clamp
    to [-1, 1], which would stop the gradient of every pixel it clips."""
    x = model.conv2(z)
    return torch.cat([unpatchify(model.decoder(x[:, :, i:i + 1], cache), model.patch)
                      for i, cache in stream(range(x.shape[2]))], 2).float()


def reconstruction_loss(model: CausalVAEModel, video: Tensor, weight: Tensor | None = None,
                        latent_noise: float = 0.1, latent_penalty: float = 1e-4) -> tuple[Tensor, dict[str, Tensor]]:
    """L1 + MSE of the streamed reconstruction of `video` [B, 3, 1+4k, H, W] in [-1, 1].

    `weight` [B, 1, T, H, W] (optional) weighs pixels, normalised to mean 1: small objects on a
    plain background are learned much sooner when their pixels count more. The decoder sees mu plus
    Gaussian noise of `latent_noise` times each channel's batch std, so it tolerates the small
    latent errors a sampler leaves; a small L2 penalty keeps mu from drifting.

    The statistics (l1, mse, psnr in dB) are detached 0-d tensors on the video's device: reading
    them with float() waits for the GPU, so callers do that only where they print them.
    """
    mu = model.encode(video)
    scale = mu.detach().float().std(dim=(0, 2, 3, 4), keepdim=True)
    z = mu + latent_noise * scale * torch.randn_like(mu)
    recon = decode_unclamped(model, z)
    error = recon - video
    w = 1.0 if weight is None else weight / weight.mean()
    loss = (w * (error.abs() + error.pow(2))).mean() + latent_penalty * mu.float().pow(2).mean()
    l1, mse = error.detach().abs().mean(), error.detach().pow(2).mean()
    psnr = 10 * torch.log10(4 / mse.double().clamp(min=1e-12))  # float64, as the Python float it was
    return loss, dict(l1=l1, mse=mse, psnr=psnr)


@torch.no_grad()
def latent_statistics(model: CausalVAEModel, videos: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (fp32, [z]) of the raw mu over all latent positions of `videos`."""
    total = total_sq = None
    count = 0
    for video in videos:
        mu = model.encode(video).double()
        s = mu.sum(dim=(0, 2, 3, 4))
        sq = mu.pow(2).sum(dim=(0, 2, 3, 4))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += mu.numel() // mu.shape[1]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp(min=0).sqrt()
    return mean.float(), std.float()


@torch.no_grad()
def fold_normalisation(state: dict[str, Tensor], mean: Tensor, std: Tensor,
                       target_mean: Iterable[float] = Wan2_2_VAE.mean,
                       target_std: Iterable[float] = Wan2_2_VAE.std, min_std: float = 0.05) -> dict[str, Tensor]:
    """Return a copy of `state` whose raw latents are mu' = target_mean + target_std * (mu - mean) / std.

    The wrapper then computes (mu' - target_mean) / target_std = (mu - mean) / std, and its decode
    maps back to mu' which the new `conv2` turns into exactly what the old one saw. `std` is floored
    at `min_std` times its largest entry: a nearly unused channel stays nearly constant instead of
    being blown up to unit variance for the DiT to model.
    """
    z = mean.numel()
    mean, std = mean.double(), std.double().clamp(min=min_std * float(std.max()))
    t_mean = torch.tensor(list(target_mean), dtype=torch.float64)
    t_std = torch.tensor(list(target_std), dtype=torch.float64)
    gain = t_std / std                       # mu' = gain * mu + offset
    offset = t_mean - gain * mean
    out = dict(state)

    w1, b1 = state['conv1.weight'].double(), state['conv1.bias'].double()  # [2z, 2z, 1, 1, 1]; mu = rows [:z]
    w1, b1 = w1.clone(), b1.clone()
    w1[:z] *= gain.view(z, 1, 1, 1, 1)
    b1[:z] = gain * b1[:z] + offset
    out['conv1.weight'] = w1.to(state['conv1.weight'].dtype)
    out['conv1.bias'] = b1.to(state['conv1.bias'].dtype)

    w2, b2 = state['conv2.weight'].double(), state['conv2.bias'].double()  # [z, z, 1, 1, 1] acting on mu
    # conv2(mu) with mu = (mu' - offset) / gain
    out['conv2.weight'] = (w2 / gain.view(1, z, 1, 1, 1)).to(state['conv2.weight'].dtype)
    out['conv2.bias'] = (b2 - (w2[:, :, 0, 0, 0] @ (offset / gain))).to(state['conv2.bias'].dtype)
    return out
