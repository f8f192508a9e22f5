"""One image through one model, captured once; every click after that only reads rows.

This is the app without its widgets: an :class:`Exploration` runs a bundled model on an image under
:func:`spatial_attn.engine.capture` (once per image, model, timestep and seed), and :meth:`Exploration.click`
maps a click to each layer's own cell, reads that row (or column) from the cached queries and keys,
and renders the panels. The Gradio UI and the ``/attend`` endpoint are thin wrappers around it, so
all of it is testable without a browser.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from ..engine.capture import capture
from ..engine.grid import cell_at
from ..engine.layer import AttentionLayer
from . import payload, render

if TYPE_CHECKING:
    from ..models import BundledModel

PANEL = 192  # side of each heatmap panel, px (32 x 6: every cell of every grid is whole pixels)


@dataclass(frozen=True)
class View:
    """How to draw a click: which heads, what direction, which colours."""

    head: str = "mean"  # "mean", "max" or "head k"
    mode: Literal["row", "column"] = "row"  # where the pixel looks / who looks at it
    cmap: str = "viridis"
    scale: render.Scale = "× uniform"
    smooth: bool = False
    opacity: float = 0.65
    heads_grid: bool = False  # one panel per head (and the mean) for every layer
    over: Literal["image", "input"] = "image"  # draw over the clean image, or what the model saw


@dataclass
class LayerClick:
    """What one click shows of one layer."""

    layer: AttentionLayer
    cell: tuple[int, int]  # the clicked cell on the grid the map is about (query grid for rows)
    token: int  # its index on the flattened axis: start + y*W + x
    values: np.ndarray  # the map: key grid for rows, query grid for columns
    head_note: str = ""
    special: dict[str, float] = field(default_factory=dict)
    entropy: float | None = None
    distance: float | None = None
    panel: Image.Image | None = None

    def caption(self) -> str:
        """One line under the panel: name, grids, heads, entropy, special-token mass, caveats."""
        layer = self.layer
        parts = [
            layer.name,
            f"{_grid_text(layer.query_grid)} queries → {_grid_text(layer.key_grid)} keys",
            f"{layer.heads} head{'s' if layer.heads > 1 else ''}{self.head_note}",
        ]
        if self.entropy is not None:
            of = " (of the head mean)" if self.head_note.startswith(" (max") else ""
            parts.append(f"entropy {self.entropy:.2f} of {np.log2(layer.keys.count):.2f} bits{of}")
        parts += [f"{label} {mass:.1%}" for label, mass in self.special.items()]
        if layer.verification.ok is not True:
            parts.append(f"unverified: {layer.verification.detail}")
        if layer.single_query:
            parts.append("one query (not a pixel): every click shows its row")
        parts += [f"grid uncertain: {t.note}" for t in (layer.queries, layer.keys) if t.ambiguous][:1]
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The numbers behind the panel, for the HTTP API."""
        layer = self.layer
        return {
            "name": layer.name,
            "family": layer.family,
            "query_grid": list(layer.query_grid) if layer.query_grid else None,
            "key_grid": list(layer.key_grid) if layer.key_grid else None,
            "heads": layer.heads,
            "cell": list(self.cell),
            "token": self.token,
            "values": np.round(self.values.astype(np.float64), 7).tolist(),
            "special": self.special,
            "entropy_bits": self.entropy,
            "head": self.head_note.strip(" ()") or "mean",  # says so when a layer lacks the head asked
            "verified": layer.verification.ok,
        }


def shown(layers: list[AttentionLayer]) -> tuple[list[AttentionLayer], list[str]]:
    """The layers a view may draw, and a line for each one it must not: a layer whose own
    verification says its rows do not reproduce the model's output (attention that is not what the
    adapter took it for) is never drawn as if it held. Layers with no query grid have no map to click;
    those whose queries are the model's learned queries (DETR) are named, so they are not lost."""
    drawn, refuted = [], []
    for layer in layers:
        if layer.query_grid is None:
            if layer.queries.labels:
                refuted.append(
                    f"{layer.name}: its {layer.queries.count} queries are learned queries, not pixels: no "
                    f"panel; from Python, layer.row_of_token({layer.queries.labels[0]!r}) is one's map"
                )
            continue
        if layer.verification.ok is False:
            refuted.append(f"{layer.name} ({layer.family}): not shown: {layer.verification.detail}")
        else:
            drawn.append(layer)
    return drawn, refuted


