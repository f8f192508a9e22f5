"""Attention maps drawn over images: lookup-table colormaps and Pillow, fast enough for every click.

A panel is the image the model saw, upscaled with crisp pixels, under a heatmap of one attention row
(or column). Each map is drawn at its own grid's true cell size (an 8x8 key grid gets 8x8 blocks over
a 32x32 image) and the query cell is outlined at the layer's own query resolution, both through
:func:`spatial_attn.engine.grid.cell_box`, so the drawing and the click use the same arithmetic.

How a value becomes a colour is a :class:`ColourScale`. "× uniform" divides by the uniform share
``1/N'``: a row that spreads evenly is one flat colour whatever its grid (an 8x8 layer is no longer
brighter than a 16x16 one just because ``1/64 > 1/256``), and its log2 axis reads "4× uniform" the
same in every layer. The probability scales (per map, shared, percentile) stretch each map instead,
which finds structure in any row, including rows that have none. The browser's drawing
(``views/panels.js``) follows the same definitions.

matplotlib is consulted once per colormap for its 256-entry table and never draws anything.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..engine.grid import Grid, cell_box

COLORMAPS = ("viridis", "magma", "inferno", "cividis")
Scale = Literal["× uniform", "per map", "shared", "percentile"]
SCALES: tuple[Scale, ...] = ("× uniform", "per map", "shared", "percentile")
#: The scales' names as a keyboard types them (the command line accepts both).
ASCII_SCALES: dict[str, Scale] = {"uniform": "× uniform", "per-map": "per map"}
#: The "× uniform" axis spans 2**-SPAN .. 2**SPAN times the uniform share, uniform in the middle.
SPAN = 4
#: Smallest side of a displayed panel, px.
MIN_PANEL = 192


@dataclass(frozen=True)
class ColourScale:
    """Values -> positions 0..1 on the colormap, and the numbers its colorbar is labelled with.

    ``uniform``: position = (log2(value x tokens) + SPAN) / (2 SPAN), clipped; ``tokens`` is the
    length of the whole row (special tokens included), so 0.5 is exactly uniform attention.
    Otherwise: position = value / top, linear from no attention (0) to ``top``.
    """

    uniform: bool
    top: float = 1.0
    tokens: int = 1

    def unit(self, values: np.ndarray) -> np.ndarray:
        """Colormap positions in [0, 1]."""
        if self.uniform:
            ratio = np.maximum(np.asarray(values, dtype=np.float64) * self.tokens, 2.0**-60)
            return np.clip((np.log2(ratio) + SPAN) / (2 * SPAN), 0.0, 1.0)
        return np.clip(np.asarray(values, dtype=np.float64) / self.top, 0.0, 1.0)

    def ticks(self) -> list[tuple[float, str]]:
        """(position, label) pairs for a colorbar."""
        if self.uniform:
            return [((e + SPAN) / (2 * SPAN), _ratio_text(2.0**e)) for e in range(-SPAN, SPAN + 1, 2)]
        return [(f, f"{self.top * f:.3g}") for f in (0.0, 0.5, 1.0)]

    @property
    def label(self) -> str:
        """What the colorbar's numbers are."""
        return "× uniform (1 = 1/N′)" if self.uniform else "probability"


def scale_named(name: str) -> Scale:
    """A scale by its name or its ASCII spelling (``uniform``, ``per-map``)."""
    if name in SCALES:
        return name  # type: ignore[return-value]
    if name in ASCII_SCALES:
        return ASCII_SCALES[name]
    raise ValueError(
        f"unknown colour scale {name!r}; choose one of {', '.join([*ASCII_SCALES, *SCALES[2:]])}"
    )


def colour_scale(values: np.ndarray, scale: Scale, tokens: int, shared: float | None = None) -> ColourScale:
    """The scale a map of ``values`` (a row of ``tokens`` entries in all) is drawn with."""
    if scale == "× uniform":
        return ColourScale(True, tokens=tokens)
    return ColourScale(False, top=vmax_of(values, scale, shared))


def panel_size(grids: list[Grid], image_hw: tuple[int, int], least: int = MIN_PANEL) -> int:
    """One display side for every panel of an image: an integer upscale of every grid and of the
    image (so no map's cells are resampled unevenly), at least ``least`` px.

    When the sides share no small multiple (a 7x7 grid over a 32x32 image: 224), the least common
    multiple is used as long as it stays under 4 ``least``; beyond that the largest side's multiple.
    """
    sides = {s for grid in grids for s in grid} | set(image_hw)
    common = math.lcm(*sides)
    if common > 4 * least:
        common = max(sides)
    return common * max(1, math.ceil(least / common))


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


