"""The "how a row is made" tab: the seed question answered on the user's own click.

For the pinned pixel, one layer and one head, it shows each step of :func:`spatial_attn.analysis.mechanics.
row_steps` as a picture: the queries (the flattened map, token i outlined), q_i against every key,
the logits on the key grid, the softmax at a temperature the learner chooses, the row as a heatmap,
and the whole N x N' matrix as a thumbnail with row i outlined. A SAGAN layer adds its gate gamma
and how much the branch adds to the input; a DDPM layer, where it sits in the UNet.
"""

from __future__ import annotations

import html
import json
import weakref
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np

from ...analysis import mechanics, render
from ...engine.grid import cell_at
from ..serving import RUN_EVENTS
from ..state import Follower

STYLE = """
.sa-steps { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.sa-step { margin: 0; max-width: 240px; font-size: 12px; line-height: 1.35; }
.sa-step img.sa-pick { cursor: pointer; }
.sa-which { font-size: 14px; margin: 0 0 8px; }
.sa-step img { display: block; image-rendering: pixelated; border-radius: 3px; margin: 4px 0; }
.sa-step b { font-size: 13px; }
.sa-unet { border-collapse: collapse; font-size: 12px; margin-top: 8px; }
.sa-unet td, .sa-unet th { border: 1px solid #ccc; padding: 2px 8px; text-align: center; }
.sa-unet .sa-here { background: #fde68a; font-weight: 600; }
"""
SIDE = 192  # px of every picture's longer side
NARROW = 128  # px across a matrix of vectors (queries, keys, values)
#: A click on the matrix's row pins that row's pixel: a "select" event of this HTML, answered as the
#: arrow keys' (``Handlers.pinned``), so the panels and every tab follow.
SCRIPT = """
element.addEventListener('click', (event) => {
  const img = event.target.closest && event.target.closest('img.sa-pick');
  if (!img) return;
  const pixels = JSON.parse(img.dataset.pixels), top = Number(img.dataset.top);
  const y = event.offsetY * (img.naturalHeight / img.clientHeight);
  if (y < 0 || y >= top) return;
  const pixel = pixels[Math.min(pixels.length - 1, Math.floor((y * pixels.length) / top))];
  if (pixel) trigger('select', { index: pixel, value: 'matrix row' });
});
"""
#: What each run's steps need that a click does not change (a layer's input and output, its matrix
#: thumbnails), made once and kept as long as the run is.
_KEPT: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()


