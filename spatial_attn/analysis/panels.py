"""The heatmap panels' markup and script, without a server: what the app's panels tab, the export's
``index.html`` and a notebook's ``sa.show`` all draw with.

Each layer is a titled figure (canvases of one display size, colorbar, caption) filled by
``panels.js`` from the data of :meth:`~spatial_attn.analysis.explore.Exploration.browser_data`; the
script also repaints every figure for the pixel under the mouse from the run's queries and keys.
``data-pixel`` on every figure says which model-input pixel ``y,x`` it shows (read by the tests and
the hover benchmark). The app wraps this in a Gradio component (``app/views/panels.py``); the
standalone page (:mod:`spatial_attn.analysis.standalone`) in a file of its own.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

SCRIPT = (Path(__file__).with_name("panels.js")).read_text()

STYLE = """
.sa-panels { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.sa-panel { margin: 0; }
.sa-title { font-weight: 600; font-size: 13px; margin-bottom: 3px; overflow-wrap: anywhere; }
.sa-maps { display: flex; flex-wrap: wrap; gap: 8px; }
.sa-map-title { font-size: 12px; }
canvas.sa-map { display: block; border-radius: 3px; image-rendering: pixelated; cursor: crosshair; }
.sa-bar { display: block; height: 10px; margin-top: 4px; }
.sa-ticks { position: relative; height: 14px; font-size: 11px; }
.sa-ticks span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.sa-ticks span:first-child { transform: none; }
.sa-ticks span:last-child { transform: translateX(-100%); }
.sa-bar-label, .sa-value { font-size: 11px; opacity: 0.8; }
.sa-panel figcaption { font-size: 12px; line-height: 1.35; margin-top: 2px; }
.sa-stale canvas.sa-map { opacity: 0.5; }
"""


def panels_html(data: dict[str, Any]) -> str:
    """The figures for ``data`` (browser data of one click), with the payload the script reads."""
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
    return (
        f'<figure class="sa-panel" data-layer="{name}" data-pixel="{pixel}">'
        f'<div class="sa-title">{name}</div><div class="sa-maps">{maps}</div>'
        f'<canvas class="sa-bar" width="{size}" height="10" style="width:{size}px"></canvas>'
        f'<div class="sa-ticks" style="width:{size}px"></div>'
        f'<div class="sa-bar-label"></div><div class="sa-value">hover a map to read its values</div>'
        f'<figcaption style="max-width:{size * len(titles) + 8 * (len(titles) - 1)}px">'
        f"{html.escape(_static_caption(layer, view['head']))}"
        f'<br><span class="sa-stats"></span></figcaption></figure>'
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
        f"{grid(layer['queries']['grid'])} queries → {grid(layer['keys']['grid'])} keys",
        f"{heads} head{'s' if heads > 1 else ''}{chosen}",
    ]
    if layer["verified"] is not True:
        parts.append(f"unverified: {layer['detail']}")
    return " · ".join(parts)