def colorize(values: np.ndarray, scale: ColourScale, cmap: str) -> np.ndarray:
    """Map values through the scale and the colormap: ``(..., 3)`` uint8."""
    index = (scale.unit(values) * 255.0).astype(np.uint8)
    return lut(cmap)[index]


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """An image as PNG file bytes."""
    buffer = io.BytesIO()
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    """A small image as an inline ``data:image/png`` URI (what the browser draws under its maps)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def heat_layer(values: np.ndarray, size: tuple[int, int], smooth: bool) -> np.ndarray:
    """A grid of values stretched over ``size``: blocks of the grid's own cell size, or bilinear."""
    h, w = size
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((w, h), resample))


def panel(
    base: Image.Image,
    values: np.ndarray,
    *,
    scale: ColourScale,
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
    heat = colorize(heat_layer(values, size, smooth), scale, cmap).astype(np.float32)
    mixed = (1.0 - opacity) * np.asarray(base, dtype=np.float32) + opacity * heat
    out = Image.fromarray(mixed.round().astype(np.uint8))
    if outline is not None:
        draw_cell(out, *outline)
    return out


def draw_cell(image: Image.Image, cell: tuple[int, int], grid: Grid) -> None:
    """Outline ``cell`` of ``grid`` on ``image``: black then white, visible on any colour."""
    top, left, bottom, right = cell_box(cell, grid, (image.height, image.width))
    x0, y0 = round(left), round(top)
    box = [x0, y0, max(x0, round(right) - 1), max(y0, round(bottom) - 1)]  # >= 1 px: a 512 px input
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, outline=(0, 0, 0), width=3)
    draw.rectangle(box, outline=(255, 255, 255), width=1)


def strip(values: np.ndarray, *, scale: ColourScale, cmap: str, cell: int = 12) -> Image.Image:
    """Weights over tokens with no place in the image (text keys) as a one-row strip."""
    row = colorize(values.reshape(1, -1), scale, cmap)
    return Image.fromarray(row).resize((values.size * cell, 2 * cell), Image.Resampling.NEAREST)


def stacked(images: list[Image.Image], gap: int = 6) -> Image.Image:
    """Images one above the other (a vector over the matrix it multiplies), left-aligned on white."""
    return _arranged(images, gap, across=False)


def side_by_side(images: list[Image.Image], gap: int = 4) -> Image.Image:
    """Images in one row (a layer's heads), separated by a thin white gap."""
    return _arranged(images, gap, across=True)


def _arranged(images: list[Image.Image], gap: int, across: bool) -> Image.Image:
    """Images in a row (``across``) or a column, top/left-aligned, ``gap`` px of white between."""
    sizes = [(im.width, im.height) if across else (im.height, im.width) for im in images]
    along = sum(a for a, _ in sizes) + gap * (len(images) - 1)
    side = max(b for _, b in sizes)
    out = Image.new("RGB", (along, side) if across else (side, along), (255, 255, 255))
    offset = 0
    for im, (a, _) in zip(images, sizes, strict=True):
        out.paste(im, (offset, 0) if across else (0, offset))
        offset += a + gap
    return out


def _ratio_text(r: float) -> str:
    """2 -> "2×", 0.25 -> "1/4×"."""
    return f"{r:g}×" if r >= 1 else f"1/{1 / r:g}×"


def matrix_image(
    values: np.ndarray,
    size: tuple[int, int],
    *,
    cmap: str = "viridis",
    low: float | None = None,
    high: float | None = None,
    row: int | None = None,
) -> Image.Image:
    """A matrix as an image of ``size = (height, width)`` px, blocks of its entries (no smoothing),
    colours from ``low`` to ``high`` (default: its range); ``row`` is outlined (the clicked token)."""
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    unit = np.clip((values - low) / (high - low if high > low else 1.0), 0.0, 1.0)
    picture = Image.fromarray(lut(cmap)[(unit * 255).astype(np.uint8)])
    picture = picture.resize((size[1], size[0]), Image.Resampling.NEAREST)
    if row is not None:
        n = values.shape[0]
        top, bottom = row * size[0] / n, (row + 1) * size[0] / n
        draw = ImageDraw.Draw(picture)
        draw.rectangle([0, round(top) - 2, size[1] - 1, round(bottom) + 1], outline=(255, 255, 255), width=2)
        draw.rectangle([0, round(top) - 1, size[1] - 1, round(bottom)], outline=(220, 30, 30), width=1)
    return picture


#: Text drawn into pictures, px: readable beside the page's own 11-13 px type.
TEXT = 13
INK = (20, 20, 20)


