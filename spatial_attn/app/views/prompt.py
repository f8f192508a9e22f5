"""The prompt view, for text-conditioned models: a prompt box, the clicked pixel's attention over the
prompt's tokens as one bar chart per cross-attention layer, and a chosen token's map over the image.

Shown only when the model takes a prompt (a diffusers pipeline with its text encoder). The numbers
come from :mod:`spatial_attn.analysis.text`; a click or a token choice only reads the captured layers, and a
new prompt re-runs the model once, like a new image. Token maps are per layer at the chosen timestep;
"across timesteps" re-runs the model at evenly spaced steps and shows each step's maps apart (DAAM
sums them).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gradio as gr
import numpy as np

from ...analysis import render
from ...analysis.explore import head_index
from ...analysis.text import PromptTokens, text_layers, token_across, token_bars, token_map
from ...engine.grid import cell_at
from ..serving import RUN_EVENTS
from ..state import Follower, checked_run

BAR_HEIGHT = 90  # px of a bar at probability 1
MAP_SIDE = 192  # px of a token map


class PromptView:
    """The widgets; :meth:`wire` connects them to the app's session state."""

    def __init__(self) -> None:
        with gr.Group(visible=False) as self.group:
            self.prompt = gr.Textbox(label="prompt (Enter runs the model on it)", elem_id="prompt")
            self.bars = gr.HTML(elem_id="token-bars")
            self.token = gr.Radio([], label="token: where it lands in the image", elem_id="token")
            self.maps = gr.HTML(elem_id="token-maps")
            with gr.Row():
                self.count = gr.Slider(2, 10, value=4, step=1, label="timesteps", elem_id="token-film-count")
                self.across = gr.Button(
                    "this token across timesteps (re-runs the model)", elem_id="token-film-run"
                )
            self.film = gr.HTML(elem_id="token-film")

    def wire(
        self,
        state: gr.State,
        head: gr.Dropdown,
        cmap: gr.Dropdown,
        on: Any,
        run: Callable[..., Any],
        run_inputs: list[Any],
        reran: list[Any],
        guard: Callable[[Callable[..., tuple]], Callable[..., tuple]],
    ) -> None:
        """Enter in the box re-runs the model on the new prompt (``run`` and ``on._after_run``: the
        app's); every new session redraws the bars and the token maps, every click the bars
        (:meth:`follower`)."""

        def prompted(session: Any, prompt: str, name: str, t: float, s: float, *view: Any) -> tuple:
            if session is None:
                raise ValueError("the image is still loading; press Enter again in a moment")

            name, t, s = checked_run(on.library, name, t, s)
            fresh = run(on.library, name, t, s, session.source, session.note, prompt)
            return on._after_run(replace(fresh, point=session.point), *view, previous=session)

        shown = [self.group, self.prompt, self.bars, self.token, self.maps]
        runs = {"api_name": False, **RUN_EVENTS}  # a new prompt, the filmstrip: forwards, in the app's lane
        self.prompt.submit(guard(prompted), [state, self.prompt, *run_inputs], reran, **runs)
        quiet = {"api_name": False, "show_progress": "hidden"}
        state.change(guard(refresh), [state, self.token, head, cmap], shown, **quiet)
        for control in (self.token, head, cmap):
            control.change(guard(draw_maps), [state, self.token, head, cmap], [self.maps], **quiet)
        self.across.click(guard(across), [state, self.token, self.count, cmap], [self.film], **runs)

    def follower(self) -> Any:
        """The bars, drawn by a click's or a redraw's own event (see
        :class:`~spatial_attn.app.state.Follower`)."""

        return Follower([], [self.bars], bars_for)


def refresh(session: Any, token: str | None, head: str, cmap: str) -> tuple:
    """After a run or a click: the box (hidden for models without a prompt), bars, tokens, maps."""
    ex = session.exploration if session is not None else None
    if ex is None or not ex.prepared.tokens:
        return gr.Group(visible=False), gr.skip(), "", gr.Radio(choices=[], value=None), ""
    prompt = PromptTokens.of(ex.prepared.tokens)
    labels = prompt.labels()
    chosen = token if token in labels else labels[min(1, len(labels) - 1)]  # the first word
    return (
        gr.Group(visible=True),
        ex.model.default_prompt,
        bars_html(ex, session.point, prompt, head),
        gr.Radio(choices=labels, value=chosen),
        draw_maps(session, chosen, head, cmap),
    )


def bars_for(session: Any, view: Any) -> tuple:
    """The bars for the session's pinned pixel, drawn by the click's own event (a click changes the
    session in place: no state.change); nothing for a model without a prompt."""
    ex = session.exploration if session is not None else None
    if ex is None or not ex.prepared.tokens:
        return ("",)  # what a model without a prompt has (refresh): gr.skip() costs Gradio far more
    return (bars_html(ex, session.point, PromptTokens.of(ex.prepared.tokens), view.head),)


