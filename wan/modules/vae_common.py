"""Building blocks, streaming drivers and the public wrapper shared by the Wan2.1 and Wan2.2 VAEs.

Both VAEs are causal 3D-conv autoencoders run in time chunks (spec 6): encode sees the first frame
alone and then 4-frame chunks, decode sees one latent frame at a time. Each causal conv keeps the
last `CACHE_T` frames of its input for the next chunk. That state lives in a `CausalCache` created
per call and passed explicitly; modules hold none.

Tensor layout everywhere: x [B, C, T, H, W].
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, UserError
from ..utils.checkpoint import load_into, read_tensors

CACHE_T = 2  # frames each causal conv keeps from the previous chunk (spec 6.1)

# Receptive-field radius, in latent pixels, of the decoder after its middle block: per level 6 convs
# (3 ResidualBlocks) + the 3x3 conv after the x2 upsample, rounded up per level: 6 + ceil(7/2) +
# ceil(7/4) + ceil(8/8) (the last level adds the head conv) = 13. The same for both VAEs.
DECODER_HALO = 13


class CausalCache:
    """Streaming state of one encode or decode call (spec 6.1, 6.4).

    `first_chunk` is the explicit first-chunk marker (the reference's `'Rep'` string and
    `feat_cache[idx] is None` tests): the driver sets it False after the first chunk.
    `tails` maps each causal layer to the frames it kept from the previous chunk.
    """

    def __init__(self) -> None:
        self.first_chunk = True
        self.tails: dict[nn.Module, torch.Tensor] = {}

    def swap(self, layer: nn.Module, x: torch.Tensor, keep: int = CACHE_T) -> torch.Tensor | None:
        """Return what `layer` kept last chunk and keep the last `keep` frames of (that, x).

        When x is shorter than `keep`, the previous tail's last frames fill up (spec 6.1).
        """
        old = self.tails.get(layer)
        recent = x[:, :, -keep:]
        if old is not None and recent.shape[2] < keep:
            recent = torch.cat([old, recent], 2)[:, :, -keep:]
        self.tails[layer] = recent.clone()  # a view would keep the whole chunk alive
        return old


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time: 2*p_t frames in front, taken from the cache, else zeros.

    Space is zero-padded by the convolution itself (p_h, p_w on both sides), as in spec 6.1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0):
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=(0, pad_h, pad_w))
        self.time_pad = 2 * pad_t

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.time_pad:
            tail = cache.swap(self, x) if cache is not None else None
            parts = [x] if tail is None else [tail, x]
            missing = self.time_pad - (0 if tail is None else tail.shape[2])
            if missing:
                b, c, _, h, w = x.shape
                parts.insert(0, x.new_zeros(b, c, missing, h, w))
            x = torch.cat(parts, 2)
        return super().forward(x)


class RMSNorm(nn.Module):
    """`F.normalize(x, dim=1) * sqrt(dim) * gamma` (spec 6.1); computed in fp32, cast back."""

    def __init__(self, dim: int, images: bool):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.normalize(x.float(), dim=1)  # a new tensor: scale it in place, same rounding order
        return y.mul_(self.scale).mul_(self.gamma.float()).to(x.dtype)


class Upsample2x(nn.Module):
    """Nearest-exact x2 in space. The reference casts to fp32 for this; nearest x2 only copies
    pixels, so running in the input dtype gives the same values with less memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode='nearest-exact')


def per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of [B, C, T, H, W]."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.view(b, t, *y.shape[1:]).transpose(1, 2)