@cache
def font(size: int = TEXT) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at ``size`` px, from matplotlib's own files (it has "×", "·" and Greek, which
    Pillow's bundled font lacks; Pillow's bitmap default is ~7 px, too small to read)."""
    from matplotlib import get_data_path  # imported on first use only, as in lut

    return ImageFont.truetype(str(Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def labelled(image: Image.Image, text: str, size: int = TEXT) -> Image.Image:
    """``image`` with a line of ``size`` px text above it, on white (a frame's timestep, a model's
    name). A picture the page shows scaled down needs a larger ``size`` to stay readable."""
    height = size + 7
    out = Image.new("RGB", (image.width, image.height + height), (255, 255, 255))
    out.paste(image, (0, height))
    ImageDraw.Draw(out).text((2, 3), text, fill=INK, font=font(size))
    return out


def colorbar(
    width: int, ticks: list[tuple[float, str]], *, cmap: str = "viridis", label: str = "", height: int = 10
) -> Image.Image:
    """A horizontal colorbar ``width`` px wide with its tick labels under it, and ``label`` below.

    A label that would come within 4 px of the one kept before it (or of the last one, always kept)
    is left out: on a narrow bar "1/16×" and "1/4×" would touch.
    """
    f = font(TEXT - 2)
    rows = TEXT + 2
    out = Image.new("RGB", (width, height + rows + (rows if label else 0) + 2), (255, 255, 255))
    strip = Image.fromarray(lut(cmap)[None]).resize((width, height), Image.Resampling.BILINEAR)
    out.paste(strip, (0, 0))
    draw = ImageDraw.Draw(out)
    for left, text in tick_places(width, ticks, lambda text: draw.textlength(text, font=f)):
        draw.text((left, height + 1), text, fill=INK, font=f)
    if label:
        draw.text((0, height + rows), label, fill=(90, 90, 90), font=f)
    return out


def tick_places(
    width: float, ticks: list[tuple[float, str]], measure: Callable[[str], float], gap: float = 4
) -> list[tuple[float, str]]:
    """Where each tick label of a ``width`` px bar starts: the first flush left, the last flush right,
    the others centred on their position; one that would come within ``gap`` px of the label kept
    before it, or of the last, is left out."""
    spans = []
    for i, (position, text) in enumerate(ticks):
        size = measure(text)
        left = 0 if i == 0 else width - size if i == len(ticks) - 1 else position * width - size / 2
        spans.append((max(0.0, min(left, width - size)), size, text))
    kept, right, last = [], -math.inf, spans[-1][0] if spans else 0.0
    for i, (left, size, text) in enumerate(spans):
        if i == len(spans) - 1 or (left >= right + gap and left + size <= last - gap):
            kept.append((left, text))
            right = left + size
    return kept


def framed(
    picture: Image.Image,
    *,
    x_label: str,
    y_label: str,
    low: float,
    high: float,
    cmap: str = "viridis",
    unit: str = "",
) -> Image.Image:
    """``picture`` with its axes named (``y_label`` turned up the left side, ``x_label`` under it)
    and a colorbar from ``low`` to ``high`` under that: a step of "how a row is made" read alone."""
    f = font(TEXT - 1)
    side = TEXT + 4 if picture.height >= 48 else 0  # a strip's name goes with the x axis's
    if not side:
        x_label = f"{y_label}: {x_label}"
    ticks = [(0.0, f"{low:.3g}"), (0.5, f"{(low + high) / 2:.3g}"), (1.0, f"{high:.3g}")]
    bar = colorbar(picture.width, ticks, cmap=cmap, label=unit)
    width = side + max(
        picture.width, round(f.getlength(x_label)) + 2, round(font(TEXT - 2).getlength(unit)) + 2
    )
    out = Image.new("RGB", (width, picture.height + TEXT + 4 + bar.height + 2), (255, 255, 255))
    if side:
        up = Image.new("RGB", (picture.height, side), (255, 255, 255))
        ImageDraw.Draw(up).text((2, 2), y_label, fill=INK, font=f)
        out.paste(up.rotate(90, expand=True), (0, 0))
    out.paste(picture, (side, 0))
    ImageDraw.Draw(out).text((side, picture.height + 2), x_label, fill=INK, font=f)
    out.paste(bar, (side, picture.height + TEXT + 6))
    return out


def tiled(images: list[Image.Image], columns: int, gap: int = 6) -> Image.Image:
    """Images in rows of ``columns`` (a filmstrip that wraps), on white."""
    rows = [side_by_side(images[i : i + columns], gap) for i in range(0, len(images), columns)]
    return stacked(rows, gap)


def gif_bytes(frames: list[Image.Image], milliseconds: int = 600) -> bytes:
    """Frames as an animated GIF that loops (colours reduced to each frame's own palette)."""
    buffer = io.BytesIO()
    first, *rest = frames
    first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=milliseconds, loop=0)
    return buffer.getvalue()
