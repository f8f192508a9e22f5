"""The heatmap panels: one titled figure per layer, drawn in the browser, live under the mouse.

The server writes each figure's frame (title, canvases of one display size, colorbar, caption) and
the data to fill it (:meth:`~spatial_attn.analysis.explore.Exploration.browser_data`); ``panels.js`` paints
the canvases, and repaints them for the pixel under the mouse from the queries and keys of the run,
which it fetches once per run through :func:`hover_data`: a click's HTML does not carry them, so it
stays small however large the model (a ViT-B/16's are 10 MB). ``data-pixel`` on every figure says
which model-input pixel ``y,x`` it shows (read by the tests and the hover benchmark).
"""

from __future__ import annotations

import html
import json
import weakref
from pathlib import Path
from typing import Any

import gradio as gr

SCRIPT = (Path(__file__).with_name("panels.js")).read_text()

STYLE = """
.sa-panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(128px, 1fr)); gap: 10px 12px;
  align-items: start; overflow-y: auto; overscroll-behavior: contain; }
.sa-panel { margin: 0; min-width: 0; }
.sa-panel.sa-wide { grid-column: 1 / -1; }
.sa-panel.sa-wide .sa-maps { grid-template-columns: repeat(auto-fill, minmax(128px, 192px)); }
.sa-title { font-weight: 600; font-size: 12px; margin-bottom: 2px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.sa-maps { display: grid; grid-template-columns: repeat(auto-fit, minmax(128px, 1fr)); gap: 6px; }
.sa-map-title { font-size: 11px; }
canvas.sa-map { display: block; width: 100%; height: auto; border-radius: 3px; image-rendering: pixelated;
  cursor: crosshair; }
.sa-bar { display: block; width: 100%; height: 8px; margin-top: 3px; }
.sa-ticks { position: relative; height: 13px; font-size: 11px; line-height: 13px; }
.sa-ticks span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.sa-ticks span:first-child { transform: none; }
.sa-ticks span:last-child { transform: translateX(-100%); }
.sa-ticks span.sa-hidden { visibility: hidden; }
.sa-value { font-size: 11px; opacity: 0.8; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.sa-value { min-height: 14px; }
.sa-panel figcaption { font-size: 11px; line-height: 1.3; margin-top: 1px; }
.sa-stale canvas.sa-map { opacity: 0.5; }
.sa-live { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
"""


#: What a reader of the panels needs once, folded under them rather than repeated in every caption.
HELP = (
    "Each panel is one attention layer: for the pixel you point at (outlined), its row of the softmax "
    "matrix reshaped to the key grid, drawn over the image. **× uniform** colours divide by 1/N′, what "
    "every key would get if attention were even: 1× is even, 16× is sixteen times that. "
    "The caption gives the query → key grids, the heads shown, the query cell and token "
    "(i = y·W + x) and the row's entropy. "
    "**Pointing and pinning.** While you hover (or move the pin with the arrow keys), the rows are "
    "computed in the page from queries and keys sent as float16: values can differ from the pinned "
    "row's in the third digit (marked *float16 preview*). A click pins the pixel and the server sends "
    "its exact (float32) row; the export, `/attend` and the other tabs use those."
)

#: The choices of the display controls (app.view_of checks a value against them).
MODES = ("row: where it looks", "column: who looks at it")
LAYOUTS = ("per layer", "layers × heads")
UPSAMPLING = ("nearest", "smooth")
OVER = ("image", "model input")

#: The runs whose panels were drawn, by their random id, for as long as their session keeps them.
_RUNS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def hover_data(run_id: str) -> str | None:
    """The queries and keys of run ``run_id`` as JSON (:func:`spatial_attn.analysis.payload.hover_json`), for
    the page to follow the mouse; None once the run is gone. ``panels.js`` asks once per run."""
    run = _RUNS.get(str(run_id))
    return run.hover[1] if run is not None else None


def component() -> gr.HTML:
    """The panels' container: its value is :func:`html_of` one click."""
    return gr.HTML(
        elem_id="heatmaps",
        js_on_load=SCRIPT,
        css_template=STYLE,
        min_height=240,
        server_functions=[hover_data],
    )


