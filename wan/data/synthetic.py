"""Synthetic clips for the bundled tiny model: one coloured shape moving in a named direction over a
plain background, with its caption, and the inverse: reading colour and motion back from pixels.

    specs = sample_specs(256, height=128, width=128, generator=g)
    video = render(specs, frames=17, height=128, width=128)   # [N, 3, T, H, W] in [-1, 1]
    texts = captions(specs)            # 'a red circle moves left on a blue background'
    vary(texts, g)                     # the same with random capitals and final periods
    measure(frames)                    # colour, background and direction seen in [T, H, W, 3] pixels

Coordinates are pixels, x to the right and y down; 'up' is towards row 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# name -> RGB in [0, 1]; no two closer than 0.35, all inside (0, 1) so no channel sits at the clamp
COLOURS: dict[str, tuple[float, float, float]] = {
    'red': (0.90, 0.10, 0.10),
    'orange': (0.95, 0.50, 0.05),
    'yellow': (0.95, 0.90, 0.15),
    'green': (0.10, 0.70, 0.20),
    'blue': (0.10, 0.25, 0.90),
    'purple': (0.60, 0.15, 0.70),
    'white': (0.95, 0.95, 0.95),
    'black': (0.05, 0.05, 0.05),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ('circle', 'square', 'triangle')
# unit step per direction in (x, y) pixels
DIRECTIONS: dict[str, tuple[int, int]] = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}
DIRECTION_NAMES = tuple(DIRECTIONS)

RADIUS_RANGE = (0.14, 0.19)   # radius of the equal-area circle, as a fraction of min(H, W)
TRAVEL_RANGE = (0.25, 0.35)   # distance covered over the clip, as a fraction of the frame along the motion
# The triangle (circumradius 1.555 r) reaches furthest from its centre; keep it and 2 px inside the frame.
_EXTENT = math.sqrt(4 * math.pi / (3 * math.sqrt(3)))  # equilateral triangle of area pi r^2: R / r


@dataclass
class ClipSpecs:
    """What N clips show: indices into COLOUR_NAMES / SHAPES / DIRECTION_NAMES, and the motion."""
    colour: Tensor       # [N] long
    background: Tensor   # [N] long, never equal to colour
    shape: Tensor        # [N] long
    direction: Tensor    # [N] long
    start: Tensor        # [N, 2] (x, y) centre at frame 0, pixels
    travel: Tensor       # [N, 2] (x, y) displacement from the first to the last frame, pixels
    radius: Tensor       # [N] radius of the equal-area circle, pixels

    def __len__(self) -> int:
        return len(self.colour)

    def labels(self, i: int) -> dict[str, str]:
        return dict(colour=COLOUR_NAMES[self.colour[i]], shape=SHAPES[self.shape[i]],
                    direction=DIRECTION_NAMES[self.direction[i]], background=COLOUR_NAMES[self.background[i]])


def sample_specs(n: int, *, height: int, width: int, generator: torch.Generator | None = None,
                 device: torch.device | str = 'cpu') -> ClipSpecs:
    """N random clip descriptions; every shape stays fully inside the frame for the whole clip."""
    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    def integers(high: int) -> Tensor:
        return torch.randint(high, (n,), generator=generator, device=device)

    colour = integers(len(COLOURS))
    background = (colour + 1 + integers(len(COLOURS) - 1)) % len(COLOURS)
    direction = integers(len(DIRECTIONS))
    radius = uniform(*RADIUS_RANGE, n) * min(height, width)
    unit = torch.tensor(list(DIRECTIONS.values()), dtype=torch.float32, device=device)[direction]  # [N, 2]
    size = torch.tensor([width, height], dtype=torch.float32, device=device)
    horizontal = unit[:, 0] != 0
    distance = uniform(*TRAVEL_RANGE, n) * torch.where(horizontal, size[0], size[1])
    margin = (_EXTENT * radius + 2)[:, None]  # [N, 1]
    # along the motion: start anywhere that leaves room for the whole travel; across it: anywhere
    room = (size - 2 * margin - distance[:, None] * unit.abs()).clamp(min=0)
    start = margin + uniform(0, 1, n, 2) * room
    start = torch.where(unit < 0, size - start, start)  # moving left/up: start from the far side
    return ClipSpecs(colour=colour, background=background, shape=integers(len(SHAPES)),
                     direction=direction, start=start, travel=unit * distance[:, None], radius=radius)


def _signed_distance(shape: Tensor, dx: Tensor, dy: Tensor, radius: Tensor) -> Tensor:
    """Distance in pixels to the shape's outline, negative inside; every shape has area pi r^2."""
    circle = torch.hypot(dx, dy) - radius
    square = torch.maximum(dx.abs(), dy.abs()) - radius * math.sqrt(math.pi) / 2
    # equilateral triangle pointing up, centred on its centroid: three half-planes at the inradius
    inradius = radius * _EXTENT / 2
    s = math.sqrt(3) / 2
    triangle = torch.maximum(dy, torch.maximum(s * dx - 0.5 * dy, -s * dx - 0.5 * dy)) - inradius
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def render(specs: ClipSpecs, *, frames: int, height: int, width: int) -> Tensor:
    """[N, 3, frames, H, W] float32 in [-1, 1] on the specs' device; edges anti-aliased over 1 px."""
    return render_with_coverage(specs, frames=frames, height=height, width=width)[0]