class MechanicsView:
    """The tab's widgets (built where it is constructed, inside a ``gr.Tab``) and its handler."""

    def __init__(self) -> None:
        with gr.Row():
            self.layer = gr.Dropdown([], label="layer", elem_id="mech-layer", scale=3)
            self.head = gr.Dropdown(["0"], value="0", label="head", elem_id="mech-head", scale=1)
            self.temperature = gr.Slider(
                0.1,
                5.0,
                value=1.0,
                step=0.05,
                label="temperature T (logits / T)",
                elem_id="mech-temperature",
                min_width=260,
                scale=2,
            )
        self.html = gr.HTML(elem_id="mechanics", css_template=STYLE, js_on_load=SCRIPT)

    def wire(self, state: gr.State, tab: gr.Tab, panels_head: gr.Dropdown) -> None:
        """Filled when the tab is opened; then it follows every new run (here), every click and
        redraw (:meth:`follower`) and its own controls. Until opened, clicks cost it nothing."""
        inputs = [state, panels_head, self.layer, self.head, self.temperature]  # the tab's own last

        def show(session: Any, panels: str, layer: str | None, head: str | None, t: float) -> tuple:
            return self.show(session, layer, head, t, panels)

        def follow(session: Any, panels: str, layer: str | None, head: str | None, t: float) -> tuple:
            return self.follow(session, layer, head, t, panels)

        outputs = [self.layer, self.head, self.html]
        quiet = {"api_name": False, "show_progress": "hidden", "trigger_mode": "always_last"}
        tab.select(show, inputs, outputs, **quiet, **RUN_EVENTS)  # a forward, once per run
        state.change(follow, inputs, outputs, **quiet, **RUN_EVENTS)  # a new run: a forward
        for control in (self.layer, self.head, self.temperature):
            control.input(show, inputs, outputs, **quiet, **RUN_EVENTS)

    def follower(self) -> Any:
        """What a click or a redraw of the panels also draws (see :class:`~spatial_attn.app.state.Follower`):
        the steps for the new pinned pixel (same run, so the same layer and head lists)."""

        def draw(session: Any, view: Any, layer_name: str | None, head: str | None, t: float) -> tuple:
            if layer_name is None and session is not None and self._kept_queries(session):
                return ("",)  # never opened: the tab stays as it is, empty
            return self.show(session, layer_name, head, t, view.head)[2:]

        return Follower([self.layer, self.head, self.temperature], [self.html], draw)

    def follow(
        self, session: Any, layer_name: str | None, head: str | None, temperature: float, panels_head: str
    ) -> tuple:
        """A new run: its layers and the steps, once the tab has been opened; nothing before."""
        if layer_name is None:
            return gr.skip(), gr.skip(), gr.skip()
        return self.show(session, layer_name, head, temperature, panels_head)

    @staticmethod
    def _kept_queries(session: Any) -> list[Any]:
        """The layers whose steps can be shown: those that kept their queries."""
        return [layer for layer in session.exploration.layers if layer.q is not None]

    @staticmethod
    def show(
        session: Any, layer_name: str | None, head: str | None, temperature: float, panels_head: str = "mean"
    ) -> tuple:
        """The steps for the session's pinned pixel in the chosen layer and head (``panels_head``: the
        panels' own choice, said beside it)."""
        if session is None:
            return gr.skip(), gr.skip(), gr.skip()
        ex = session.exploration
        layers = MechanicsView._kept_queries(session)
        if not layers:
            return (
                gr.Dropdown([], value=None),
                gr.Dropdown([]),
                "<p>No layer of this model kept its queries.</p>",
            )
        layer = next((la for la in layers if la.name == layer_name), layers[0])
        heads = [str(h) for h in range(layer.heads)]
        chosen = head if head in heads else "0"
        cell = cell_at(session.point, ex.image_hw, layer.query_grid)
        steps = mechanics.row_steps(layer, cell, int(chosen), float(temperature))
        io = _module_io(ex, layer.name)
        features = mechanics.flattened_input(io)
        output = mechanics.output_steps(layer, io, cell, steps.head)
        pixels = _once(ex, ("pixels", layer.name), lambda: mechanics.thumbnail_pixels(layer, ex.image_hw))
        thumb = _thumbnail(ex, layer, steps.head)
        body = _which_head(layer, steps.head, panels_head)
        body += _steps_html(steps, layer, ex.image, features, thumb, output, pixels, io.position_channels)
        body += _extras_html(ex, layer, io, session.point)
        return (
            gr.Dropdown([la.name for la in layers], value=layer.name),
            gr.Dropdown(heads, value=chosen),
            body,
        )


def _figure(title: str, image: Any, text: str, pixels: list | None = None) -> str:
    """One step: title, picture, text. ``pixels`` (one per row of the picture's matrix) make the
    picture a row picker: ``SCRIPT`` pins the pixel of the row clicked."""
    pick = (
        f' class="sa-pick" tabindex="0" data-pixels="{html.escape(json.dumps(pixels))}"'
        f' data-top="{SIDE}" title="click a row to pin its pixel"'
        if pixels is not None
        else ""
    )
    return (
        f'<figure class="sa-step"><b>{title}</b>'
        f'<img src="{render.png_data_uri(image)}" width="{image.width}" height="{image.height}"'
        f' alt="{title}"{pick}>'
        f"{text}</figure>"
    )


def _which_head(layer: Any, head: int, panels_head: str) -> str:
    """The head these steps show, beside what the panels show (often the mean of all heads)."""
    word, _, k = str(panels_head).partition(" ")
    if layer.heads == 1:
        panels = "the panels show the same (one head)"
    elif word == "head" and k.isdigit() and int(k) < layer.heads:
        panels = f"the panels show head {k}"
    elif word == "max":
        panels = f"the panels show the maximum over its {layer.heads} heads"
    else:
        panels = f"the panels show the mean of its {layer.heads} heads"
    return (
        f'<p class="sa-which">These steps follow <b>one head: head {head}</b> of {layer.name} '
        f"({layer.heads} head{'s' if layer.heads > 1 else ''}); {panels}.</p>"
    )


