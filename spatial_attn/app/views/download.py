"""The download button under the panels: the click on screen as a zip (figure PNG + SVG, rows .npy).

The zip is :func:`spatial_attn.analysis.export.export_zip` of the session's pinned pixel with the panels'
own display settings, the same as ``spatial-attn export`` with those options.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from ..serving import RUN_EVENTS


class DownloadView:
    """A button and the file it produces (Gradio serves it for download)."""

    def __init__(self) -> None:
        with gr.Row():
            self.button = gr.Button(
                "export: figure (PNG, SVG) + rows (.npy) as a zip", elem_id="export", size="sm"
            )
            self.file = gr.File(label="export", elem_id="export-file", interactive=False, height=60)

    def wire(self, state: gr.State, view_inputs: list, to_view: Callable[..., Any]) -> None:
        """Export on click, with the display controls read through ``to_view`` (``app.view_of``)."""
        handler = functools.partial(self.export, to_view)
        self.button.click(handler, [state, *view_inputs], self.file, api_name=False, **RUN_EVENTS)

    @staticmethod
    def export(to_view: Callable[..., Any], session: Any, *view: Any) -> str:
        """Write the zip to a temporary folder and return its path (Gradio copies it to its cache)."""
        from ...analysis.export import export_zip  # matplotlib: only when asked

        if session is None:
            raise gr.Error("the image is still loading; export again in a moment", print_exception=False)
        ex = session.exploration
        y, x = session.point
        name = ex.model.name.replace(" ", "-").replace("(", "").replace(")", "")
        path = Path(tempfile.mkdtemp(prefix="spatial-attn-")) / f"{name}-y{y}-x{x}.zip"
        path.write_bytes(export_zip(ex, session.point, to_view(*view)))
        return str(path)
