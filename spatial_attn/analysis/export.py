"""One click's panels as files for a paper or a slide: a matplotlib figure (PNG, SVG), the rows as .npy,
and the page itself (``index.html``, hover included, see :mod:`spatial_attn.analysis.standalone`).

Each file says what it shows: ``rows.json`` and the figure's title name the model, the timestep, the
seed, the pixel, the head, the direction and the version that made them, and ``input.png`` is the
picture the model saw (x_t for a diffusion model), so a figure found in a slide can be remade.

The figure is what the app shows, redrawn by matplotlib: every layer's map over the picture, titled,
with its colorbar (the same :class:`~spatial_attn.analysis.render.ColourScale` as the app, so "× uniform"
reads the same) and the clicked cell outlined at the layer's own resolution. Every map is also
saved as the array it was drawn from, beside ``rows.json`` that says what each one is. ``spatial-attn
export`` and the app's download button both call :func:`export_zip`.

matplotlib is imported inside the functions that draw, never at import time, and only its object
API is used (no pyplot state), so exports from two sessions at once do not share a figure.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.grid import cell_box
from . import render
from .provenance import provenance, title

if TYPE_CHECKING:
    from .explore import Exploration, LayerClick, View

FORMATS = ("png", "svg", "npy", "html")


@dataclass(frozen=True)
class Map:
    """One drawn map: which layer, which head, its values on its grid, and the cell to outline."""

    title: str
    values: np.ndarray
    scale: render.ColourScale
    outline: tuple[tuple[int, int], tuple[int, int]] | None  # (cell, grid)


def maps_of(clicks: list[LayerClick], view: View) -> list[Map]:
    """Every map the app's panels show for these clicks: one per layer, or each head then the mean."""
    shared = max((float(c.values.max()) for c in clicks), default=1.0)
    out = []
    for c in clicks:
        layer = c.layer
        grid = layer.key_grid if view.mode == "column" and layer.key_grid else layer.query_grid
        outline = (c.cell, grid) if c.values.ndim == 2 else None
        title = f"{layer.name}\n{_grid(layer.query_grid)} → {_grid(layer.key_grid)}{c.head_note}"
        if view.heads_grid and view.mode == "row" and layer.heads > 1:
            per_head = layer.head_rows(*c.cell)
            for name, values in [
                *((f"head {h}", m) for h, m in enumerate(per_head)),
                ("mean", per_head.mean(0)),
            ]:
                scale = render.colour_scale(values, view.scale, layer.keys.count, shared)
                out.append(Map(f"{layer.name} · {name}", values, scale, outline))
        else:
            scale = render.colour_scale(c.values, view.scale, layer.keys.count, shared)
            out.append(Map(title, c.values, scale, outline))
    return out


def figure_bytes(
    maps: list[Map],
    picture: np.ndarray,
    view: View,
    formats: tuple[str, ...] = ("png", "svg"),
    heading: str = "",
    note: str = "",
) -> dict[str, bytes]:
    """The panels as one matplotlib figure titled ``heading``, saved in each of ``formats`` ("png",
    "svg"). ``note`` (what the model was given: noised to which t, which patches masked) goes under
    the panels, so a figure that leaves the app still says what its input was."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    cols = min(4, len(maps))
    rows = math.ceil(len(maps) / cols)
    fig = Figure(figsize=(3.0 * cols, 3.3 * rows), layout="constrained")
    h, w = picture.shape[:2]
    cmap = colormaps[view.cmap]
    for index, m in enumerate(maps):
        ax = fig.add_subplot(rows, cols, index + 1)
        unit = m.scale.unit(m.values)
        if m.values.ndim == 2:
            ax.imshow(picture, extent=(0, w, h, 0), interpolation="nearest")
            smooth = "bilinear" if view.smooth else "nearest"
            ax.imshow(
                unit, extent=(0, w, h, 0), cmap=cmap, vmin=0, vmax=1, alpha=view.opacity, interpolation=smooth
            )
        else:  # keys that are not pixels: a strip
            ax.imshow(unit[None], cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        if m.outline is not None:
            top, left, bottom, right = cell_box(*m.outline, (h, w))
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, ec="black", lw=2.2))
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, ec="white", lw=0.9))
        ax.set_title(m.title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ticks = m.scale.ticks()
        bar = fig.colorbar(
            ScalarMappable(Normalize(0, 1), cmap), ax=ax, shrink=0.8, ticks=[t for t, _ in ticks]
        )
        bar.ax.set_yticklabels([label for _, label in ticks], fontsize=7)
        bar.set_label(m.scale.label, fontsize=7)
    if heading:
        fig.suptitle(heading, fontsize=9)
    if note:
        fig.supxlabel(note, fontsize=7)
    out = {}
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150)
        out[fmt] = buffer.getvalue()
    return out


def rows_json(clicks: list[LayerClick], described: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """What each saved array is: what made them (:func:`provenance`), then per layer its grids, the
    clicked cell and token, and its file."""
    return {
        **described,
        "layers": [
            {**c.to_json(), "file": name, "values": None}  # the numbers are in the .npy file
            for c, name in zip(clicks, files, strict=True)
        ],
    }


def export_zip(
    exploration: Exploration, point: tuple[int, int], view: View, formats: tuple[str, ...] = FORMATS
) -> bytes:
    """A zip of the click at model-input pixel ``point``: ``figure.png``, ``figure.svg``,
    ``rows/NN-<layer>.npy`` (each layer's map, float32), ``input.png`` (what the model saw) and
    ``rows.json`` (what they are), and ``index.html`` (the panels, live under the mouse)."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be some of {', '.join(FORMATS)}; got {', '.join(formats) or 'none'}")
    clicks = exploration.click(point, exploration.image_hw, view, draw=False)
    picture = exploration.image if view.over == "image" else exploration.input
    described = provenance(exploration, point, view)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        figures = tuple(f for f in formats if f in ("png", "svg"))
        if figures:
            maps = maps_of(clicks, view)
            note = described["input_note"]
            for fmt, data in figure_bytes(maps, picture, view, figures, title(described), note).items():
                archive.writestr(f"figure.{fmt}", data)
        if "npy" in formats:
            files = [f"rows/{i:02d}-{_safe(c.layer.name)}.npy" for i, c in enumerate(clicks)]
            for c, name in zip(clicks, files, strict=True):
                array = io.BytesIO()
                np.save(array, c.values.astype(np.float32))
                archive.writestr(name, array.getvalue())
            archive.writestr("input.png", render.png_bytes(exploration.input))
            archive.writestr("rows.json", json.dumps(rows_json(clicks, described, files), indent=1))
        if "html" in formats:
            from .standalone import page

            archive.writestr("index.html", page(exploration, point, view, title(described)))
    return buffer.getvalue()


def _safe(name: str) -> str:
    """A layer name as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _grid(grid: tuple[int, int] | None) -> str:
    return "text" if grid is None else f"{grid[0]}×{grid[1]}"
