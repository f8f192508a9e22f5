"""One click's panels as a single HTML file that follows the mouse with no server and no network.

A reader of a paper or a chat thread opens ``index.html`` (from an export's zip) or sees ``sa.show``
inline in a notebook: the same figures as the app (:mod:`spatial_attn.analysis.panels`, the same
``#input-image img`` and ``#heatmaps figure.sa-panel`` markup), painted by the same ``panels.js``.
What the app's page fetches from its server once per run (the layers' queries and keys,
:func:`~spatial_attn.analysis.payload.hover_json`) is embedded instead, and the script's ``server`` is a
stand-in that hands it over; everything else the script reads (the picture, the pinned rows, the
colormap) is already in the panels' payload. Nothing is loaded from anywhere: the picture is a data
URI, the style and the script are inline.

Size: the queries and keys are embedded up to :data:`~spatial_attn.analysis.payload.HOVER_BUDGET`
bytes of float16 (base64 adds a third); layers beyond it show the pinned pixel only, and the page
says how many layers follow the mouse.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import render
from .panels import SCRIPT, STYLE, panels_html
from .payload import HOVER_BUDGET

if TYPE_CHECKING:
    from .explore import Exploration, View

DISPLAY = 384  # side of the image to hover, px (the app's own)

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
.sa-heading { font-size: 15px; font-weight: 600; margin: 0 0 4px; }
.sa-note { font-size: 12px; opacity: 0.8; margin: 0 0 12px; max-width: 1100px; }
.sa-page { display: flex; gap: 20px; align-items: flex-start; flex-wrap: wrap; }
#input-image { position: sticky; top: 8px; }
#input-image img { image-rendering: pixelated; cursor: crosshair; display: block; }
#heatmaps { flex: 1; min-width: 300px; }
"""

# panels.js runs inside Gradio's gr.HTML with `element`, `watch`, `server` (and `props`, `trigger`)
# in scope; here they are stand-ins: the panels' container, no re-render, and the embedded hover data.
SHIM = """
(() => {
  const element = document.getElementById("heatmaps");
  const embedded = document.getElementById("sa-hover").textContent;
  const server = { hover_data: () => Promise.resolve(embedded) };
  const watch = () => {};
  const trigger = () => {};
  const props = {};
%s
})();
"""


def page(exploration: Exploration, point: tuple[int, int], view: View, heading: str) -> str:
    """The whole page for a click at model-input pixel ``point`` drawn with ``view``, titled ``heading``."""
    data = exploration.browser_data(point, view)
    run_id, hover = exploration.hover
    assert data["id"] == run_id  # the script asks for the queries and keys of this very run
    followed = sum(entry is not None for entry in json.loads(hover))
    h, w = exploration.image_hw
    side = (round(DISPLAY * h / max(h, w)), round(DISPLAY * w / max(h, w)))
    picture = render.png_data_uri(render.upscale(exploration.image, side))
    note = (
        f"Move the mouse over the image: every panel shows where that pixel looks, recomputed in this page "
        f"from the run's queries and keys (float16; {followed} of {len(exploration.layers)} layers follow "
        f"the mouse, the queries and keys of at most {HOVER_BUDGET / 2**20:g} MiB being embedded). "
        f"Elsewhere the panels show the exported pixel (y, x) = ({point[0]}, {point[1]}), computed in "
        "float32. Made by spatial-attn; it needs no server and no network."
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(heading)}</title><style>{PAGE_STYLE}{STYLE}</style></head><body>"
        f'<h1 class="sa-heading">{html.escape(heading)}</h1><p class="sa-note">{html.escape(note)}</p>'
        f'<div class="sa-page"><div id="input-image"><img alt="the model\'s input" src="{picture}" '
        f'width="{side[1]}" height="{side[0]}"></div>'
        f'<div id="heatmaps">{panels_html(data)}</div></div>'
        f'<script type="application/json" id="sa-hover">{hover}</script>'
        f"<script>{SHIM % SCRIPT}</script></body></html>\n"
    )


class Shown:
    """A page displayed inline by Jupyter (``_repr_html_``): in an ``iframe`` of its own (``srcdoc``), so
    that two displays in one notebook keep their ids and their scripts apart. ``html`` is the page."""

    def __init__(self, page_html: str, height: int = 720) -> None:
        self.html = page_html
        self.height = height

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
            f'style="width: 100%; height: {self.height}px; border: 0;"></iframe>'
        )

    def save(self, path: str) -> None:
        """Write the page to ``path`` (open it in any browser, no server needed)."""
        with open(path, "w", encoding="utf-8") as out:
            out.write(self.html)


def show(
    run: Any,
    image: Any = None,
    *,
    pixel: tuple[int, int] | None = None,
    head: str = "mean",
    mode: Literal["row", "column"] = "row",
    scale: str = "× uniform",
    cmap: str = "viridis",
    timestep: int | None = None,
    seed: int = 0,
    height: int = 720,
) -> Shown:
    """The hover panels of ``run`` for a notebook (see :func:`spatial_attn.show`)."""
    from ..models.bundle import BundledModel
    from .explore import Exploration, View, head_index
    from .provenance import provenance, title, version

    head_index(head)  # its form, said before any work
    if isinstance(run, Exploration):
        explored = run
    elif isinstance(run, BundledModel):
        explored = Exploration(run, _pil(image), timestep=timestep, seed=seed)
    elif hasattr(run, "layers") or isinstance(run, list):
        if image is None:
            raise ValueError("a capture is shown over the image its forward saw: pass image=")
        explored = Exploration.captured(list(getattr(run, "layers", run)), _uint8(image))
    else:
        raise ValueError(f"show takes a model run, a bundled model or a capture; got {type(run).__name__}")
    if not explored.layers:
        raise ValueError("no captured layer has its queries on a grid: there is nothing to draw")
    view = View(head=head, mode=mode, cmap=cmap, scale=render.scale_named(scale))
    h, w = explored.image_hw
    point = pixel if pixel is not None else (explored.first_point() if explored.model else (h // 2, w // 2))
    if explored.model is not None:
        heading = title(provenance(explored, point, view))
    else:
        heading = (
            f"{len(explored.layers)} captured layers · pixel (y, x) = ({point[0]}, {point[1]}) · "
            f"head {head} · {mode} · spatial-attn {version()}"
        )
    return Shown(page(explored, point, view, heading), height)


def _pil(image: Any) -> Any:
    """A PIL image, or None (a generative model makes its own), from what a notebook holds."""
    from PIL import Image

    if image is None or isinstance(image, Image.Image):
        return image
    return Image.fromarray(_uint8(image))


def _uint8(image: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 from a PIL image or an array (floats are taken as 0..1)."""
    array = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    return np.ascontiguousarray(array)