class ResidualBlock(nn.Module):
    """norm, SiLU, conv, norm, SiLU, dropout, conv (+ 1x1 shortcut when widths differ); spec 6.1."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        y = conv1(F.silu(norm1(x), inplace=True), cache)
        y = conv2(F.silu(norm2(y), inplace=True), cache)
        return y.add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame, head dim = dim (spec 6.1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        # channels of to_qkv: [q | k | v], each c wide; tokens = pixels, head dim = c
        qkv = self.to_qkv(y).view(b * t, 3, c, h * w).transpose(2, 3).contiguous()
        q, k, v = qkv.unsqueeze(2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # [bt, 1, hw, c]
        y = self.proj(y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return y.view(b, t, c, h, w).transpose(1, 2) + x


class Resample(nn.Module):
    """x2 spatial up/down-sampling per frame; the '3d' modes add a causal x2 in time (spec 6.1).

    `out_dim` is the width after an upsample conv (Wan2.1 halves it, Wan2.2 keeps it).
    """

    def __init__(self, dim: int, mode: str, out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        if mode in ('upsample2d', 'upsample3d'):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, out_dim, 3, padding=1))
            if mode == 'upsample3d':
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ('downsample2d', 'downsample3d'):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)),  # right and bottom
                                          nn.Conv2d(dim, dim, 3, stride=2))
            if mode == 'downsample3d':
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f'unknown resample mode {mode!r}')

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # upsample3d: the first chunk skips the time conv (1 frame stays 1) and caches nothing, so
        # the next chunk's conv sees zero frames in front: the reference's 'Rep' rule.
        if self.mode == 'upsample3d' and not cache.first_chunk:
            b, c, t, h, w = x.shape
            x = self.time_conv(x, cache)  # [B, 2C, T, H, W]: channel halves are frames 2t, 2t+1
            x = x.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        x = per_frame(self.resample, x)
        if self.mode == 'downsample3d':
            # first chunk: no temporal downsampling; later: previous last frame + chunk, stride 2
            tail = cache.swap(self, x, keep=1)
            if not cache.first_chunk:
                x = self.time_conv(torch.cat([tail, x], 2))
        return x


class AvgDown3D(nn.Module):
    """Parameter-free shortcut of a Wan2.2 encoder block (spec 6.3): zero-pad time in front to a
    multiple of factor_t, fold each (t, h, w) block into channels (order c, t, h, w offset), then
    average groups of consecutive channels down to out_channels."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.group = in_channels * factor_t * factor_s * factor_s // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        pad = -x.shape[2] % ft
        if pad:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.out_channels, self.group, t // ft, h // fs, w // fs).mean(2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut of a Wan2.2 decoder block (spec 6.3): repeat channels, unfold them
    into (t, h, w) offsets; on the first chunk drop the first factor_t - 1 frames."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.repeats = out_channels * factor_t * factor_s * factor_s // in_channels

    def forward(self, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)
        x = x.view(b, self.out_channels, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_channels, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    for block in blocks:
        x = block(x, cache)
    return x


def middle_blocks(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def output_head(dim: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, images=False), nn.SiLU(),
                         CausalConv3d(dim, out_channels, 3, padding=1))


def run_head(head: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    norm, _, conv = head
    return conv(F.silu(norm(x), inplace=True), cache)


class CausalEncoder(nn.Module):
    """conv1 -> downsamples -> middle -> head (mu and log_var channels); spec 6.2, 6.3."""

    def __init__(self, in_channels: int, dim: int, downsamples: nn.Sequential, top_dim: int,
                 out_channels: int):
        super().__init__()
        self.conv1 = CausalConv3d(in_channels, dim, 3, padding=1)
        self.downsamples = downsamples
        self.middle = middle_blocks(top_dim)
        self.head = output_head(top_dim, out_channels)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = run_blocks(self.downsamples, self.conv1(x, cache), cache)
        return run_head(self.head, run_blocks(self.middle, x, cache), cache)


class CausalDecoder(nn.Module):
    """conv1 -> middle (the stem, at latent resolution) -> upsamples -> head; spec 6.2, 6.3."""

    def __init__(self, z_dim: int, top_dim: int, upsamples: nn.Sequential, out_dim: int,
                 out_channels: int):
        super().__init__()
        self.conv1 = CausalConv3d(z_dim, top_dim, 3, padding=1)
        self.middle = middle_blocks(top_dim)
        self.upsamples = upsamples
        self.head = output_head(out_dim, out_channels)

    def stem(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return run_blocks(self.middle, self.conv1(x, cache), cache)

    def upsample(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return run_head(self.head, run_blocks(self.upsamples, x, cache), cache)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.upsample(self.stem(x, cache), cache)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, T, H*p, W*p] -> [B, C*p*p, T, H, W] (spec 6.3).

    Channel c*p*p + w_offset*p + h_offset holds pixel (h*p + h_offset, w*p + w_offset) of channel c.
    """
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)


class CausalVAEModel(nn.Module):
    """encoder, conv1 (2z -> 2z), conv2 (z -> z), decoder: the official state-dict layout.

    `encode`/`decode` run the reference's chunk scheme (spec 6.4) on un-normalised latents.
    """

    def __init__(self, encoder: CausalEncoder, decoder: CausalDecoder, z_dim: int, patch: int,
                 stride: tuple[int, int, int]):
        super().__init__()
        self.encoder = encoder
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = decoder
        self.z_dim, self.patch, self.stride = z_dim, patch, stride

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1+4k, H, W] -> mu [B, z, 1+k, H/s, W/s]: frame 0 alone, then 4-frame chunks."""
        x = patchify(video, self.patch)
        cache = CausalCache()
        starts = [0, *range(1, x.shape[2], self.stride[0])]
        mus = []
        for start, end in zip(starts, starts[1:] + [x.shape[2]]):
            # conv1 is 1x1x1, so applying it per chunk equals applying it to the concatenation
            mus.append(self.conv1(self.encoder(x[:, :, start:end], cache))[:, :self.z_dim])
            cache.first_chunk = False
        return torch.cat(mus, 2)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch).float().clamp_(-1, 1)

    def _output(self, z: torch.Tensor) -> torch.Tensor:
        b, _, n, h, w = z.shape
        st, s = self.stride[0], self.stride[1]
        return torch.empty(b, 3, 1 + st * (n - 1), h * s, w * s, device=z.device,
                           dtype=torch.float32)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, z, n, h, w] -> fp32 [B, 3, 1+4(n-1), h*s, w*s] in [-1, 1], a latent frame at a time.

        Each chunk is written into the preallocated output, so only one chunk's activations and
        the caches are alive besides the video itself.
        """
        out = self._output(z)
        cache, t0 = CausalCache(), 0
        for i in range(z.shape[2]):
            # conv2 is 1x1x1: per frame it equals the reference's conv2 over all frames
            frames = self._frames(self.decoder(self.conv2(z[:, :, i:i + 1]), cache))
            out[:, :, t0:t0 + frames.shape[2]] = frames
            t0 += frames.shape[2]
            cache.first_chunk = False
        return out

    def decode_tiled(self, z: torch.Tensor, tile: int, halo: int = DECODER_HALO) -> torch.Tensor:
        """`decode` in spatial tiles of `tile` x `tile` latent pixels.

        The stem (conv1 + middle, whose attention spans the whole frame) runs untiled on all latent
        frames first. The rest of the decoder is local: each tile is decoded with `halo` extra
        latent pixels on every side (its receptive field, `DECODER_HALO`), streamed over time with
        its own cache, and only its centre is kept. The result equals the untiled decode up to
        float rounding, while the large activations scale with the tile instead of the frame.
        """
        cache, stems = CausalCache(), []
        for i in range(z.shape[2]):
            stems.append(self.decoder.stem(self.conv2(z[:, :, i:i + 1]), cache))
            cache.first_chunk = False
        stem = torch.cat(stems, 2)
        del stems, cache
        out = self._output(z)
        s = self.stride[1]
        _, _, n, h, w = stem.shape
        for r0 in range(0, h, tile):
            for c0 in range(0, w, tile):
                r1, c1 = min(r0 + tile, h), min(c0 + tile, w)
                hr0, hc0 = max(r0 - halo, 0), max(c0 - halo, 0)
                window = stem[:, :, :, hr0:min(r1 + halo, h), hc0:min(c1 + halo, w)]
                keep_r = slice((r0 - hr0) * s, (r1 - hr0) * s)
                keep_c = slice((c0 - hc0) * s, (c1 - hc0) * s)
                cache, t0 = CausalCache(), 0
                for i in range(n):
                    frames = self._frames(self.decoder.upsample(window[:, :, i:i + 1], cache))
                    k = frames.shape[2]
                    out[:, :, t0:t0 + k, r0 * s:r1 * s, c0 * s:c1 * s] = frames[..., keep_r, keep_c]
                    t0 += k
                    cache.first_chunk = False
        return out


def tensor_shape(tensors: dict[str, torch.Tensor], key: str, source: str | Path) -> tuple[int, ...]:
    """Shape of a tensor needed to infer the model's widths; a clear error when it is absent."""
    if key not in tensors:
        raise CheckpointError(f'{source}: missing tensor {key!r} (needed to infer the VAE widths)')
    return tuple(tensors[key].shape)


class WanVAE:
    """Public wrapper: loads a checkpoint, owns the latent mean/std, checks inputs (spec 6.4).

    Subclasses set `mean`, `std`, `stride` and `build_from(tensors, source)`.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    stride: tuple[int, int, int]

    def __init__(self, vae_pth: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = 'cpu'):
        self._load(read_tensors(vae_pth), vae_pth, dtype, device)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = '<state dict>',
                     dtype: torch.dtype = torch.float32, device: str | torch.device = 'cpu'
                     ) -> WanVAE:
        """Same as the constructor, from an official-layout state dict already in memory."""
        vae = cls.__new__(cls)
        vae._load(tensors, source, dtype, device)
        return vae

    @classmethod
    def build_from(cls, tensors: dict[str, torch.Tensor], source: str | Path) -> CausalVAEModel:
        raise NotImplementedError

    def _load(self, tensors: dict[str, torch.Tensor], source: str | Path, dtype: torch.dtype,
              device: str | torch.device) -> None:
        with torch.device('meta'):
            model = self.build_from(tensors, source)
        if model.z_dim != len(self.mean):
            raise CheckpointError(f'{source}: latent width {model.z_dim}, but {type(self).__name__}'
                                  f' needs {len(self.mean)} (is it the other Wan VAE?)')
        self.model = load_into(model, tensors, source, dtype).to(device)
        self.model.eval().requires_grad_(False)
        self.dtype, self.device, self.z_dim = dtype, torch.device(device), model.z_dim
        # The VAE owns its latent normalisation, in fp32 like the reference: z = (mu - mean) / std.
        fp32 = dict(dtype=torch.float32, device=device)
        self._mean = torch.tensor(self.mean, **fp32).view(-1, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(self.std, **fp32).view(-1, 1, 1, 1)

    @torch.no_grad()
    def encode(self, videos: list[torch.Tensor]) -> list[torch.Tensor]:
        """Videos [3, 1+4k, H, W] in [-1, 1] -> normalised fp32 latents [z, 1+k, H/s, W/s]."""
        out = []
        for video in _as_list(videos, 'videos'):
            self._check_video(video)
            mu = self.model.encode(video.to(self.device, self.dtype).unsqueeze(0))[0]
            out.append((mu.float() - self._mean) * self._inv_std)
        return out

    @torch.no_grad()
    def decode(self, zs: list[torch.Tensor], tile: int | None = None) -> list[torch.Tensor]:
        """Normalised latents [z, n, h, w] -> fp32 videos [3, 1+4(n-1), h*s, w*s] in [-1, 1].

        `tile` (latent pixels, off by default) decodes in spatial tiles to bound memory; see
        `CausalVAEModel.decode_tiled`: it matches the untiled decode up to float rounding.
        """
        if tile is not None and tile < 1:
            raise UserError(f'the VAE decode tile must be a positive number of latent pixels, '
                            f'got {tile}')
        out = []
        for z in _as_list(zs, 'zs'):
            if z.dim() != 4 or z.shape[0] != self.z_dim or z.shape[1] < 1:
                raise UserError(f'{type(self).__name__} decodes latents [{self.z_dim}, n, h, w], '
                                f'got shape {list(z.shape)}')
            z = (z.to(self.device, torch.float32) / self._inv_std + self._mean).to(self.dtype)
            z = z.unsqueeze(0)
            video = self.model.decode(z) if tile is None else self.model.decode_tiled(z, tile)
            out.append(video[0])
        return out

    def _check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 4 or video.shape[0] != 3:
            raise UserError(f'VAE encode takes videos [3, T, H, W], got shape {list(video.shape)}')
        frames, height, width = video.shape[1:]
        st, s = self.stride[0], self.stride[1]
        if frames % st != 1:
            lower = (frames - 1) // st * st + 1
            fix = f'{lower} or {lower + st}' if lower >= 1 else f'{lower + st}'
            raise UserError(f'a video for the VAE needs {st}n+1 frames (e.g. 81 or 121), '
                            f'got {frames}; use {fix}')
        if height % s or width % s:
            raise UserError(f'video height and width must be multiples of {s} for this VAE, '
                            f'got {height}x{width}')


def _as_list(items: list[torch.Tensor], name: str) -> list[torch.Tensor]:
    if not isinstance(items, (list, tuple)):
        raise TypeError(f'{name} must be a list of tensors, got {type(items).__name__}')
    return list(items)