def bars_html(ex: Any, point: tuple[int, int], prompt: PromptTokens, head: str) -> str:
    """One bar chart per cross-attention layer: the clicked pixel's row over the prompt's tokens."""
    labels = prompt.labels()
    figures = []
    for layer in text_layers(ex.layers, len(prompt.names)):
        cell = cell_at(point, ex.image_hw, layer.query_grid)
        values = token_bars(layer, cell, prompt, _head(head, layer.heads))
        bars = "".join(
            f'<div style="display:flex;flex-direction:column;align-items:center;width:40px" '
            f'title="{html.escape(label)}: {v:.3f}"><div style="font-size:10px">{v:.2f}</div>'
            f'<div class="sa-token-bar" data-value="{v:.6f}" style="width:24px;height:{v * BAR_HEIGHT:.1f}px;'
            f'background:#4c72b0"></div><div style="font-size:11px;max-width:40px;overflow:hidden;'
            f'text-overflow:ellipsis;white-space:nowrap">{html.escape(label)}</div></div>'
            for label, v in zip(labels, values, strict=True)
        )
        name = html.escape(layer.name)
        figures.append(
            f'<figure class="sa-bars" data-layer="{name}" style="margin:0">'
            f'<div style="display:flex;align-items:flex-end;gap:2px;height:{BAR_HEIGHT + 40}px">{bars}</div>'
            f'<figcaption style="font-size:12px">{name} · cell {cell} · t = {ex.timestep}'
            f" · {values.sum():.0%} on the prompt</figcaption>"
            "</figure>"
        )
    y, x = point
    return f'<div data-pixel="{y},{x}" style="display:flex;flex-wrap:wrap;gap:18px">{"".join(figures)}</div>'


def draw_maps(session: Any, token: str | None, head: str, cmap: str) -> str:
    """Where ``token`` lands: its column of every cross-attention layer, over the image."""
    ex = session.exploration if session is not None else None
    if ex is None or not ex.prepared.tokens or token is None:
        return ""
    prompt = PromptTokens.of(ex.prepared.tokens)
    labels = prompt.labels()
    if token not in labels:
        raise ValueError(f"token {token!r} is not in the prompt; choose one of {labels}")
    chosen = labels.index(token)
    base = render.upscale(ex.image, (MAP_SIDE, MAP_SIDE))
    figures = [
        _map_figure(
            layer, token_map(layer, prompt, chosen, _head(head, layer.heads)), token, ex.timestep, base, cmap
        )
        for layer in text_layers(ex.layers, len(prompt.names))
    ]
    return f'<div style="display:flex;flex-wrap:wrap;gap:14px">{"".join(figures)}</div>'


def across(session: Any, token: str | None, count: float, cmap: str) -> str:
    """``token``'s maps at evenly spaced timesteps: one row per timestep, one map per layer (head mean),
    the model re-run at each on the same clean image and noise seed."""
    from ...analysis.timesteps import spread

    ex = session.exploration if session is not None else None
    if ex is None or not ex.prepared.tokens or token is None:
        raise ValueError("choose a token of the prompt first")
    frames = token_across(
        ex.model, session.source, token, spread(int(count), ex.model.num_timesteps), ex.seed
    )
    base = render.upscale(ex.image, (MAP_SIDE, MAP_SIDE))
    rows = [
        f'<div class="sa-token-film-row" data-timestep="{t}" style="display:flex;flex-wrap:wrap;gap:14px">'
        + "".join(_map_figure(layer, values, token, t, base, cmap) for layer, values in maps)
        + "</div>"
        for t, maps in frames
    ]
    return f'<div style="display:flex;flex-direction:column;gap:10px">{"".join(rows)}</div>'


def _map_figure(layer: Any, values: np.ndarray, token: str, t: int | None, base: Any, cmap: str) -> str:
    """One token map over the image, captioned with its layer, token and timestep."""
    scale = render.colour_scale(values, "per map", layer.keys.count)
    picture = render.panel(base, values, scale=scale, cmap=cmap)
    name = html.escape(layer.name)
    return (
        f'<figure class="sa-token-map" data-layer="{name}" style="margin:0">'
        f'<img alt="where {html.escape(token)} lands in {name}" src="{render.png_data_uri(picture)}">'
        f'<figcaption style="font-size:12px">{name} · {html.escape(token)} · t = {t} · '
        f"max {float(np.max(values)):.3f}</figcaption></figure>"
    )


def _head(choice: str, heads: int) -> int | str | None:
    """The app's head choice for one layer (a head the layer lacks falls back to the mean)."""
    k = head_index(choice)
    return k if not isinstance(k, int) or k < heads else None