class Exploration:
    """A bundled model run once on one image under capture."""

    def __init__(
        self, model: BundledModel, image: Image.Image | None, *, timestep: int | None = None, seed: int = 0
    ) -> None:
        self.model = model
        self.prepared = model.prepare(image, timestep=timestep, seed=seed)
        with torch.no_grad(), capture(model.module) as cap:
            self.summary = model.run(self.prepared)
        self.layers, refuted = shown(cap.layers)
        self.problems = cap.problems + refuted
        # what the user sees: the image exactly as the model's own resizing made it (or the sample)
        self.image = model.to_input(image)[1] if image is not None else self.prepared.display
        self.input = self.prepared.display  # what the model saw (x_t for the DDPM)
        self.timestep = timestep
        self.seed = seed  # of the noise (DDPM) or z (SAGAN generator)

    @classmethod
    def captured(cls, layers: list[AttentionLayer], image: np.ndarray) -> Exploration:
        """Layers the caller captured (``sa.capture``) from a forward on ``image``, the ``(H, W, 3)``
        uint8 picture that forward saw: an exploration with no model behind it (no provenance, no
        re-run), enough to draw and follow the panels (``sa.show``)."""
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
            raise ValueError("the image must be the (H, W, 3) uint8 picture the model saw")
        explored = cls.__new__(cls)
        explored.model, explored.prepared, explored.summary = None, None, None
        explored.layers = [layer for layer in layers if layer.query_grid is not None]
        explored.problems = []
        explored.image = explored.input = image
        explored.timestep, explored.seed = None, None
        return explored

    @property
    def image_hw(self) -> tuple[int, int]:
        """Size of the model's input, in pixels."""
        return self.image.shape[0], self.image.shape[1]

    def nbytes(self) -> int:
        """Memory held by the captured layers (queries and keys; never an N x N matrix)."""
        return sum(layer.nbytes() for layer in self.layers)

    def max_heads(self) -> int:
        """The most heads any layer has (for the head selector)."""
        return max((layer.heads for layer in self.layers), default=1)

    def click(
        self, point: tuple[float, float], image_hw: tuple[int, int], view: View, draw: bool = True
    ) -> list[LayerClick]:
        """Every layer's map for a click at ``point = (y, x)`` in an image of size ``image_hw``.

        The point is mapped to each layer's own grid with :func:`~spatial_attn.engine.grid.cell_at`, so an
        uploaded photo, the upscaled display and the 32x32 model input all agree on the cell.
        ``draw=False`` leaves ``panel`` unset (the app's browser draws its own).
        """
        clicks = [self._read(layer, point, image_hw, view) for layer in self.layers]
        if not draw:
            return clicks
        shared = max((float(c.values.max()) for c in clicks), default=1.0)  # "shared": one top for all
        base = render.upscale(self.image if view.over == "image" else self.input, (PANEL, PANEL))
        for c in clicks:
            c.panel = self._draw(c, base, view, shared)
        return clicks

    def _read(
        self, layer: AttentionLayer, point: tuple[float, float], image_hw: tuple[int, int], view: View
    ) -> LayerClick:
        head, note = _head(view.head, layer.heads)
        cell, token = cell_of(layer, point, image_hw, view.mode)
        if view.mode == "column" and layer.key_grid is not None:
            return LayerClick(layer, cell, token, layer.column(*cell, head=head), note)
        row = layer.attend(*cell, head=head)
        return LayerClick(layer, cell, row.token, row.values, note, row.special, row.entropy, row.distance)

    def _draw(self, c: LayerClick, base: Image.Image, view: View, shared: float) -> Image.Image:
        layer = c.layer
        scale = render.colour_scale(c.values, view.scale, layer.keys.count, shared)
        if c.values.ndim == 1:  # keys with no place in the image
            return render.strip(c.values, scale=scale, cmap=view.cmap)
        grid = layer.key_grid if view.mode == "column" and layer.key_grid else layer.query_grid
        outline = (c.cell, grid)
        draw = dict(scale=scale, cmap=view.cmap, opacity=view.opacity, smooth=view.smooth, outline=outline)
        if not view.heads_grid or view.mode == "column" or layer.heads == 1:  # one head: its map is the mean
            return render.panel(base, c.values, **draw)
        per_head = layer.head_rows(*c.cell)
        maps = [*per_head, per_head.mean(0)]  # every head, then their mean
        if view.scale not in ("shared", "× uniform"):  # one top for the layer's maps
            top = max(render.vmax_of(m, view.scale) for m in maps)
            draw["scale"] = render.ColourScale(False, top=top)
        return render.side_by_side([render.panel(base, m, **draw) for m in maps])

    @functools.cached_property
    def hover(self) -> tuple[str, str]:
        """``(id, JSON)`` of what the browser needs to recompute rows under the mouse (the queries and
        keys of :func:`~spatial_attn.analysis.payload.hover_json`): encoded once per run, fetched by the page
        once per run (``views/panels.py``: ``hover_data``); the id is random, so no other page guesses it."""
        return uuid.uuid4().hex[:12], json.dumps(payload.hover_json(self.layers))

    def browser_data(self, point: tuple[int, int], view: View) -> dict[str, Any]:
        """Everything the page draws the panels from for a click at model-input pixel ``point``: the
        layers, each one's pinned vector for every head, the view, the colormap and the picture."""
        return {
            "id": self.hover[0],
            "pixel": list(point),
            "image_hw": list(self.image_hw),
            "size": self._panel_size,
            "view": {
                "head": view.head,
                "cmap": view.cmap,
                "scale": view.scale,
                "smooth": view.smooth,
                "opacity": view.opacity,
                "heads_grid": view.heads_grid,
            },
            "lut": render.lut(view.cmap).ravel().tolist(),
            "base": self._base_uri(view.over),
            "layers": [
                {**described, "pinned": payload.pinned_json(layer, point, self.image_hw, view.mode)}
                for layer, described in zip(self.layers, self._layers_json, strict=True)
            ],
        }

    # what browser_data sends on every click but only changes with the run: made once per run
    @functools.cached_property
    def _panel_size(self) -> int:
        grids = [g for layer in self.layers for g in (layer.query_grid, layer.key_grid) if g]
        return render.panel_size(grids, self.image_hw)

    @functools.cached_property
    def _layers_json(self) -> list[dict[str, Any]]:
        return [payload.layer_json(layer) for layer in self.layers]

    @functools.cached_property
    def _base_uris(self) -> dict[str, str]:
        return {}  # "image" / "input" -> PNG data URI, filled on first use

    def _base_uri(self, over: str) -> str:
        # kept on the run itself: a functools.cache on the method held every run ever made (with its
        # queries and keys) alive for the life of the server
        if over not in self._base_uris:
            self._base_uris[over] = render.png_data_uri(self.image if over == "image" else self.input)
        return self._base_uris[over]

    def first_point(self) -> tuple[int, int]:
        """Where the first click lands: the left eye when the picture is a face whose eyes can be
        found (a click there lights up the other eye), else the centre, where little stands out."""
        from ..data.eyes import locate_eyes  # numpy only; loaded only when asked

        h, w = self.image_hw
        found = locate_eyes(self.image) if (h, w) == (32, 32) else None
        if found is None:
            return h // 2, w // 2
        y, x = found[0][0]
        return min(int(y), h - 1), min(int(x), w - 1)


