"""The "ablation" tab: switch one attention layer off (or make it uniform) and compare the model's
output, and its sample from the same seed judged by ``judge-faces`` (the library's judge), before
and after.

The work is :func:`spatial_attn.analysis.ablation.ablate` on a private copy of the model; this module lays
the two columns side by side.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from ...analysis import ablation, render
from ...models import JUDGE
from ..serving import RUN_EVENTS

STYLE = """
.sa-ablation table { border-collapse: collapse; font-size: 13px; }
.sa-ablation td, .sa-ablation th { border: 1px solid #ccc; padding: 4px 10px; vertical-align: top; }
.sa-ablation img { display: block; image-rendering: pixelated; }
"""
HOW = {"off: the layer adds nothing": "off", "uniform attention: every key weighted 1/N′": "uniform"}


class AblationView:
    """Layer and kind of ablation, a button, and the before / after table."""

    def __init__(self, library: Any) -> None:
        self.library = library
        with gr.Row():
            self.layer = gr.Dropdown([], label="layer", elem_id="ablate-layer", scale=2)
            self.how = gr.Radio(
                list(HOW), value=next(iter(HOW)), label="ablation", elem_id="ablate-how", scale=2
            )
            self.button = gr.Button("ablate and compare", elem_id="ablate-run", scale=1)
        self.html = gr.HTML(elem_id="ablation", css_template=STYLE, js_on_load=None)

    def wire(self, state: gr.State) -> None:
        """The layer list follows each model run; the ablation runs on request (a sample can take s)."""
        # the layer list changes with a run only (clicks change the session in place, not the state)
        state.change(self.layers, [state, self.layer], self.layer, api_name=False, show_progress="hidden")
        self.button.click(self.show, [state, self.layer, self.how], self.html, api_name=False, **RUN_EVENTS)

    @staticmethod
    def layers(session: Any, chosen: str | None) -> Any:
        """The session's layers, keeping the chosen one when the model still has it."""
        if session is None:
            return gr.skip()
        names = [layer.name for layer in session.exploration.layers]
        return gr.Dropdown(names, value=chosen if chosen in names else (names[0] if names else None))

    def show(self, session: Any, layer_name: str | None, how: str) -> str:
        """Run the ablation for the session's model and image; the before / after table."""
        if session is None or layer_name is None:
            raise gr.Error("the image is still loading; try again in a moment", print_exception=False)
        ex = session.exploration
        result = ablation.ablate(
            ex.model,
            layer_name,
            HOW[how],
            session.source,
            timestep=ex.timestep,
            seed=ex.seed,
            judge_model=self.library.judge,
        )
        return _table(result, ex.model.name)


def _picture(pixels: Any) -> str:
    image = render.upscale(pixels, (128, 128))
    return f'<img src="{render.png_data_uri(image)}" width="128" height="128" alt="sample">'


def _verdict(probs: dict[str, float]) -> str:
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
    return "<br>".join(f"{html.escape(label)} {p:.1%}" for label, p in ranked)


def _table(result: ablation.Ablation, model: str) -> str:
    head = (
        f"<p><code>{html.escape(result.layer)}</code> of {html.escape(model)}, "
        f"{'switched off' if result.how == 'off' else 'with uniform attention'}: a private copy of the "
        "model is changed; the app's own model is not.</p>"
    )
    rows = []
    before, after = ablation.summary_text(result.output_before), ablation.summary_text(result.output_after)
    if before:
        rows.append(f"<tr><th>the model's output</th><td>{before}</td><td>{after}</td></tr>")
    if result.sample_before is not None:
        rows.append(
            "<tr><th>sample from the same seed</th>"
            f"<td>{_picture(result.sample_before)}</td><td>{_picture(result.sample_after)}</td></tr>"
        )
    if result.verdict_before:
        rows.append(
            f"<tr><th>judged by {JUDGE}</th><td>{_verdict(result.verdict_before)}</td>"
            f"<td>{_verdict(result.verdict_after)}</td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="3">This layer changes nothing the model reports.</td></tr>')
    return (
        f'<div class="sa-ablation">{head}<table><tr><th></th><th>before</th><th>after</th></tr>'
        + "".join(rows)
        + "</table></div>"
    )
