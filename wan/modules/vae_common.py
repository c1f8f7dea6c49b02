"""Building blocks, streaming drivers and the public wrapper shared by the Wan2.1 and Wan2.2 VAEs.

Both VAEs are causal 3D-conv autoencoders run in time chunks (spec 6): encode sees the first frame
alone and then 4-frame chunks, decode sees one latent frame at a time. Each causal conv keeps the
last `CACHE_T` frames of its input for the next chunk. That state lives in a `CausalCache` created
per call and passed explicitly; modules hold none.

Tensor layout everywhere: x [B, C, T, H, W] (in memory either contiguous or, with
`DecodeOptions.channels_last`, channels-last).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, UserError
from ..utils.checkpoint import load_into, read_tensors

T = TypeVar('T')
CACHE_T = 2  # frames each causal conv keeps from the previous chunk (spec 6.1)

# Receptive-field radius, in latent pixels, of the decoder after its middle block: per level 6 convs
# (3 ResidualBlocks) + the 3x3 conv after the x2 upsample, rounded up per level: 6 + ceil(7/2) +
# ceil(7/4) + ceil(8/8) (the last level adds the head conv) = 13. The same for both VAEs.
DECODER_HALO = 13


@dataclass(frozen=True)
class DecodeOptions:
    """Opt-in speed levers of `decode` (issue 8). Each keeps the output within bf16 rounding of the
    default decode; none changes the encoder.

    cudnn_benchmark: let cuDNN time its convolution algorithms (the first decode of each shape
        searches; chunk 0 and the later chunks have different shapes).
    channels_last: decoder convolution weights and activations channels-last (NDHWC).
    norm: 'exact' (fp32 in the reference's operation order, spec 6.1), 'lean' (fp32 norm and
        product without a full-size fp32 tensor, one frame at a time; bf16 speed and memory) or
        'compiled' (the exact order fused with SiLU by torch.compile; needs a GPU to pay off).
    """

    cudnn_benchmark: bool = False
    channels_last: bool = False
    norm: str = 'exact'

    def __post_init__(self) -> None:
        if self.norm not in NORM_VARIANTS:
            raise ValueError(f'norm must be one of {NORM_VARIANTS}, got {self.norm!r}')


NORM_VARIANTS = ('exact', 'lean', 'compiled')


class CausalCache:
    """Streaming state of one encode or decode call (spec 6.1, 6.4).

    `first_chunk` is the explicit first-chunk marker (the reference's `'Rep'` string and
    `feat_cache[idx] is None` tests): the driver sets it False after the first chunk.
    `tails` maps each causal layer to the frames it kept from the previous chunk.
    """

    def __init__(self) -> None:
        self.first_chunk = True
        self.tails: dict[nn.Module, torch.Tensor] = {}

    def swap(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Return the frame `layer` kept last chunk and keep x's last frame instead."""
        old = self.tails.get(layer)
        self.tails[layer] = x[:, :, -1:].clone()  # a view would keep the whole chunk alive
        return old