def cell_of(
    layer: AttentionLayer, point: tuple[float, float], image_hw: tuple[int, int], mode: str = "row"
) -> tuple[tuple[int, int], int]:
    """The cell of ``layer`` that a click at ``point`` lands on, and its token: on the query grid for
    a row, on the key grid for a column (when the keys have one)."""
    if mode == "column" and layer.key_grid is not None:
        cell = cell_at(point, image_hw, layer.key_grid)
        return cell, layer.keys.token(*cell)
    cell = cell_at(point, image_hw, layer.query_grid)
    return cell, layer.queries.token(*cell)


def explain(
    clicks: list[tuple[AttentionLayer, tuple[int, int], int]], pixel: tuple[int, int], mode: str = "row"
) -> str:
    """The paragraph beside the panels: what a row is, for this very click, layer by layer."""
    y, x = pixel
    lines = [
        f"You clicked pixel **(y, x) = ({y}, {x})** of the model's input. An attention layer flattens its "
        "C × H × W feature map into N = H·W tokens, row by row: **token i = y·W + x** is the cell at (y, x). "
        + (
            "Row i of the N × N′ softmax matrix says how that token's attention is spread over the keys: "
            "that row is each map (it sums to 1 with any special tokens)."
            if mode == "row"
            else "Column j of the softmax matrix says how much every query token gives to key j: "
            "each map shows who looks at the clicked cell."
        )
        + " The matrix is never built: each row is computed from the cached queries and keys.",
        "",
        "| layer | grid | your cell (y, x) | token i = y·W + x | matrix |",
        "|---|---|---|---|---|",
    ]
    for layer, cell, token in clicks:
        grid = layer.query_grid if mode == "row" or layer.key_grid is None else layer.key_grid
        h, w = grid
        start = (layer.queries if mode == "row" else layer.keys).start
        offset = f"{start} + " if start else ""
        lines.append(
            f"| `{layer.name}` | {h}×{w} | ({cell[0]}, {cell[1]}) | "
            f"{offset}{cell[0]}·{w} + {cell[1]} = **{token}** | "
            f"{layer.queries.count} × {layer.keys.count} |"
        )
    lines += [
        "",
        "Each step of a row, for any layer and head of this click (the queries, the logits, the softmax "
        "and a temperature to play with, the whole matrix), is in the tab **how a row is made**.",
    ]
    return "\n".join(lines)


def head_index(choice: str) -> int | str | None:
    """ "mean" -> None, "max" -> "max", "head k" -> k; anything else is the user's mistake, said plainly."""
    if not isinstance(choice, str):
        raise ValueError(f"head must be 'mean', 'max' or 'head k' with k = 0, 1, ...; got {choice!r}")
    if choice in ("mean", "max"):
        return None if choice == "mean" else "max"
    word, _, k = choice.partition(" ")
    if word != "head" or not k.isdigit():
        raise ValueError(f"head must be 'mean', 'max' or 'head k' with k = 0, 1, ...; got {choice!r}")
    return int(k)


def _head(choice: str, heads: int) -> tuple[int | str | None, str]:
    """The head argument for a layer, and a caption note when the layer lacks the chosen head."""
    k = head_index(choice)
    if not isinstance(k, int):
        return k, f" ({choice})" if heads > 1 else ""
    if k < heads:
        return k, f" (head {k})"
    return None, f" (no head {k}: mean)"


def _grid_text(grid: tuple[int, int] | None) -> str:
    return "text" if grid is None else f"{grid[0]}×{grid[1]}"
