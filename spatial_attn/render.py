"""Attention maps drawn over images: lookup-table colormaps and Pillow, fast enough for every click.

A panel is the image the model saw, upscaled with crisp pixels, under a heatmap of one attention row
(or column). Each map is drawn at its own grid's true cell size (an 8x8 key grid gets 8x8 blocks over
a 32x32 image) and the query cell is outlined at the layer's own query resolution, both through
:func:`spatial_attn.grid.cell_box`, so the drawing and the click use the same arithmetic.

matplotlib is consulted once per colormap for its 256-entry table and never draws anything.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from .grid import Grid, cell_box

COLORMAPS = ("viridis", "magma", "inferno", "cividis")
Scale = Literal["per map", "shared", "percentile"]


@cache
def lut(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 table of a perceptual colormap."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    from matplotlib import colormaps  # imported on first use only: the core never needs it

    table = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return (table * 255).round().astype(np.uint8)


def upscale(image: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """An ``(H, W, 3)`` uint8 image resized to ``size = (height, width)`` with crisp pixels."""
    return Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.NEAREST)


def vmax_of(values: np.ndarray, scale: Scale, shared: float | None = None) -> float:
    """The value that maps to the top of the colormap (the bottom is always 0: no attention)."""
    if scale == "shared" and shared is not None:
        top = shared
    elif scale == "percentile":
        top = float(np.percentile(values, 99))
    else:
        top = float(values.max())
    return top if top > 0 else 1.0


def colorize(values: np.ndarray, vmax: float, cmap: str) -> np.ndarray:
    """Map values in ``[0, vmax]`` through the colormap: ``(..., 3)`` uint8."""
    index = np.clip(values / vmax * 255.0, 0, 255).astype(np.uint8)
    return lut(cmap)[index]


def heat_layer(values: np.ndarray, size: tuple[int, int], smooth: bool) -> np.ndarray:
    """A grid of values stretched over ``size``: blocks of the grid's own cell size, or bilinear."""
    h, w = size
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((w, h), resample))


def panel(
    base: Image.Image,
    values: np.ndarray,
    *,
    vmax: float,
    cmap: str = "viridis",
    opacity: float = 0.6,
    smooth: bool = False,
    outline: tuple[tuple[int, int], Grid] | None = None,
) -> Image.Image:
    """One heatmap over ``base`` (already upscaled), with the query cell outlined.

    ``values`` is a 2D map on its own grid; ``outline`` is ``(cell, grid)`` of the query, drawn at
    that grid's resolution.
    """
    size = (base.height, base.width)
    heat = colorize(heat_layer(values, size, smooth), vmax, cmap).astype(np.float32)
    mixed = (1.0 - opacity) * np.asarray(base, dtype=np.float32) + opacity * heat
    out = Image.fromarray(mixed.round().astype(np.uint8))
    if outline is not None:
        draw_cell(out, *outline)
    return out


def draw_cell(image: Image.Image, cell: tuple[int, int], grid: Grid) -> None:
    """Outline ``cell`` of ``grid`` on ``image``: black then white, visible on any colour."""
    top, left, bottom, right = cell_box(cell, grid, (image.height, image.width))
    box = [round(left), round(top), round(right) - 1, round(bottom) - 1]
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, outline=(0, 0, 0), width=3)
    draw.rectangle(box, outline=(255, 255, 255), width=1)


def strip(values: np.ndarray, *, vmax: float, cmap: str, cell: int = 12) -> Image.Image:
    """Weights over tokens with no place in the image (text keys) as a one-row strip."""
    row = colorize(values.reshape(1, -1), vmax, cmap)
    return Image.fromarray(row).resize((values.size * cell, 2 * cell), Image.Resampling.NEAREST)


def side_by_side(images: list[Image.Image], gap: int = 4) -> Image.Image:
    """Images in one row (a layer's heads), separated by a thin white gap."""
    height = max(im.height for im in images)
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out
