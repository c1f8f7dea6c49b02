"""Checks shared by the Wan2.1 and Wan2.2 VAE tests: parity with diffusers' AutoencoderKLWan,
causality, round-trip shapes and corrupted checkpoints."""
from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    return ((out - ref).norm() / ref.norm()).item(), (out - ref).abs().max().item()


def video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(3, frames, height, width, generator=gen) * 2 - 1


def corrupt(tensors: dict[str, torch.Tensor], key: str, kind: str) -> None:
    """Make a state dict 'missing' `key`, carry an 'unexpected' one, or have it 'misshaped'."""
    if kind == 'missing':
        del tensors[key]
    elif kind == 'unexpected':
        tensors[key] = torch.zeros(1)
    else:
        tensors[key] = torch.zeros(3, 3)


def assert_encode_matches_diffusers(vae, reference, x: torch.Tensor, latent_shape: tuple, label: str) -> None:
    z = vae.encode([x])[0]
    with torch.no_grad():
        mu = reference.encode(x[None]).latent_dist.mode()[0]
    ref = (mu - vae._mean) * vae._inv_std  # diffusers leaves normalisation to its pipeline
    rel, max_abs = rel_err(z, ref)
    print(f'{label} encode vs diffusers: rel {rel:.2e}, max abs {max_abs:.2e}')
    assert z.shape == latent_shape and z.dtype == torch.float32
    assert rel < 1e-5 and max_abs < 1e-5


def assert_decode_matches_diffusers(vae, reference, z: torch.Tensor, video_shape: tuple, label: str) -> None:
    out = vae.decode([z])[0]
    with torch.no_grad():
        ref = reference.decode((z / vae._inv_std + vae._mean)[None]).sample[0]
    rel, max_abs = rel_err(out, ref)
    print(f'{label} decode vs diffusers: rel {rel:.2e}, max abs {max_abs:.2e}')
    assert out.shape == video_shape and out.dtype == torch.float32
    assert 0.5 < out.abs().lt(1).float().mean()  # most values not clamped: a meaningful compare
    assert rel < 1e-5 and max_abs < 1e-5


def assert_encode_is_causal(vae, x: torch.Tensor) -> None:
    """The first 4k+1 frames give exactly the first k+1 latents of the full encode."""
    full = vae.encode([x])[0]
    for k in (0, 1):
        assert torch.equal(vae.encode([x[:, :4 * k + 1]])[0], full[:, :k + 1])


def assert_decode_is_causal(vae, z: torch.Tensor) -> None:
    full = vae.decode([z])[0]
    assert torch.equal(vae.decode([z[:, :2]])[0], full[:, :5])


def assert_round_trip_shapes(vae, frames: int, height: int, width: int) -> None:
    _, stride_h, stride_w = vae.stride
    z = vae.encode([video(frames, height, width)])[0]
    assert z.shape == (vae.z_dim, (frames - 1) // 4 + 1, height // stride_h, width // stride_w)
    out = vae.decode([z])[0]
    assert out.shape == (3, frames, height, width) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def assert_bf16_decode_close_to_fp32(vae, bf16_vae, z: torch.Tensor, label: str) -> None:
    ref = vae.decode([z])[0]
    out = bf16_vae.decode([z])[0]
    rel, max_abs = rel_err(out, ref)
    print(f'{label} decode bf16 vs fp32: rel {rel:.2e}, max abs {max_abs:.2e}')
    assert out.dtype == torch.float32 and rel < 0.05