def controls() -> tuple[gr.components.Component, ...]:
    """How the panels are drawn, in :func:`spatial_attn.app.blocks.view_of`'s order: head, show, colormap,
    colour scale, upsampling, opacity, layout, draw over."""
    from ...analysis import render

    # the three that change what a panel means, in view; how it looks, folded away
    with gr.Row(elem_id="display"):
        head = gr.Dropdown(["mean", "max"], value="mean", label="head", elem_id="head", min_width=100)
        scale = gr.Dropdown(list(render.SCALES), value="× uniform", label="colour scale", elem_id="scale")
    mode = gr.Radio(list(MODES), value=MODES[0], label="show", elem_id="mode")
    with gr.Accordion("more display settings", open=False, elem_id="display-more"):
        layout = gr.Radio(list(LAYOUTS), value=LAYOUTS[0], label="layout", elem_id="layout")
        with gr.Row():
            cmap = gr.Dropdown(list(render.COLORMAPS), value="viridis", label="colormap", min_width=100)
            upsampling = gr.Radio(list(UPSAMPLING), value=UPSAMPLING[0], label="upsampling", min_width=100)
        over = gr.Radio(list(OVER), value=OVER[0], label="draw over")
        opacity = gr.Slider(0, 1, value=0.65, step=0.05, label="heatmap opacity", elem_id="opacity")
    return head, mode, cmap, scale, upsampling, opacity, layout, over


def html_of(data: dict[str, Any], run: Any) -> str:
    """The figures for ``data`` (browser data of one click of ``run``, an Exploration), with the
    payload the script reads; ``run`` is registered for :func:`hover_data`."""
    _RUNS[data["id"]] = run
    size = data["size"]
    figures = [_figure(layer, data, size) for layer in data["layers"]]
    pixel = ",".join(map(str, data["pixel"]))
    return (
        f'<div class="sa-panels" data-pixel="{pixel}" data-id="{data["id"]}"'
        f' data-payload="{html.escape(json.dumps(data))}">' + "".join(figures) + "</div>"
    )


def _figure(layer: dict[str, Any], data: dict[str, Any], size: int) -> str:
    """One layer's frame: title, one canvas per map (each head and their mean, or one), colorbar."""
    view, heads, name = data["view"], layer["heads"], html.escape(layer["name"])
    spatial = (layer["keys"] if layer["pinned"]["mode"] == "row" else layer["queries"])["grid"] is not None
    if view["heads_grid"] and layer["pinned"]["mode"] == "row" and heads > 1:
        titles = [f"head {h}" for h in range(heads)] + [f"mean of {heads} heads"]
    else:
        titles = [""]
    height = size if spatial else 24
    maps = "".join(
        f'<div><div class="sa-map-title">{t}</div>'
        f'<canvas class="sa-map" width="{size}" height="{height}" aria-label="{name} {t}"></canvas></div>'
        for t in titles
    )
    pixel = ",".join(map(str, data["pixel"]))
    wide = " sa-wide" if len(titles) > 1 else ""  # a layer's heads side by side take a whole row
    caption = html.escape(_static_caption(layer, view["head"]))
    return (
        f'<figure class="sa-panel{wide}" data-layer="{name}" data-pixel="{pixel}">'
        f'<div class="sa-title" title="{name}">{name}</div><div class="sa-maps">{maps}</div>'
        f'<canvas class="sa-bar" width="{size}" height="8"></canvas><div class="sa-ticks"></div>'
        f'<div class="sa-value"></div>'
        f'<figcaption title="{caption}">{caption}<br><span class="sa-stats"></span></figcaption></figure>'
    )


def _static_caption(layer: dict[str, Any], head: str) -> str:
    """What the caption says whatever pixel is shown: grids, heads, caveats."""
    grid = lambda g: "text" if g is None else f"{g[0]}×{g[1]}"  # noqa: E731
    heads = layer["heads"]
    word, _, k = head.partition(" ")
    if heads == 1:
        chosen = ""
    elif word == "head" and int(k) >= heads:
        chosen = f" (no {head}: mean)"
    else:
        chosen = f" ({head})"
    parts = [
        f"q {grid(layer['queries']['grid'])} → k {grid(layer['keys']['grid'])}",
        f"{heads} head{'s' if heads > 1 else ''}{chosen}",
    ]
    if layer["verified"] is not True:
        parts.append(f"unverified: {layer['detail']}")
    return " · ".join(parts)