def render_with_coverage(specs: ClipSpecs, *, frames: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """`render`, and the shape's coverage of each pixel [N, 1, frames, H, W] in [0, 1]."""
    device = specs.colour.device
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32, device=device) * 2 - 1
    fg = palette[specs.colour][:, :, None, None]      # [N, 3, 1, 1]
    bg = palette[specs.background][:, :, None, None]
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None] + 0.5  # pixel centres
    xs = torch.arange(width, dtype=torch.float32, device=device)[None, :] + 0.5
    shape, radius = specs.shape[:, None, None], specs.radius[:, None, None]
    out = torch.empty(len(specs), 3, frames, height, width, device=device)
    coverage = torch.empty(len(specs), 1, frames, height, width, device=device)
    for t in range(frames):
        centre = specs.start + specs.travel * (t / max(frames - 1, 1))  # [N, 2]
        dx = xs - centre[:, 0, None, None]
        dy = ys - centre[:, 1, None, None]
        alpha = (0.5 - _signed_distance(shape, dx, dy, radius)).clamp(0, 1)[:, None]  # [N, 1, H, W]
        coverage[:, :, t] = alpha
        out[:, :, t] = bg + alpha * (fg - bg)
    return out, coverage


def article(word: str) -> str:
    return 'an' if word[0] in 'aeiou' else 'a'


def caption(colour: str, shape: str, direction: str, background: str) -> str:
    """'a red circle moves left on a blue background'."""
    return f'{article(colour)} {colour} {shape} moves {direction} on {article(background)} {background} background'


def captions(specs: ClipSpecs) -> list[str]:
    """One caption per clip, in the plain form of `caption`."""
    return [caption(**specs.labels(i)) for i in range(len(specs))]


def vary(texts: list[str], generator: torch.Generator | None = None) -> list[str]:
    """Half the texts get a capital first letter and half a final period, independently, so a model
    trained on them accepts both spellings."""
    flags = torch.rand(len(texts), 2, generator=generator) < 0.5
    return [(t[0].upper() + t[1:] if cap else t) + ('.' if dot else '')
            for t, (cap, dot) in zip(texts, flags.tolist())]


# ---------------------------------------------------------------------------------------------
# Reading a clip back from its pixels

@dataclass
class Measurement:
    colour: str                              # nearest named colour of the moving shape
    background: str                          # nearest named colour of the background
    direction: str                           # nearest named direction, or 'none' if it barely moves
    colour_rgb: tuple[float, float, float]   # measured, in [0, 1]
    background_rgb: tuple[float, float, float]
    displacement: tuple[float, float]        # (x, y) pixels from the first to the last frame (line fit)
    shape_fraction: float                    # mean fraction of the frame the shape covers


def nearest_colour(rgb: Tensor) -> str:
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    return COLOUR_NAMES[int((palette - rgb.float().cpu()).norm(dim=1).argmin())]


def measure(frames: np.ndarray | Tensor, threshold: float = 0.2, min_motion: float = 0.1) -> Measurement:
    """Colour, background and direction of motion of a clip [T, H, W, 3] (uint8, or float in [0, 1]).

    The background is each frame's median colour (the shape covers well under half the frame); the
    shape is every pixel further than `threshold` from it; its colour is the median over all frames;
    the direction is the one closest to the line fit of the shape's centroid over time, or 'none' when
    that moves less than `min_motion` of the frame size.
    """
    x = torch.as_tensor(np.asarray(frames))
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    t, h, w, _ = x.shape
    background = x.reshape(t, h * w, 3).median(dim=1).values          # [T, 3]
    mask = (x - background[:, None, None]).norm(dim=-1) > threshold   # [T, H, W]
    area = mask.flatten(1).sum(1).float()
    colour = x[mask].median(dim=0).values if mask.any() else background.median(dim=0).values
    background_rgb = background.median(dim=0).values

    seen = area >= max(4.0, 0.002 * h * w)  # frames where the shape is visible
    displacement = (0.0, 0.0)
    if int(seen.sum()) >= 2:
        ys = torch.arange(h, dtype=torch.float32)[None, :, None]
        xs = torch.arange(w, dtype=torch.float32)[None, None, :]
        m = mask.float()
        cx = (m * xs).flatten(1).sum(1) / area.clamp(min=1)
        cy = (m * ys).flatten(1).sum(1) / area.clamp(min=1)
        time = torch.arange(t, dtype=torch.float32)[seen]
        time = time - time.mean()
        slope = [float((time * c[seen]).sum() / (time * time).sum()) for c in (cx, cy)]
        displacement = (slope[0] * (t - 1), slope[1] * (t - 1))
    if math.hypot(*displacement) < min_motion * min(h, w):
        direction = 'none'
    else:
        direction = max(DIRECTIONS, key=lambda d: DIRECTIONS[d][0] * displacement[0]
                        + DIRECTIONS[d][1] * displacement[1])
    return Measurement(colour=nearest_colour(colour), background=nearest_colour(background_rgb),
                       direction=direction, colour_rgb=tuple(colour.tolist()),
                       background_rgb=tuple(background_rgb.tolist()), displacement=displacement,
                       shape_fraction=float(area.mean()) / (h * w))
