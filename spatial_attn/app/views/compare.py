"""The "compare" tab: two models side by side (A left, B right) for the same click (by default the
trained model and its untrained twin, so what training taught the attention is what differs). Each
panel has the colorbar of the scale it was drawn with.

Each model runs once on the session's image (same timestep and seed) and is kept beside the
session's own run while that lasts; later clicks only read rows. The panels are drawn on the server
(:meth:`~spatial_attn.analysis.explore.Exploration.click`), with the display settings of the main panels.
"""

from __future__ import annotations

import html
import weakref
from collections.abc import Callable
from typing import Any

import gradio as gr
from PIL import Image

from ...analysis import render
from ...analysis.explore import Exploration
from ...engine.grid import cell_at
from ..serving import RUN_EVENTS
from ..state import Follower

STYLE = """
.sa-compare { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 16px; }
.sa-compare h4 { margin: 4px 0 6px; }
.sa-compare .sa-row { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr));
  gap: 10px; }
.sa-compare figure { margin: 0; font-size: 11px; line-height: 1.3; min-width: 0; }
.sa-compare img { display: block; width: 100%; height: auto; image-rendering: pixelated; border-radius: 3px; }
.sa-compare img.sa-bar { image-rendering: auto; border-radius: 0; margin-top: 2px; }
"""

#: Runs of other models on a session's image, kept as long as the session's own run is.
_RUNS: weakref.WeakKeyDictionary[Exploration, dict[str, Exploration]] = weakref.WeakKeyDictionary()


class CompareView:
    """Two model pickers, a button, and both models' panels for the pinned pixel."""

    def __init__(self, library: Any, untrained: str) -> None:
        self.library, self.untrained = library, untrained
        choices = library.choices()
        with gr.Row():
            # no value until the first comparison: A is then the session's model, B its twin
            self.first = gr.Dropdown(choices, value=None, label="model A", elem_id="compare-a")
            self.second = gr.Dropdown(choices, value=None, label="model B", elem_id="compare-b")
            self.button = gr.Button("compare at the pinned pixel", elem_id="compare-run", scale=0)
        self.html = gr.HTML(elem_id="compare", css_template=STYLE, js_on_load=None)

    def wire(self, state: gr.State, view_inputs: list, to_view: Callable[..., Any]) -> None:
        """The button fills the tab; afterwards it follows every run (here), every click and redraw of
        the panels (:meth:`follower`)."""
        inputs = [state, self.first, self.second, *view_inputs]
        outputs = [self.first, self.second, self.html]

        def show(session: Any, first: str | None, second: str | None, *view: Any) -> tuple:
            return self.show(session, first, second, to_view(*view))

        def follow_run(session: Any, first: str | None, second: str | None, *view: Any) -> tuple:
            return self.follow(session, to_view(*view), first, second)

        self.button.click(show, inputs, outputs, api_name=False, **RUN_EVENTS)  # runs the models
        # a new run: both models run on the new image, so in the lane of model runs
        state.change(follow_run, inputs, outputs, api_name=False, show_progress="hidden", **RUN_EVENTS)

    def follower(self) -> Any:
        """What a click or a redraw of the panels also draws (see :class:`~spatial_attn.app.state.Follower`):
        both models' panels for the new pinned pixel (the models chosen stay as they are)."""

        def draw(session: Any, view: Any, first: str | None, second: str | None) -> tuple:
            if first is None:  # never compared: the tab stays as it is, empty
                return ("",)
            return self.show(session, first, second, view)[2:]

        return Follower([self.first, self.second], [self.html], draw)

    def follow(self, session: Any, view: Any, first: str | None, second: str | None) -> tuple:
        """A new run: both models' panels on it, once a comparison was asked for; nothing before."""
        if first is None or session is None:
            return gr.skip(), gr.skip(), gr.skip()
        return self.show(session, first, second, view)

    def twin_of(self, name: str) -> str:
        """The untrained twin of a trained model, and the other way round (itself if it has none)."""
        other = name[: -len(self.untrained)] if name.endswith(self.untrained) else name + self.untrained
        return other if other in self.library.choices() else name

    def show(self, session: Any, first: str | None, second: str | None, view: Any) -> tuple:
        """Both models' panels for the session's pinned pixel."""
        if session is None:
            raise gr.Error("the image is still loading; try again in a moment", print_exception=False)
        choices = self.library.choices()
        own = next(name for name in choices if self.library[name] is session.exploration.model)
        first = first if first in choices else own
        second = second if second in choices and second != first else self.twin_of(first)
        rows = [self._row(session, name, view) for name in (first, second)]
        return (
            gr.Dropdown(choices, value=first),
            gr.Dropdown(choices, value=second),
            '<div class="sa-compare">' + "".join(rows) + "</div>",
        )

    def _run(self, session: Any, name: str) -> Exploration:
        """The session's own run, or ``name`` run once on the same image, timestep and seed."""
        ex = session.exploration
        if ex.model is self.library[name]:  # a twin shares its trained model's name: compare objects
            return ex
        runs = _RUNS.setdefault(ex, {})
        if name not in runs:
            model = self.library[name]
            source = session.source
            if source is None and not model.generates:  # a generated face: show this model the picture
                source = Image.fromarray(ex.image)
            timestep = (
                (ex.timestep if ex.timestep is not None else model.num_timesteps // 2)
                if model.num_timesteps
                else None
            )
            runs[name] = Exploration(model, source, timestep=timestep, seed=ex.seed)
        return runs[name]

    def _row(self, session: Any, name: str, view: Any) -> str:
        """One model's column: its name, then each layer's panel with its colorbar."""
        ex = self._run(session, name)
        point = cell_at(session.point, session.exploration.image_hw, ex.image_hw)
        clicks = ex.click(point, ex.image_hw, view)
        shared = max((float(c.values.max()) for c in clicks), default=1.0)  # the "shared" scale's top
        figures = "".join(_figure(c, view, shared) for c in clicks)
        label = html.escape(name)
        return f'<div><h4>{label}</h4><div class="sa-row" data-model="{label}">{figures}</div></div>'


def _figure(c: Any, view: Any, shared: float) -> str:
    """One layer's server-drawn panel, its colorbar (the scale it was drawn with) and its caption."""
    name = html.escape(c.layer.name)
    scale = render.colour_scale(c.values, view.scale, c.layer.keys.count, shared)
    unit = f"× uniform (1× = 1/{scale.tokens})" if scale.uniform else "probability"
    bar = render.colorbar(min(c.panel.width, 192), scale.ticks(), cmap=view.cmap, label=unit)
    return (
        f'<figure data-layer="{name}">'
        f'<img src="{render.png_data_uri(c.panel)}" alt="{name}">'
        f'<img class="sa-bar" src="{render.png_data_uri(bar)}" alt="colour scale: {html.escape(unit)}"'
        f' style="max-width:{bar.width}px">'
        f"{html.escape(c.caption())}</figure>"
    )
