"""The heatmap panels: one titled figure per layer, drawn in the browser, live under the mouse.

The server writes each figure's frame (title, canvases of one display size, colorbar, caption) and
the data to fill it (:meth:`~spatial_attn.analysis.explore.Exploration.browser_data`); ``panels.js`` paints
the canvases, and repaints them for the pixel under the mouse from the queries and keys of the run,
which it fetches once per run through :func:`hover_data`: a click's HTML does not carry them, so it
stays small however large the model (a ViT-B/16's are 10 MB). ``data-pixel`` on every figure says
which model-input pixel ``y,x`` it shows (read by the tests and the hover benchmark). The markup and
the script are :mod:`spatial_attn.analysis.panels`, shared with the export's page and ``sa.show``.
"""

from __future__ import annotations

import weakref
from typing import Any

import gradio as gr

from ...analysis.panels import SCRIPT, STYLE, panels_html

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
    payload the script reads (:func:`spatial_attn.analysis.panels.panels_html`); ``run`` is registered
    for :func:`hover_data`."""
    _RUNS[data["id"]] = run
    return panels_html(data)