def _once(ex: Any, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, made once per run ``ex`` and ``key``."""
    kept = _KEPT.setdefault(ex, {})
    if key not in kept:
        kept[key] = make()
    return kept[key]


def _module_io(ex: Any, layer_name: str) -> mechanics.ModuleIO:
    """The layer's input and output in this run, read once per run and layer (one extra forward)."""
    return _once(ex, ("io", layer_name), lambda: mechanics.module_io(ex.model, ex.prepared, layer_name))


def _thumbnail(ex: Any, layer: Any, head: int) -> np.ndarray:
    """The layer's N x N' thumbnail for one head, made once per run: every click with the tab open
    draws it, and a large layer's takes all its rows (in blocks)."""
    return _once(ex, ("thumbnail", layer.name, head), lambda: mechanics.matrix_thumbnail(layer, head))


def _steps_html(
    steps: mechanics.RowSteps,
    layer: Any,
    picture: np.ndarray,
    features: np.ndarray | None,
    thumb: np.ndarray,
    output: mechanics.OutputSteps | None,
    pixels: list[tuple[int, int] | None],
    position: int = 0,
) -> str:
    """``position``: sin-cos position channels appended to each row before the queries and keys
    (a SAGAN layer with ``coords``), said under the queries since the map above lacks them."""
    (h, w), (y, x), i = steps.query_grid, steps.cell, steps.token
    n, d = steps.queries.shape
    m = steps.key_vectors.shape[0]
    tall = lambda rows: (min(SIDE * 2, max(SIDE, rows)), NARROW)  # noqa: E731  rows of a matrix, px
    spread = float(np.abs(np.concatenate([steps.queries.ravel(), steps.key_vectors.ravel()])).max())
    pair = {"cmap": "viridis", "low": -spread, "high": spread}
    tokens, keys = f"token i (0..{n - 1})", f"key j (0..{m - 1})"
    figures = []
    if features is not None and features.shape[0] == n:
        c = features.shape[1]
        low, high = float(features.min()), float(features.max())
        figures.append(
            _figure(
                "0 · the feature map, flattened",
                render.framed(
                    render.matrix_image(features, tall(n), cmap="cividis", row=i),
                    x_label=f"channel (0..{c - 1})",
                    y_label=tokens,
                    low=low,
                    high=high,
                    cmap="cividis",
                    unit="feature value",
                ),
                f"What the layer receives: C = {c} channels on the {h}×{w} grid, flattened row by row to "
                f"N = {n} tokens of {c} numbers (rows). Your cell (y, x) = ({y}, {x}) is token "
                f"i = {y}·{w} + {x} = <b>{i}</b> (outlined).",
            )
        )
    figures += [
        _figure(
            "1 · queries",
            render.framed(
                render.matrix_image(steps.queries, tall(n), row=i, **pair),
                x_label=f"query dim (0..{d - 1})",
                y_label=tokens,
                low=-spread,
                high=spread,
                unit="q, scale folded in",
            ),
            (
                f"Each token's {d}-number query, made from its row alone (a 1×1 convolution or a linear "
                "map). "
                if not position
                else f"Each token's {d}-number query, made by a 1×1 convolution from its row <b>and</b> "
                f"{position} more numbers that say where its cell is (sines and cosines of y and x, "
                "not shown above); the keys are made the same way, so q · k can depend on where the "
                "two cells are as well as on what they hold. "
            )
            + f"Your cell (y, x) = ({y}, {x}) is token i = {y}·{w} + {x} = <b>{i}</b> (outlined).",
        ),
        _figure(
            "2 · q_i against every key",
            render.framed(
                render.stacked(
                    [
                        render.matrix_image(steps.query[None], (10, NARROW), **pair),
                        render.matrix_image(steps.key_vectors, tall(m), **pair),
                    ]
                ),
                x_label=f"key dim (0..{d - 1})",
                y_label=f"q_i, then {keys}",
                low=-spread,
                high=spread,
                unit="q and k",
            ),
            f"q_i (the strip on top) and the {m} keys k_j (rows below): each key is compared with q_i "
            "by a dot product, logit_j = q_i · k_j (the layer's scale is already in q).",
        ),
    ]
    if steps.logit_map is not None:
        kh, kw = steps.keys.grid
        side = render.panel_size([(kh, kw)], (kh, kw))
        logits = steps.logit_map
        figures.append(
            _figure(
                "3 · logits on the key grid",
                render.framed(
                    render.matrix_image(logits, (side, side)),
                    x_label=f"key x (0..{kw - 1})",
                    y_label=f"key y (0..{kh - 1})",
                    low=float(logits.min()),
                    high=float(logits.max()),
                    unit="logit q_i · k_j",
                ),
                f"The {m} logits put back on the {kh}×{kw} key grid: key j = y·{kw} + x.",
            )
        )
        base = render.upscale(picture, (side, side))
        scale = render.ColourScale(True, tokens=layer.keys.count)
        heat = render.panel(base, steps.row_map, scale=scale, outline=(steps.cell, steps.query_grid))
        top = steps.probs.max()
        figures.append(
            _figure(
                f"4 · softmax(logits / {steps.temperature:g}) → row {i}",
                _uniform_framed(heat, scale, f"key x (0..{kw - 1})", f"key y (0..{kh - 1})"),
                f"p_j = exp(logit_j / T) / Σ exp(logit_j′ / T). The largest p is {top:.3f} "
                f"({top * m:.1f}× uniform), entropy {steps.entropy:.2f} of {np.log2(m):.2f} bits. "
                "T = 1 is what the model computed; smaller T sharpens, larger flattens. "
                "Reshaped to the key grid, this row is the heatmap.",
            )
        )
    row = mechanics.thumbnail_row(i, n, 64)
    matrix = render.framed(
        render.matrix_image(thumb, (SIDE, SIDE), low=0.0, row=row),
        x_label=keys,
        y_label=tokens,
        low=0.0,
        high=float(thumb.max()),
        unit="p (block mean)",
    )
    figures.append(
        _figure(
            f"5 · the {n} × {m} matrix",
            matrix,
            f"Every row is some token's softmax; row {i} is yours (outlined). <b>Click a row</b> to pin "
            f"its pixel. Computed in blocks of rows and shown as block means "
            f"({thumb.shape[0]}×{thumb.shape[1]}); the full matrix is never held.",
            pixels=pixels,
        )
    )
    if output is not None:
        figures += _output_figures(output, i, m)
    else:  # said, not silently left out
        figures.append(
            '<figure class="sa-step"><b>6 · values V and the output A·V</b>Not shown: this layer makes its '
            "values in a projection that cannot be observed on its own (q, k and v from one fused "
            "matrix), so V is unknown here.</figure>"
        )
    return '<div class="sa-steps">' + "".join(figures) + "</div>"


def _uniform_framed(heat: Any, scale: Any, x_label: str, y_label: str) -> Any:
    """A heatmap on the "× uniform" axis, with its axes named and its colorbar."""
    bar = render.colorbar(heat.width, scale.ticks(), label=f"× uniform (1× = 1/{scale.tokens})")
    return render.stacked([render.labelled(heat, f"{y_label} ↓, {x_label} →"), bar], gap=2)


def _output_figures(output: mechanics.OutputSteps, i: int, m: int) -> list[str]:
    """Steps 6-7: the values and the row's weighted sum of them (and, for a residual layer, how much
    that moves the layer's input at the cell)."""
    dv = output.values.shape[1]
    spread = float(np.abs(output.values).max()) or 1.0
    pair = {"cmap": "viridis", "low": -spread, "high": spread}
    tall = (min(SIDE * 2, max(SIDE, m)), NARROW)
    moved = (
        f" The layer then projects the heads' outputs back to its channels and adds its input (a "
        f"residual): at your cell that moves the feature vector by {output.change:.1%} of its length."
        if output.change is not None
        else ""
    )
    return [
        _figure(
            "6 · values V",
            render.framed(
                render.matrix_image(output.values, tall, **pair),
                x_label=f"value dim (0..{dv - 1})",
                y_label=f"key j (0..{m - 1})",
                low=-spread,
                high=spread,
                unit="v_j",
            ),
            f"Every key token also carries a value v_j of {dv} numbers: what it hands on when attended to.",
        ),
        _figure(
            f"7 · output o_{i} = Σ_j p_j v_j",
            render.framed(
                render.matrix_image(output.attended[None], (16, NARROW), **pair),
                x_label=f"value dim (0..{dv - 1})",
                y_label="o_i",
                low=-spread,
                high=spread,
                unit="row i of A·V (T = 1)",
            ),
            f"Row {i} of A·V: the values averaged with the row's weights p_j, as the model computed it "
            f"(T = 1).{moved}",
        ),
    ]


def _extras_html(ex: Any, layer: Any, io: mechanics.ModuleIO, point: tuple[int, int]) -> str:
    """SAGAN: the gate and the branch's share. DDPM: the UNet's stages, this layer's highlighted."""
    if layer.family == "sagan":
        cell = cell_at(point, ex.image_hw, layer.query_grid)
        share = mechanics.residual_share(ex.model, io, cell)
        return (
            f"<p><b>SAGAN's gate.</b> The block returns γ · (attention output) + x with a learned γ = "
            f"{share.gamma:.3f} (0 at initialisation: the network starts purely convolutional). "
            f"The attention branch changes the feature map by {share.overall:.1%} of its size overall, "
            f"and by {share.at_cell:.1%} at your cell.</p>"
        )
    config = getattr(ex.model, "config", {}) or {}
    if ex.model.kind != "ddpm" or "block_out_channels" not in config:
        return ""
    levels = mechanics.unet_levels(config)
    here = mechanics.level_of(levels, layer.name)
    cells = "".join(
        f'<td class="{"sa-here" if lv is here else ""}">{html.escape(lv.name)}'
        f"<br>{lv.resolution}×{lv.resolution}<br>{lv.channels} ch"
        f"{'<br>attention' if lv.attention else ''}</td>"
        for lv in levels
    )
    return (
        "<p><b>Where this layer sits in the UNet</b> (down the encoder, through the middle, up the decoder; "
        "the highlighted stage holds this layer):</p>"
        f'<table class="sa-unet"><tr>{cells}</tr></table>'
    )
