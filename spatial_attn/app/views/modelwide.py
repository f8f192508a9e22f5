"""The "whole model" tab: attention rollout, mean attention distance by depth, entropy and distance
maps, and what every key receives (:mod:`spatial_attn.analysis.modelwide` computes them; this draws).

Each view reads every query of every layer (in blocks, never the N x N matrix), so it is computed on
request, with a progress bar, and a run's layer statistics are kept for as long as the run is.
"""

from __future__ import annotations

import io
import weakref
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ...analysis import modelwide, render
from ...engine.grid import cell_at
from ..serving import RUN_EVENTS

ROLLOUT_ROW = "rollout: where the pinned pixel's output comes from"
ROLLOUT_COLUMN = "rollout: where the pinned pixel's input goes"
DEPTH = "mean attention distance by depth"
MAPS = "entropy and distance per pixel (one layer)"
RECEIVED = "attention received (every layer)"
VIEWS = (ROLLOUT_ROW, ROLLOUT_COLUMN, DEPTH, MAPS, RECEIVED)

#: Layer statistics of the runs they were computed for, for as long as each run lives.
_STATS: weakref.WeakKeyDictionary[Any, list[modelwide.LayerStats]] = weakref.WeakKeyDictionary()
#: Gradio passes a progress bar to a handler whose argument defaults to one.
PROGRESS = gr.Progress()


class ModelWideView:
    """A choice of view, the layer (or run of layers) it is about, a button, the picture and a note."""

    def __init__(self) -> None:
        with gr.Row():
            self.view = gr.Radio(list(VIEWS), value=VIEWS[0], label="view", elem_id="mw-view", scale=3)
            self.layer = gr.Dropdown([], label="layers", elem_id="mw-layer", scale=2)
            self.button = gr.Button("compute", elem_id="mw-run", scale=1)
        self.note = gr.Markdown(elem_id="mw-note")
        self.image = gr.Image(
            show_label=False, elem_id="mw-image", interactive=False, format="png", buttons=["download"]
        )

    def wire(self, state: gr.State) -> None:
        """The layer choices follow the run and the view; the view is computed on request."""
        choices = {"api_name": False, "show_progress": "hidden"}
        state.change(self.choices, [state, self.view, self.layer], self.layer, **choices)
        self.view.change(self.choices, [state, self.view, self.layer], self.layer, **choices)
        outputs = [self.image, self.note]
        self.button.click(self.show, [state, self.view, self.layer], outputs, api_name=False, **RUN_EVENTS)

    @staticmethod
    def choices(session: Any, view: str, chosen: str | None) -> Any:
        """Runs of layers for rollout, layers for the maps, nothing for the views of every layer."""
        if session is None:
            return gr.skip()
        names = _choices(session.exploration.layers, view)
        return gr.Dropdown(names, value=chosen if chosen in names else (names[-1] if names else None))

    @staticmethod
    def show(session: Any, view: str, chosen: str | None, progress: Any = PROGRESS) -> tuple:
        """Compute ``view`` for the session's run (and pinned pixel) and draw it."""
        if session is None:
            raise gr.Error("the image is still loading; try again in a moment", print_exception=False)
        if view not in VIEWS:
            raise gr.Error(f"view must be one of {', '.join(VIEWS)}", print_exception=False)
        ex = session.exploration
        report = lambda done, total, what: progress((done, total), desc=what)  # noqa: E731
        if view in (ROLLOUT_ROW, ROLLOUT_COLUMN):
            return _rollout(ex, session.point, chosen, "row" if view == ROLLOUT_ROW else "column", report)
        stats = _STATS.get(ex)
        if stats is None:
            stats = _STATS[ex] = modelwide.model_stats(ex.layers, ex.image_hw, progress=report)
        if view == DEPTH:
            return _depth(stats, ex.image_hw)
        if view == MAPS:
            return _maps(ex, stats, chosen)
        return _received(ex, stats)


def _choices(layers: list, view: str) -> list[str]:
    if view in (ROLLOUT_ROW, ROLLOUT_COLUMN):
        return [_group_label(layers, g) for g in modelwide.rollout_groups(layers)]
    if view == MAPS:
        return [layer.name for layer in layers]
    return []


def _group_label(layers: list, group: list[int]) -> str:
    first, last = layers[group[0]], layers[group[-1]]
    h, w = first.query_grid
    span = first.name if len(group) == 1 else f"{first.name} … {last.name}"
    return f"{span} ({len(group)} layer{'s' * (len(group) > 1)}, {h}×{w})"


def _base(ex: Any) -> Image.Image:
    side = render.panel_size([layer.query_grid for layer in ex.layers], ex.image_hw)
    return render.upscale(ex.image, (side, side))