def stream(chunks: Iterable[T]) -> Iterator[tuple[T, CausalCache]]:
    """Each chunk of one streaming pass with the pass's cache, marked first for the first only."""
    cache = CausalCache()
    for chunk in chunks:
        yield chunk, cache
        cache.first_chunk = False


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last_3d for a channels-last 5-D tensor, else contiguous."""
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time: 2*p_t frames in front, taken from the cache, else zeros.

    Space is zero-padded by the convolution itself (p_h, p_w on both sides), as in spec 6.1.
    The time-padded input is one buffer: `input_buffer` fills its front and hands back the slot
    for the chunk, which a caller may fill directly (see `norm_silu_input`); `convolve` keeps
    the buffer's last CACHE_T frames for the next chunk and convolves. Keeping those frames
    equals the reference's rule: while a layer has seen fewer than CACHE_T frames, they include
    the zeros the next chunk would pad with anyway.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0):
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=(0, pad_h, pad_w))
        self.time_pad = 2 * pad_t
        if self.time_pad not in (0, CACHE_T):
            raise ValueError(f'time padding {pad_t}: the cache keeps {CACHE_T} frames, so 0 or 1')

    def front(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        """The time_pad frames in front of chunk x: those kept from the last chunk, else zeros."""
        kept = None if cache is None else cache.tails.get(self)
        if kept is not None:
            return kept
        b, c, _, h, w = x.shape
        return torch.zeros((b, c, self.time_pad, h, w), dtype=x.dtype, device=x.device).to(
            memory_format=memory_format(self.weight))

    def input_buffer(self, x: torch.Tensor, cache: CausalCache | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(buffer [B, C, time_pad + T, H, W] with `front` in place, slot for x = the rest)."""
        b, c, t, h, w = x.shape
        p = self.time_pad
        # the layout of the weights (DecodeOptions.channels_last), whatever x's layout
        buf = torch.empty((b, c, p + t, h, w), dtype=x.dtype, device=x.device,
                          memory_format=memory_format(self.weight))
        buf[:, :, :p] = self.front(x, cache)
        return buf, buf[:, :, p:]

    def padded(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        buf, slot = self.input_buffer(x, cache)
        slot.copy_(x)
        return buf

    def convolve(self, buf: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        """Keep the last CACHE_T frames of the padded input `buf` and convolve it."""
        if cache is not None:
            cache.tails[self] = buf[:, :, -CACHE_T:].clone()  # a view would keep the chunk alive
        return super().forward(buf)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if not self.time_pad:
            return super().forward(x)
        return self.convolve(self.padded(x, cache), cache)


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, scale: float) -> torch.Tensor:
    """`F.normalize(x, dim=1) * scale * gamma` in fp32 in the reference's order (spec 6.1), cast
    back to x's dtype."""
    xf = x.float()
    denom = xf.norm(2.0, 1, keepdim=True).clamp_min(1e-12)  # F.normalize's own steps
    # x.float() of a bf16 x is a copy: divide that in place, unless autograd needs it
    y = xf.div_(denom) if x.dtype != torch.float32 and not xf.requires_grad else xf / denom
    return y.mul_(scale).mul_(gamma.float()).to(x.dtype)


def rms_norm_lean(x: torch.Tensor, gamma: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """`rms_norm` into `out` without a full-size fp32 tensor: the norm accumulates in fp32 from x
    directly and x * (scale * gamma) / norm is formed in fp32 one frame at a time, rounded once.
    Differs from `rms_norm` by the fp32 rounding of the reordered product (within bf16 rounding)."""
    g = gamma.float() * scale
    for t in range(x.shape[2]):
        frame = x[:, :, t:t + 1]
        denom = torch.linalg.vector_norm(frame, 2.0, 1, keepdim=True, dtype=torch.float32)
        torch.div(frame * g, denom.clamp_min_(1e-12), out=out[:, :, t:t + 1])


def padded_norm_silu(x: torch.Tensor, gamma: torch.Tensor, scale: float, front: torch.Tensor
                     ) -> torch.Tensor:
    """[front, SiLU(rms_norm(x))] along time: a causal conv's padded input."""
    return torch.cat([front, F.silu(rms_norm(x, gamma, scale))], 2)


@functools.cache
def compiled_padded_norm_silu(backend: str = 'inductor'):
    """`padded_norm_silu` compiled (built on first use): one kernel reads x and writes the norm
    and SiLU straight into the concatenated buffer.

    Sizes and the scale are symbolic, so the layers share graphs; one is still compiled per
    dtype, per single-/multi-frame chunk and per input layout (contiguous, channels-last, or
    frame-major as a per-frame 2-D upsample leaves it): more than dynamo's default limit of 8
    in one process.
    """
    compiled = torch.compile(padded_norm_silu, backend=backend, dynamic=True)
    return torch._dynamo.config.patch(recompile_limit=64, specialize_float=False)(compiled)


class RMSNorm(nn.Module):
    """`F.normalize(x, dim=1) * sqrt(dim) * gamma` (spec 6.1); computed in fp32, cast back.

    `variant` (`DecodeOptions.norm`) picks how `norm_silu_input` computes it at inference.
    """

    def __init__(self, dim: int, images: bool):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.variant = 'exact'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.gamma, self.scale)


def norm_silu_input(norm: RMSNorm, conv: CausalConv3d, x: torch.Tensor, cache: CausalCache
                    ) -> torch.Tensor:
    """conv's padded input (`CausalConv3d.padded`) holding SiLU(norm(x)) after the cached frames.

    'exact' (and autograd, which out= operations do not record) computes SiLU(norm(x)) and then
    copies it in, so the norm's fp32 temporaries are gone before the buffer exists. 'lean' and
    'compiled' write straight into the buffer, saving that copy.
    """
    if norm.variant == 'exact' or torch.is_grad_enabled():
        return conv.padded(F.silu(norm(x), inplace=True), cache)
    if norm.variant == 'compiled':
        # a detached gamma, a plain tensor, may get a symbolic width (a Parameter may not)
        return compiled_padded_norm_silu()(x, norm.gamma.detach(), norm.scale,
                                           conv.front(x, cache))
    buf, slot = conv.input_buffer(x, cache)
    rms_norm_lean(x, norm.gamma, norm.scale, slot)
    F.silu(slot, inplace=True)
    return buf


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


def interleave_time(x: torch.Tensor) -> torch.Tensor:
    """[B, 2C, T, H, W] whose channel halves are frames 2t and 2t+1 -> [B, C, 2T, H, W], in x's
    memory format (one copy)."""
    b, c2, t, h, w = x.shape
    c = c2 // 2
    out = torch.empty((b, c, 2 * t, h, w), dtype=x.dtype, device=x.device,
                      memory_format=memory_format(x))
    out.unflatten(2, (t, 2)).copy_(x.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5))
    return out


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
        y = conv1.convolve(norm_silu_input(norm1, conv1, x, cache), cache)
        buf = norm_silu_input(norm2, conv2, y, cache)
        del y  # free before the convolution: only x (for the shortcut) and buf are needed
        y = conv2.convolve(buf, cache)
        del buf
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
            x = interleave_time(self.time_conv(x, cache))
        x = per_frame(self.resample, x)
        if self.mode == 'downsample3d':
            # first chunk: no temporal downsampling; later: previous last frame + chunk, stride 2
            tail = cache.swap(self, x)
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
    buf = norm_silu_input(norm, conv, x, cache)
    del x
    return conv.convolve(buf, cache)


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
        self.channels_last = False  # see configure_decode

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1+4k, H, W] -> mu [B, z, 1+k, H/s, W/s]: frame 0 alone, then 4-frame chunks."""
        x = patchify(video, self.patch)
        starts = [0, *range(1, x.shape[2], self.stride[0])]
        mus = []
        for (start, end), cache in stream(zip(starts, starts[1:] + [x.shape[2]])):
            # conv1 is 1x1x1, so applying it per chunk equals applying it to the concatenation
            mus.append(self.conv1(self.encoder(x[:, :, start:end], cache))[:, :self.z_dim])
        return torch.cat(mus, 2)

    def configure_decode(self, options: DecodeOptions) -> None:
        """Apply `options` to the decoder (its RMS norms; channels-last weights)."""
        for module in self.decoder.modules():
            if isinstance(module, RMSNorm):
                module.variant = options.norm
        # conv2 and every decoder conv see activations in one layout (cuDNN picks its kernels by it)
        layout = torch.channels_last if options.channels_last else torch.contiguous_format
        layout_3d = torch.channels_last_3d if options.channels_last else torch.contiguous_format
        for module in (self.conv2, *self.decoder.modules()):
            if isinstance(module, nn.Conv3d):
                module.to(memory_format=layout_3d)
            elif isinstance(module, nn.Conv2d):
                module.to(memory_format=layout)
        self.channels_last = options.channels_last

    def _decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        # conv2 is 1x1x1: per frame it equals the reference's conv2 over all frames
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last_3d)
        return self.conv2(z)

    def _put(self, out: torch.Tensor, x: torch.Tensor, rows: slice = slice(None),
             cols: slice = slice(None)) -> None:
        """Write decoder output x, unpatchified, cropped to rows/cols and clamped to [-1, 1],
        into the fp32 region `out` (clamping before the exact cast to fp32 gives the same)."""
        out.copy_(unpatchify(x.clamp(-1, 1), self.patch)[..., rows, cols])

    def _output(self, z: torch.Tensor) -> torch.Tensor:
        b, _, n, h, w = z.shape
        st, s = self.stride[0], self.stride[1]
        return torch.empty(b, 3, 1 + st * (n - 1), h * s, w * s, device=z.device,
                           dtype=torch.float32)

    def decode(self, z: torch.Tensor, on_frames: Callable[[torch.Tensor], None] | None = None
               ) -> torch.Tensor:
        """[B, z, n, h, w] -> fp32 [B, 3, 1+4(n-1), h*s, w*s] in [-1, 1], a latent frame at a time.

        Each chunk is written into the preallocated output, so only one chunk's activations and
        the caches are alive besides the video itself; `on_frames` sees each finished chunk (a
        view [B, 3, k, H, W] of the output) as soon as it is written.
        """
        out = self._output(z)
        t0 = 0
        for i, cache in stream(range(z.shape[2])):
            x = self.decoder(self._decoder_input(z[:, :, i:i + 1]), cache)
            k = x.shape[2]
            self._put(out[:, :, t0:t0 + k], x)
            del x
            if on_frames is not None:
                on_frames(out[:, :, t0:t0 + k])
            t0 += k
        return out

    def decode_tiled(self, z: torch.Tensor, tile: int, halo: int = DECODER_HALO) -> torch.Tensor:
        """`decode` in spatial tiles of `tile` x `tile` latent pixels.

        The stem (conv1 + middle, whose attention spans the whole frame) runs untiled on all latent
        frames first. The rest of the decoder is local: each tile is decoded with `halo` extra
        latent pixels on every side (its receptive field, `DECODER_HALO`), streamed over time with
        its own cache, and only its centre is kept. The result equals the untiled decode up to
        float rounding, while the large activations scale with the tile instead of the frame.
        """
        stem = torch.cat([self.decoder.stem(self._decoder_input(z[:, :, i:i + 1]), cache)
                          for i, cache in stream(range(z.shape[2]))], 2)
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
                t0 = 0
                for i, cache in stream(range(n)):
                    x = self.decoder.upsample(window[:, :, i:i + 1], cache)
                    k = x.shape[2]
                    self._put(out[:, :, t0:t0 + k, r0 * s:r1 * s, c0 * s:c1 * s], x, keep_r, keep_c)
                    del x
                    t0 += k
        return out


def tensor_shape(tensors: dict[str, torch.Tensor], key: str, source: str | Path) -> tuple[int, ...]:
    """Shape of a tensor needed to infer the model's widths; a clear error when it is absent."""
    if key not in tensors:
        raise CheckpointError(f'{source}: missing tensor {key!r} (needed to infer the VAE widths)')
    return tuple(tensors[key].shape)


