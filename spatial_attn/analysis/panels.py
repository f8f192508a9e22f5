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
