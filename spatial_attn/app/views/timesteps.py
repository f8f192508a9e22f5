"""The "timesteps" tab: the pinned pixel's row in one layer across t, as a filmstrip and a GIF.

Diffusion models only: the model is re-run at evenly spaced timesteps on the same clean image with
the same noise seed (:func:`spatial_attn.analysis.timesteps.rows_across`), so the frames differ only in t.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ...analysis import render, timesteps
from ..serving import RUN_EVENTS

#: Frames per row of the filmstrip, and its labels' size: the page shows the strip (5 x 192 px) at
#: about 600 px in a 1280 px window, so 22 px labels read as ~13 px.
COLUMNS, LABEL = 5, 22


class TimestepsView:
    """Layer and count controls, a button, and the filmstrip with its GIF."""

    def __init__(self) -> None:
        with gr.Row():
            self.layer = gr.Dropdown([], label="layer", elem_id="film-layer", scale=3)
            self.count = gr.Slider(
                2, 20, value=10, step=1, label="timesteps", elem_id="film-count", min_width=200
            )
            self.button = gr.Button("show the pinned pixel across t", elem_id="film-run", scale=1)
        self.note = gr.Markdown(elem_id="film-note")
        self.strip = gr.Image(
            show_label=False, elem_id="filmstrip", interactive=False, format="png", buttons=["download"]
        )
        self.gif = gr.File(label="animated GIF", elem_id="film-gif", interactive=False, height=60)

    def wire(self, state: gr.State) -> None:
        """The layer list follows each model run; the frames are made on request (one forward each)."""
        # the layer list changes with a run only (clicks change the session in place, not the state)
        state.change(self.layers, [state, self.layer], self.layer, api_name=False, show_progress="hidden")
        outputs = [self.strip, self.gif, self.note]
        self.button.click(self.show, [state, self.layer, self.count], outputs, api_name=False, **RUN_EVENTS)

    @staticmethod
    def layers(session: Any, chosen: str | None) -> Any:
        """The session's layers, keeping the chosen one when the model still has it."""
        if session is None:
            return gr.skip()
        names = [layer.name for layer in session.exploration.layers if layer.key_grid is not None]
        return gr.Dropdown(names, value=chosen if chosen in names else (names[0] if names else None))

    @staticmethod
    def show(session: Any, layer_name: str | None, count: float) -> tuple:
        """Run the model at ``count`` timesteps and draw the pinned pixel's row at each."""
        if session is None:
            raise gr.Error("the image is still loading; try again in a moment", print_exception=False)
        ex = session.exploration
        if not ex.model.num_timesteps:
            return None, None, f"{ex.model.name} has no timesteps: this view is for diffusion models."
        steps = timesteps.spread(int(count), ex.model.num_timesteps)
        clean = Image.fromarray(ex.image)
        frames = timesteps.rows_across(ex.model, clean, layer_name, session.point, steps, ex.seed)
        side = render.panel_size([frames[0].grid, frames[0].values.shape], ex.image_hw)
        pictures = [
            render.labelled(
                render.panel(
                    render.upscale(f.picture, (side, side)),
                    f.values,
                    scale=render.ColourScale(True, tokens=f.tokens),
                    outline=(f.cell, f.grid),
                ),
                f"t = {f.timestep} · {f.entropy:.2f} bits",
                size=LABEL,
            )
            for f in frames
        ]
        gif = Path(tempfile.mkdtemp(prefix="spatial-attn-")) / f"{ex.model.name}-{layer_name}-across-t.gif"
        gif.write_bytes(render.gif_bytes(pictures))
        y, x = session.point
        note = (
            f"Pixel (y, x) = ({y}, {x}) in `{layer_name}`, noise seed {ex.seed}, over x_t at "
            f"t = {', '.join(map(str, steps))}; colours × uniform (1/16× to 16×), entropy in bits beside t."
        )
        return render.tiled(pictures, COLUMNS), str(gif), note
