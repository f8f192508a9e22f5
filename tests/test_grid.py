"""Clicks to cells and cells to image rectangles: the one mapping every consumer shares."""

from __future__ import annotations

import pytest

import spatial_attn as sa
from spatial_attn.engine.grid import TokenLayout, grid_layout, pooled_grid


@pytest.mark.parametrize(
    ("point", "image", "grid", "cell"),
    [
        ((0, 0), (32, 32), (16, 16), (0, 0)),
        ((1, 1), (32, 32), (16, 16), (0, 0)),
        ((2, 3), (32, 32), (16, 16), (1, 1)),
        ((31, 31), (32, 32), (8, 8), (7, 7)),
        ((383, 0), (384, 384), (16, 16), (15, 0)),
        ((10, 10), (21, 21), (2, 2), (1, 1)),  # the centre 10.5 lies on the border: next cell
        ((5, 100), (10, 200), (2, 4), (1, 2)),
    ],
)
def test_cell_at(point, image, grid, cell):
    assert sa.cell_at(point, image, grid) == cell


def test_cell_box_covers_the_image_and_contains_its_clicks():
    image, grid = (100, 60), (7, 5)
    boxes = [sa.cell_box((y, x), grid, image) for y in range(7) for x in range(5)]
    area = sum((b - t) * (r - lft) for t, lft, b, r in boxes)
    assert area == pytest.approx(100 * 60)
    for py in range(0, 100, 7):
        for px in range(0, 60, 7):
            top, left, bottom, right = sa.cell_box(sa.cell_at((py, px), image, grid), grid, image)
            assert top <= py + 0.5 < bottom and left <= px + 0.5 < right


@pytest.mark.parametrize("bad", [(-1, 0), (0, 32), (32, 0)])
def test_click_outside_the_image_is_refused(bad):
    with pytest.raises(ValueError, match="outside"):
        sa.cell_at(bad, (32, 32), (8, 8))


def test_layouts():
    layout = grid_layout((8, 8), 65)
    assert layout.start == 1 and layout.labels == ("CLS",) and layout.token(2, 3) == 1 + 2 * 8 + 3
    assert layout.with_special(suffix=("bias_k",)).special_indices() == [0, 65]
    assert TokenLayout(77, None).grid_size == 77
    assert pooled_grid((16, 16), 64) == (8, 8) and pooled_grid((16, 16), 60) is None
    with pytest.raises(ValueError, match="outside"):
        layout.token(8, 0)
