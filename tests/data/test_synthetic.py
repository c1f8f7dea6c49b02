"""Synthetic clips: what is rendered is what the spec says, captions say it, and `measure` reads it back."""
from __future__ import annotations

import math

import pytest
import torch

from wan.data.synthetic import (COLOURS, COLOUR_NAMES, DIRECTION_NAMES, DIRECTIONS, SHAPES, caption, captions,
                                measure, render, render_with_coverage, sample_specs, vary)

H = W = 128
T = 17


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8, truncating like the video writer."""
    return ((video.permute(1, 2, 3, 0) + 1) / 2 * 255).to(torch.uint8)


@pytest.fixture(scope='module')
def batch():
    specs = sample_specs(48, height=H, width=W, generator=torch.Generator().manual_seed(0))
    return specs, render(specs, frames=T, height=H, width=W)


def test_specs_cover_every_label_and_never_hide_the_shape():
    specs = sample_specs(4000, height=H, width=W, generator=torch.Generator().manual_seed(1))
    assert not bool((specs.colour == specs.background).any())
    for values, names in ((specs.colour, COLOUR_NAMES), (specs.background, COLOUR_NAMES),
                          (specs.shape, SHAPES), (specs.direction, DIRECTION_NAMES)):
        assert set(values.tolist()) == set(range(len(names)))
    # motion along the named direction only, and the whole shape inside the frame at both ends
    unit = torch.tensor([DIRECTIONS[DIRECTION_NAMES[d]] for d in specs.direction.tolist()], dtype=torch.float32)
    assert torch.allclose(specs.travel, unit * specs.travel.norm(dim=1, keepdim=True))
    reach = specs.radius * math.sqrt(4 * math.pi / (3 * math.sqrt(3)))  # triangle circumradius
    for centre in (specs.start, specs.start + specs.travel):
        assert bool((centre - reach[:, None] >= 0).all()) and bool((centre + reach[:, None] <= W).all())


def test_render_is_plain_background_and_exact_colours(batch):
    specs, video = batch
    assert video.shape == (48, 3, T, H, W) and video.dtype == torch.float32
    palette = torch.tensor(list(COLOURS.values())) * 2 - 1
    for i in range(4):
        bg, fg = palette[specs.background[i]], palette[specs.colour[i]]
        corner = video[i, :, :, 0, 0]  # corners are never covered (shapes stay 2 px inside)
        assert torch.allclose(corner, bg[:, None].expand_as(corner))
        for t in (0, T - 1):
            centre = specs.start[i] + specs.travel[i] * t / (T - 1)
            x, y = int(centre[0]), int(centre[1])
            assert torch.allclose(video[i, :, t, y, x], fg), 'the centre pixel is inside every shape'
        # each pixel is a blend of the two colours only
        frame = video[i, :, 0].reshape(3, -1)
        alpha = ((frame - bg[:, None]) / (fg - bg)[:, None])
        assert torch.allclose(alpha, alpha[:1].expand_as(alpha), atol=1e-4)


def test_coverage_blends_the_colours_and_has_the_circle_area(batch):
    specs, video = batch
    same, coverage = render_with_coverage(specs, frames=T, height=H, width=W)
    assert torch.equal(same, video) and coverage.shape == (48, 1, T, H, W)
    assert float(coverage.min()) == 0 and float(coverage.max()) == 1
    palette = torch.tensor(list(COLOURS.values())) * 2 - 1
    bg, fg = palette[specs.background][:, :, None, None, None], palette[specs.colour][:, :, None, None, None]
    assert torch.allclose(video, bg + coverage * (fg - bg), atol=1e-6)
    area = coverage[:, 0].sum(dim=(2, 3))  # [N, T]: every shape has the area of its circle
    assert torch.allclose(area, math.pi * specs.radius[:, None] ** 2 * torch.ones_like(area), rtol=0.03)


def test_measure_reads_back_every_rendered_clip(batch):
    specs, video = batch
    for i in range(len(specs)):
        seen = measure(to_frames(video[i]))
        labels = specs.labels(i)
        assert (seen.colour, seen.background, seen.direction) == (
            labels['colour'], labels['background'], labels['direction']), (i, labels, seen)
        assert seen.displacement == pytest.approx(tuple(specs.travel[i].tolist()), abs=1.5)


def test_measure_float_input_and_a_still_shape():
    specs = sample_specs(1, height=64, width=64, generator=torch.Generator().manual_seed(2))
    specs.travel.zero_()
    video = render(specs, frames=9, height=64, width=64)[0]
    seen = measure(((video.permute(1, 2, 3, 0) + 1) / 2))
    assert seen.direction == 'none' and seen.displacement == pytest.approx((0.0, 0.0), abs=1e-3)
    assert seen.colour == COLOUR_NAMES[specs.colour[0]]


def test_render_is_deterministic_per_generator():
    a = render(sample_specs(3, height=32, width=32, generator=torch.Generator().manual_seed(5)),
               frames=5, height=32, width=32)
    b = render(sample_specs(3, height=32, width=32, generator=torch.Generator().manual_seed(5)),
               frames=5, height=32, width=32)
    assert torch.equal(a, b)


def test_captions_and_their_variants():
    assert caption('red', 'circle', 'left', 'blue') == 'a red circle moves left on a blue background'
    assert caption('orange', 'square', 'up', 'orange') == 'an orange square moves up on an orange background'
    specs = sample_specs(200, height=H, width=W, generator=torch.Generator().manual_seed(3))
    texts = captions(specs)
    assert texts[0] == caption(**specs.labels(0))
    varied = vary(texts, torch.Generator().manual_seed(4))
    assert [v.lower().rstrip('.') for v in varied] == texts
    assert any(v[0] == 'A' for v in varied) and any(v[0] == 'a' for v in varied)
    assert any(v.endswith('.') for v in varied) and any(not v.endswith('.') for v in varied)