class WanVAE:
    """Public wrapper: loads a checkpoint, owns the latent mean/std, checks inputs (spec 6.4).

    `dtype` is the compute dtype (bf16 halves decode memory, output within bf16 rounding);
    `options` the opt-in decode levers (`DecodeOptions`). Subclasses set `mean`, `std`, `stride`
    and `build_from(tensors, source)`.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    stride: tuple[int, int, int]

    def __init__(self, vae_pth: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = 'cpu', options: DecodeOptions = DecodeOptions()):
        self._load(read_tensors(vae_pth), vae_pth, dtype, device, options)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = '<state dict>',
                     dtype: torch.dtype = torch.float32, device: str | torch.device = 'cpu',
                     options: DecodeOptions = DecodeOptions()) -> WanVAE:
        """Same as the constructor, from an official-layout state dict already in memory."""
        vae = cls.__new__(cls)
        vae._load(tensors, source, dtype, device, options)
        return vae

    @classmethod
    def build_from(cls, tensors: dict[str, torch.Tensor], source: str | Path) -> CausalVAEModel:
        raise NotImplementedError

    def _load(self, tensors: dict[str, torch.Tensor], source: str | Path, dtype: torch.dtype,
              device: str | torch.device, options: DecodeOptions) -> None:
        with torch.device('meta'):
            model = self.build_from(tensors, source)
        if model.z_dim != len(self.mean):
            raise CheckpointError(f'{source}: latent width {model.z_dim}, but {type(self).__name__}'
                                  f' needs {len(self.mean)} (is it the other Wan VAE?)')
        self.model = load_into(model, tensors, source, dtype).to(device)
        self.model.eval().requires_grad_(False)
        self.model.configure_decode(options)
        self.options = options
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
    def decode(self, zs: list[torch.Tensor], tile: int | None = None,
               on_frames: Callable[[torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Normalised latents [z, n, h, w] -> fp32 videos [3, 1+4(n-1), h*s, w*s] in [-1, 1].

        `tile` (latent pixels, off by default) decodes in spatial tiles to bound memory; see
        `CausalVAEModel.decode_tiled`: it matches the untiled decode up to float rounding.
        `on_frames` receives each video's frames [3, k, H, W] as they are decoded (untiled: a
        latent frame's worth at a time), e.g. to encode them while decoding goes on.
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
            benchmark = torch.backends.cudnn.benchmark  # a process-wide flag: set for this decode
            torch.backends.cudnn.benchmark = self.options.cudnn_benchmark or benchmark
            try:
                chunks = None if on_frames is None else (lambda chunk: on_frames(chunk[0]))
                if tile is None:
                    video = self.model.decode(z, chunks)
                else:
                    video = self.model.decode_tiled(z, tile)
                    if chunks is not None:  # tiles span every frame: the video comes at once
                        chunks(video)
            finally:
                torch.backends.cudnn.benchmark = benchmark
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