def _rollout(ex: Any, point: tuple[int, int], chosen: str | None, mode: str, report: Any) -> tuple:
    groups = modelwide.rollout_groups(ex.layers)
    labels = [_group_label(ex.layers, g) for g in groups]
    if not groups:
        return None, "No run of self-attention layers over one token set: rollout is not defined here."
    group = groups[labels.index(chosen)] if chosen in labels else groups[-1]
    chain = [ex.layers[i] for i in group]
    cell = cell_at(point, ex.image_hw, chain[0].query_grid)
    rolled = modelwide.rollout(chain, cell, mode=mode, progress=report)  # type: ignore[arg-type]
    base = _base(ex)
    pictures = []
    for which, title in (("rollout", "rollout, 0.5 (A + I)"), ("plain", "plain product of A")):
        values = rolled.map(which)  # type: ignore[arg-type]
        scale = render.ColourScale(False, top=float(values.max()) or 1.0)
        special = "".join(f" · {k} {v:.1%}" for k, v in rolled.special(which).items())  # type: ignore[arg-type]
        text = f"{title} · top {scale.top:.3g}{special}"
        pictures.append(
            render.labelled(render.panel(base, values, scale=scale, outline=(cell, values.shape)), text)
        )
    direction = (
        "what the last layer's output at the pixel draws from, at the first layer's input"
        if mode == "row"
        else "how much of the first layer's input at the pixel reaches each output of the last"
    )
    note = (
        f"Pixel (y, x) = {tuple(point)}, cell {cell} of {chain[0].query_grid[0]}×{chain[0].query_grid[1]}, "
        f"through {len(chain)} layer(s) `{chain[0].name}` … `{chain[-1].name}` (head mean): {direction}. "
        "Rollout (Abnar & Zuidema 2020) multiplies 0.5 (A + I) layer by layer, the identity standing for "
        "the residual; the plain product leaves it out. Colours: 0 to each map's top."
    )
    return render.side_by_side(pictures, 8), note


def _depth(stats: list[modelwide.LayerStats], image_hw: tuple[int, int]) -> tuple:
    points = modelwide.distance_by_depth(stats)
    if not points:
        return None, "No layer has both its queries and its keys on a grid: distances are not defined."
    rows = [
        f"| {depth} | `{name}` | " + ", ".join(f"{d:.1f}" for d in distances) + " |"
        for depth, name, distances in points
    ]
    note = "\n".join(
        [
            "Each head's attention-weighted distance from a pixel query to its keys, averaged over every "
            "pixel query (Dosovitskiy et al. 2021, Fig. 7), in pixels of the model's input.",
            "",
            "| depth | layer | mean distance per head (px) |",
            "|---|---|---|",
            *rows,
        ]
    )
    return Image.open(io.BytesIO(modelwide.depth_figure(points, image_hw))), note


def _maps(ex: Any, stats: list[modelwide.LayerStats], chosen: str | None) -> tuple:
    names = [s.name for s in stats]
    s = stats[names.index(chosen)] if chosen in names else stats[-1]
    base = _base(ex)
    bits = float(np.log2(s.keys.count))
    entropy = [("head mean", s.entropy), *((f"head {h}", e) for h, e in enumerate(s.entropy_heads))]
    rows = [_labelled_maps(base, entropy, render.ColourScale(False, top=bits), "entropy", "bits")]
    if s.distance is not None and s.distance_heads is not None:
        distance = [("head mean", s.distance), *((f"head {h}", d) for h, d in enumerate(s.distance_heads))]
        top = float(np.nanmax([np.nanmax(d) for _, d in distance])) or 1.0
        rows.append(_labelled_maps(base, distance, render.ColourScale(False, top=top), "distance", "px"))
    note = (
        f"`{s.name}`: for every pixel query, the entropy of its row (bits, of {bits:.2f} at most) and the "
        "attention-weighted distance to the key cells (input pixels), for the head mean and each head. "
        "Colours: entropy from 0 to the maximum, distance from 0 to the largest shown."
    )
    return render.stacked(rows, 8), note


def _labelled_maps(
    base: Image.Image, maps: list[tuple[str, np.ndarray]], scale: render.ColourScale, what: str, unit: str
) -> Image.Image:
    return render.side_by_side(
        [
            render.labelled(render.panel(base, np.nan_to_num(m), scale=scale), f"{what} · {title}")
            for title, m in maps
        ]
        + [render.labelled(Image.new("RGB", (96, 24), "white"), f"0 to {scale.top:.3g} {unit}")],
        6,
    )


def _received(ex: Any, stats: list[modelwide.LayerStats]) -> tuple:
    base = _base(ex)
    pictures, lines = [], []
    for s in stats:
        values = s.received_map()
        scale = render.ColourScale(True, tokens=s.keys.count)
        special = s.special_share()
        text = " · ".join([s.name, *(f"{k} {v:.1%}" for k, v in special.items())])
        if values.ndim == 2:
            pictures.append(render.labelled(render.panel(base, values, scale=scale), text))
        else:  # keys that are not pixels (text): a strip
            pictures.append(render.labelled(render.strip(values, scale=scale, cmap="viridis"), text))
        top = np.unravel_index(int(np.argmax(values)), values.shape)
        lines.append(
            f"| `{s.name}` | {float(values.max()) * s.keys.count:.1f}× at {tuple(map(int, top))} | "
            f"{sum(special.values()):.1%} |"
        )
    note = "\n".join(
        [
            "What each key receives: the mean over every query of its weight (head mean), in multiples of "
            "the uniform share 1/N′ (1/16× to 16×). Keys that everyone looks at (sinks, the high-norm "
            "artifact tokens of Darcet et al. 2024) stand out.",
            "",
            "| layer | most received | special tokens' share |",
            "|---|---|---|",
            *lines,
        ]
    )
    return render.tiled(pictures, 4), note
