"""The web app: click a pixel of the input and see, for every attention layer, where it looks.

Widgets only: the model runs and the maps are computed in :mod:`spatial_attn.analysis.explore`.
Each handler is a plain function of its inputs (and therefore also an HTTP endpoint); per-user state
is one small :class:`~spatial_attn.app.state.Session` in ``gr.State``; the bundled models are loaded
once at start-up and only read.
The heatmaps are drawn by the browser (``views/panels.js``) from the rows the server sends,
and follow the mouse from the queries and keys sent once per model run.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
# Gradio's queue keeps a record of the last 10,000 events and, after every event, summarises all of
# them with pandas: an event's cost grew with the events served (a click took 80 ms p50 among ten
# sessions on a fresh server, 131 ms after 1,000 /attend calls). Fewer records, summarised every
# 100 events.
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

import gradio as gr
from PIL import Image

from ..analysis import render
from ..analysis.explore import Exploration, View, cell_of, explain, head_index
from ..engine.grid import cell_at
from ..models.bundle import FITS
from ..resources import locate, searched
from . import public, serving
from .images import MAX_UPLOAD_MB, ImageError, load_image
from .serving import RUN_EVENTS, RUNS, Explorations
from .state import UNTRAINED, Follower, Library, Session, checked_run
from .views import panels
from .views.ablation import AblationView
from .views.compare import CompareView
from .views.download import DownloadView
from .views.lesson import LessonView
from .views.mechanics import MechanicsView
from .views.modelwide import ModelWideView
from .views.prompt import PromptView
from .views.timesteps import TimestepsView

ASSETS = locate("assets")  # the checkout's, an installed wheel's, or $SPATIAL_ATTN_ASSETS
DISPLAY = 384  # the clickable image, px: a 32x32 input at 12x, crisp
DEFAULT_TIMESTEP = 250

# The image at its own size or smaller (Gradio's click position allows a picture scaled down, not
# up), focusable for the arrow keys with its focus shown; on a laptop's height, 320 px, so that the
# model's controls are in view too. No empty export box before there is a file. Below 720 px (a
# phone) the left column dissolves so that the panels come right under the image, before the
# model's controls.
CSS = f"""
#input-image img {{ image-rendering: pixelated; cursor: crosshair; width: min({DISPLAY}px, 100%);
  height: auto; aspect-ratio: 1; }}
#input-image button:focus-visible, #input-image button:focus {{ outline: 3px solid #f59e0b;
  outline-offset: 2px; }}
#model-input img {{ image-rendering: pixelated; }}
#sa-pin {{ font-size: 13px; min-height: 1.3em; margin: 2px 4px; }}
#intro {{ font-size: 14px; }}
#intro .sa-touch {{ display: none; }}
@media (hover: none) {{ #intro .sa-mouse {{ display: none; }} #intro .sa-touch {{ display: inline; }} }}
#export-file:not(:has(a)) {{ display: none; }}
#explanation table {{ display: block; overflow-x: auto; }}
#explanation td, #explanation th {{ min-width: 4.5em; }}
#examples .caption-label {{ white-space: normal; overflow-wrap: anywhere; text-overflow: clip;
  max-width: 100%; }}
#input-image {{ height: auto !important; }}
@media (max-height: 900px) and (min-width: 721px) {{ #input-image img {{ width: 320px; }} }}
@media (max-width: 720px) {{
  #sa-main {{ flex-direction: column; }}
  #sa-left {{ display: contents; }}
  #sa-left > * {{ order: 2; }}
  #sa-left > #input-image, #sa-left > #pin-status {{ order: 0; }}
  #sa-right {{ display: contents; }}
  #sa-right > #views {{ order: 1; }}
  #sa-right > #lesson {{ order: 3; }}
}}
"""


def examples() -> list[Path]:
    """The example images shipped in ``assets/faces``: valid faces first, then the broken ones."""
    return sorted((ASSETS / "faces").glob("*.png"), key=lambda p: (not p.name.startswith("valid"), p.name))


def default_image() -> tuple[Image.Image, str]:
    """The first example (a valid face): what the app shows before anything is uploaded."""
    first = _first_example()
    return Image.open(first).convert("RGB"), f"example {first.name}"


@functools.cache
def _first_example() -> Path:
    found = examples()
    if not found:
        raise FileNotFoundError(f"no example faces in {ASSETS / 'faces'} ({searched('assets')})")
    return found[0]


def opening_input(
    bundled: Any, source: Image.Image | None, note: str, seed: int
) -> tuple[Image.Image | None, str]:
    """What a model is shown when the app opens on it or switches to it. A SAGAN given the default
    example face generates one from the seed instead: its generator's attention is the one worth
    seeing (the discriminator's is near uniform). An image the user uploaded or picked stays."""
    if bundled.kind == "sagan" and note == f"example {_first_example().name}":
        return None, f"generated from seed {int(seed)}"
    return source, note


def run(
    library: Library,
    model: str,
    timestep: float,
    seed: float,
    source: Image.Image | None,
    note: str,
    prompt: str | None = None,
    fit: str = "crop",
) -> Session:
    """Run ``model`` once on ``source`` (None: generate from ``seed``) under capture; a text-conditioned
    model on ``prompt`` (None: its default); an image that is not square made square by ``fit``."""
    bundled = library[model].with_fit(fit)
    if prompt is not None and bundled.takes_prompt:
        bundled = bundled.with_prompt(prompt)  # a copy holding this user's prompt, same modules
    t = int(timestep) if bundled.num_timesteps else None
    if source is not None and max(source.size) > bundled.max_source:
        # bounds the session (the model sees its own size anyway); said, so that the model's own
        # note ("resized 256x256 -> 32x32") does not name a size the user never made
        source = source.copy()
        source.thumbnail((bundled.max_source,) * 2)
        note = " · ".join(filter(None, [note, f"kept at {source.width}×{source.height} for this session"]))
    exploration = Exploration(bundled, source, timestep=t, seed=int(seed))
    return Session(exploration, source, note, point=exploration.first_point(), fit=fit)


def draw(session: Session, view: View) -> tuple[str, str]:
    """The heatmap panels and the explanation, for the session's pinned pixel.

    The clickable image is not redrawn: the page outlines the pinned pixel on it (``panels.js``), so a
    click's answer carries no picture (encoding and storing one was most of a click's server time).
    """
    ex = session.exploration
    # the cells only: the rows are computed once, in browser_data, and the browser draws the panels
    cells = [(layer, *cell_of(layer, session.point, ex.image_hw, view.mode)) for layer in ex.layers]
    heatmaps = panels.html_of(ex.browser_data(session.point, view), ex)
    return heatmaps, explain(cells, session.point, view.mode)


def input_note(session: Session) -> str:
    """What the model was shown, and what it said."""
    ex = session.exploration
    parts = [session.note, ex.prepared.note]
    summary = ex.summary or {}
    if "probs" in summary:
        best = max(summary["probs"], key=summary["probs"].get)
        parts.append(f"classified **{best}** ({summary['probs'][best]:.0%})")
    if "score" in summary:
        parts.append(f"discriminator score {summary['score']:.2f}")
    if "top" in summary:  # your own classifier
        parts.append("top predictions: " + ", ".join(f"**{label}** {p:.0%}" for label, p in summary["top"]))
    parts += [f"⚠ {p}" for p in ex.problems]
    return " · ".join(p for p in parts if p)


def view_of(
    head: str, mode: str, cmap: str, scale: str, upsampling: str, opacity: float, layout: str, over: str
) -> View:
    """The display controls as a :class:`View`. Checked here, not by Gradio: clicks and redraws skip
    Gradio's per-component processing (see ``build_demo``), so a forged request meets these checks."""
    if not isinstance(head, str):
        raise ValueError(f"head must be 'mean', 'max' or 'head k'; got {head!r}")
    head_index(head)  # its form; the page reduces the heads itself
    return View(
        head=head,
        mode="column" if serving.one_of(mode, "show", panels.MODES) == panels.MODES[1] else "row",
        cmap=serving.one_of(cmap, "colormap", render.COLORMAPS),
        scale=serving.one_of(scale, "colour scale", render.SCALES),
        smooth=serving.one_of(upsampling, "upsampling", panels.UPSAMPLING) == "smooth",
        opacity=serving.number(opacity, "opacity", 0, 1),
        heads_grid=serving.one_of(layout, "layout", panels.LAYOUTS) != "per layer",
        over="input" if serving.one_of(over, "draw over", panels.OVER) == "model input" else "image",
    )


def attend(
    library: Library,
    image: str | None,
    model: str,
    timestep: float,
    x: float,
    y: float,
    head: str = "mean",
    seed: float = 0,
    prompt: str = "",
    images: bool = False,
    cache: Explorations | None = None,
    mode: str = "row",
) -> tuple[list[tuple[Image.Image, str]], dict]:
    """The HTTP API: every layer's attention row for pixel ``(x, y)`` of ``image``.

    ``image`` is a file path (None: what the app opens on, the default example face, or for a SAGAN
    its generator's sample from ``seed``, whose attention is then shown); ``x``/``y`` are pixels of
    that image, whatever its size: mapped through the model's own resize and crop. ``prompt`` is for
    text-conditioned models ("": the model's default); ``mode`` "column" gives who looks at the
    pixel instead of where it looks. Returns the panels (only if ``images``: each
    one is a file written for the caller) and, per layer, its grids, the head shown, the query cell
    and the row (over the prompt's ``tokens`` in cross-attention layers). Every parameter is checked
    first; the capture is kept in ``cache`` by (model, image bytes, timestep, seed, prompt if the model
    reads one), so asking again about the same image costs a click, not a forward.
    """
    name, t, s = checked_run(library, model, timestep, seed)
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {prompt!r}")
    k = head_index(head)  # the form of it ("mean", "max", "head k"); its range once the layers are known
    mode = serving.one_of(mode, "mode", ("row", "column"))
    prompt = prompt if library[name].takes_prompt else ""  # ignored by the model: neither run nor kept
    key = (name, serving.file_digest(image) if image else None, t, s, prompt)

    def capture() -> tuple[Session, list[str], tuple[int, int]]:
        if image:
            source, notes = load_image(image)
        else:  # what the app opens on: the example face, or a SAGAN's own sample from the seed
            source, note = opening_input(library[name], *default_image(), s)
            notes = [note]
        session = run(library, name, t, s, source, "", prompt or None)
        hw = (source.height, source.width) if source is not None else session.exploration.image_hw
        return session, notes, hw

    session, notes, hw = cache.get(key, capture) if cache is not None else capture()
    ex = session.exploration
    point = (
        serving.number(y, "y", 0, hw[0] - 1e-9 * hw[0]),
        serving.number(x, "x", 0, hw[1] - 1e-9 * hw[1]),
    )
    heads = ex.max_heads()
    if isinstance(k, int) and k >= heads:
        raise ValueError(f"{head}: the layers of {name} have at most {heads} heads (0 to {heads - 1})")
    pixel = ex.model.input_pixel(point, hw)
    clicks = ex.click(pixel, ex.image_hw, View(head=head, mode=mode), draw=images)
    return [(c.panel, c.caption()) for c in clicks] if images else [], {
        "model": name,
        "timestep": ex.timestep,
        "seed": s,
        "image_size": list(hw),
        "point": list(point),
        "model_pixel": list(pixel),
        "notes": notes,
        "input_note": ex.prepared.note,  # what was done to the image: resized, cropped or padded, noised
        "tokens": list(ex.prepared.tokens),
        "layers": [c.to_json() for c in clicks],
    }


def pixel_of(index: Any, image_hw: tuple[int, int]) -> tuple[int, int]:
    """A model-input pixel ``[y, x]`` sent by the page, checked: whole numbers inside the image."""
    if not isinstance(index, list | tuple) or len(index) != 2:
        raise ValueError(f"a pixel is [y, x]; got {index!r}")
    return serving.whole(index[0], "y", 0, image_hw[0] - 1), serving.whole(index[1], "x", 0, image_hw[1] - 1)


def guarded(fn: Callable[..., tuple]) -> Callable[..., tuple]:
    """User mistakes become a short message in the app (``gr.Error``); the app keeps serving."""

    @functools.wraps(fn)  # keeps the signature: Gradio reads it to pass gr.SelectData
    def wrapper(*args: Any, **kwargs: Any) -> tuple:
        try:
            return fn(*args, **kwargs)
        except (ImageError, ValueError) as error:
            raise gr.Error(str(error), print_exception=False) from None

    return wrapper


class Handlers:
    """The app's event handlers: plain functions of their inputs, testable without a browser.

    ``*view`` is always the display controls in the order of :func:`view_of`. Handlers that re-run the
    model return the outputs listed in ``RERAN``; those that only redraw return ``DRAWN``.
    """

    DRAWN = ("heatmaps", "explanation")
    RERAN = ("state", "image", *DRAWN, "note", "model_input", "head", "timestep", "sample")
    VIEW = len(inspect.signature(view_of).parameters)  # the display controls: view_of's arguments

    def __init__(self, library: Library) -> None:
        self.library = library
        self.followers: list[Follower] = []  # views drawn in the same event as the panels (build_demo)
        self.example_paths = examples()
        # /attend's captures: a repeated image costs a click, not a forward (bounded: see serving)
        self.explorations = Explorations(lambda entry: entry[0].exploration.nbytes())

    def _after_run(self, session: Session, *view: Any, previous: Session | None = None) -> tuple:
        """The outputs of a run; ``previous`` (the session it replaces) paints nothing from now on."""
        if previous is not None:
            previous.tickets.retire()
        ex = session.exploration
        heads = ["mean", "max"] + [f"head {k}" for k in range(ex.max_heads())]
        chosen = view[0] if view[0] in heads else "mean"
        panels, text = draw(session, view_of(chosen, *view[1:]))
        steps = ex.model.num_timesteps
        return (
            session,
            render.upscale(ex.image, (DISPLAY, DISPLAY)),  # the page outlines the pinned pixel on it
            panels,
            text,
            input_note(session),
            render.upscale(ex.input, (128, 128)),
            gr.Dropdown(choices=heads, value=chosen),
            gr.Slider(maximum=(steps or 1000) - 1, visible=bool(steps)),
            gr.Button(visible=ex.model.generates),
        )

    @guarded
    def start(self, name: str, t: float, s: float, *view: Any) -> tuple:
        """The first page load: the default example face."""
        name, t, s = checked_run(self.library, name, t, s)
        source, note = opening_input(self.library[name], *default_image(), s)
        return self._after_run(run(self.library, name, t, s, source, note), *view)

    @guarded
    def rerun(self, session: Session | None, name: str, t: float, s: float, *view: Any) -> tuple:
        """Model, timestep or seed changed: same image, new capture, same click."""
        if session is None:
            return self.start(name, t, s, *view)
        name, t, s = checked_run(self.library, name, t, s)
        source, note = session.source, session.note
        if source is None and not self.library[name].generates:
            source, note = default_image()  # a generated face is gone; this model needs an image
        source, note = opening_input(self.library[name], source, note, s)
        prompt = getattr(session.exploration.model, "default_prompt", None)  # the user's, kept
        fresh = run(self.library, name, t, s, source, note, prompt, session.fit)
        h, w = fresh.exploration.image_hw
        y, x = session.point  # the same click, kept inside the new model's input
        kept = replace(fresh, point=(min(y, h - 1), min(x, w - 1)))
        return self._after_run(kept, *view, previous=session)

    @guarded
    def uploaded(
        self, session: Session | None, path: str | None, name: str, t: float, s: float, *view: Any
    ) -> tuple:
        """A user's file: validated, converted, resized to the model's input."""
        if path is None:
            return (gr.skip(),) * len(self.RERAN)
        name, t, s = checked_run(self.library, name, t, s)
        source, notes = load_image(path)
        size = self.library[name].image_size
        text = f"upload {Path(path).name} ({source.width}×{source.height}; model input {size}×{size})"
        fit = session.fit if session is not None else "crop"
        fresh = run(self.library, name, t, s, source, " · ".join([text, *notes]), fit=fit)
        return self._after_run(fresh, *view, previous=session)

    @guarded
    def refit(self, session: Session | None, fit: str, *args: Any) -> tuple:
        """The upload fit changed: the same image made square the new way (the next uploads too)."""
        if session is None:
            return (gr.skip(),) * len(self.RERAN)
        return self.rerun(replace(session, fit=serving.one_of(fit, "fit", FITS)), *args)

    @guarded
    def picked(
        self, evt: gr.SelectData, session: Session | None, name: str, t: float, s: float, *view: Any
    ) -> tuple:
        """An example from the gallery."""
        name, t, s = checked_run(self.library, name, t, s)
        path = self.example_paths[serving.whole(evt.index, "gallery index", 0, len(self.example_paths) - 1)]
        source = Image.open(path).convert("RGB")
        fresh = run(self.library, name, t, s, source, f"example {path.name}")
        return self._after_run(fresh, *view, previous=session)

    @guarded
    def generated(self, session: Session | None, name: str, t: float, s: float, *view: Any) -> tuple:
        """A new sample: the DDPM's fast sampler (then noised to t), or the SAGAN generator itself."""
        name, t, s = checked_run(self.library, name, t, s)
        bundled = self.library[name]
        if bundled.kind == "ddpm":
            source, note = Image.fromarray(bundled.sample(int(s))[0]), f"DDPM sample, seed {int(s)}"
        else:
            source, note = None, f"generated from seed {int(s)}"
        return self._after_run(run(self.library, name, t, s, source, note), *view, previous=session)

    @guarded
    def clicked(self, evt: gr.SelectData, session: Session | None, *args: Any) -> tuple:
        """A click on the image: rows only, no model run. The click is kept in the session itself
        (the state is not an output, so a click that finishes late cannot bring back a session that
        a model switch replaced), and a result that a later event of the session overtook is
        dropped rather than painted over the newer one (see :class:`~spatial_attn.app.serving.Tickets`).

        ``args`` are the display controls, then each follower's inputs."""
        if session is None:
            raise ValueError("the image is still loading; click again in a moment")
        ticket = session.tickets.take()
        x, y = serving.pixel(evt.index, "click index", DISPLAY)
        session.point = cell_at((y, x), (DISPLAY, DISPLAY), session.exploration.image_hw)
        return self._shown(session, ticket, args)

    @guarded
    def pinned(self, evt: gr.SelectData, session: Session | None, *args: Any) -> tuple:
        """A pixel pinned by the page itself, in model-input pixels ``[y, x]``: the arrow keys
        (``panels.js``) or a row of the mechanics tab's matrix. Checked, then drawn as a click."""
        if session is None:
            raise ValueError("the image is still loading; try again in a moment")
        ticket = session.tickets.take()
        session.point = pixel_of(evt.index, session.exploration.image_hw)
        return self._shown(session, ticket, args)

    @guarded
    def redraw(self, session: Session | None, *args: Any) -> tuple:
        """A display control changed: same rows, drawn anew (dropped if overtaken, as a click)."""
        if session is None:
            return (gr.skip(),) * (len(self.DRAWN) + sum(len(f.outputs) for f in self.followers))
        return self._shown(session, session.tickets.take(), args)

    def _shown(self, session: Session, ticket: int, args: tuple) -> tuple:
        """The panels, the explanation and every follower's outputs; or nothing if a later event of
        the session started meanwhile, or if the session was replaced (a model switch, an upload)
        while this one was drawing."""
        view, rest = view_of(*args[: self.VIEW]), args[self.VIEW :]
        outputs = list(draw(session, view))
        for follower in self.followers:
            mine, rest = rest[: len(follower.inputs)], rest[len(follower.inputs) :]
            outputs += follower.draw(session, view, *mine)
        return tuple(outputs) if session.tickets.current(ticket) else (gr.skip(),) * len(outputs)

    @guarded
    def attend(
        self,
        path: str | None,
        name: str,
        t: float,
        x: float,
        y: float,
        head: str,
        s: float,
        prompt: str = "",
        images: bool = False,
    ) -> tuple:
        """``/attend``: see :func:`attend`."""
        if not isinstance(images, bool):
            raise ValueError(f"images must be true or false, got {images!r}")
        return attend(self.library, path, name, t, x, y, head, s, prompt, images, self.explorations)


def build_demo(model: str | Any = "ddpm-faces", library: Library | None = None) -> gr.Blocks:
    """The Blocks app, opened on ``model``: a bundled model's name, or your own ``BundledModel``
    (any module with ``prepare``/``run``, see :mod:`spatial_attn.models.bundle`), served beside them."""
    library = library or Library()
    models_given = model if isinstance(model, list) else [model]
    for own in reversed(models_given):  # your own models first, in the order given
        if not isinstance(own, str):
            library.add(own)
    model = models_given[0] if isinstance(models_given[0], str) else models_given[0].name
    if model not in library.models:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(library.models)}")

    on = Handlers(library)
    # Gradio's files (uploads, /attend's images) are deleted an hour after they were made, checked
    # every ten minutes, and all of them when the server stops.
    with gr.Blocks(title="spatial-attn", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.HTML(
            '<b>spatial-attn</b> · <span class="sa-mouse">move the mouse over the image</span>'
            '<span class="sa-touch">tap the image</span>: every attention layer shows where that pixel looks '
            "(its row of the softmax matrix), drawn over the image. Click to pin a pixel, then the arrow "
            "keys move it (shift: 4 pixels). New here? Open the <b>lesson</b>.",
            elem_id="intro",
            js_on_load=None,
            padding=False,
        )
        state = gr.State(None)
        with gr.Row(equal_height=False, elem_id="sa-main"):
            with gr.Column(scale=0, min_width=400, elem_id="sa-left"):
                image = gr.Image(
                    label="hover or click a pixel",
                    elem_id="input-image",
                    interactive=False,
                    format="png",
                    height=DISPLAY + 16,
                    width=DISPLAY + 16,
                    buttons=[],
                )
                gr.HTML(  # panels.js says the pinned pixel here, in words (a polite live region)
                    '<div id="sa-pin" role="status" aria-live="polite"></div>',
                    elem_id="pin-status",
                    js_on_load=None,
                    padding=False,
                )
                with gr.Row():
                    models = gr.Dropdown(library.choices(), value=model, label="model", elem_id="model")
                    seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="seed")
                timestep = gr.Slider(
                    0,
                    999,
                    value=DEFAULT_TIMESTEP,
                    step=1,
                    label="timestep t (noise level)",
                    elem_id="timestep",
                )
                # beside the panels: what a panel means (head, row or column, colour scale)
                head, mode, cmap, scale, upsampling, opacity, layout, over = panels.controls()
                with gr.Row():
                    sample = gr.Button("new sample from seed", elem_id="new-sample")
                    upload = gr.UploadButton("upload an image", file_types=["image"], elem_id="upload")
                    fit = gr.Radio(list(FITS), value="crop", label="upload fit", elem_id="fit", min_width=200)
                with gr.Row(equal_height=False):
                    note = gr.Markdown(elem_id="input-note")
                    with gr.Column(scale=0, min_width=140):
                        gr.Markdown("what the model sees", elem_id="model-input-label")
                        model_input = gr.Image(
                            show_label=False,
                            container=False,
                            elem_id="model-input",
                            interactive=False,
                            format="png",
                            height=128,
                            width=128,
                            buttons=[],
                        )
                gallery = gr.Gallery(
                    [(str(p), p.stem) for p in on.example_paths],
                    label="example faces (valid, then broken)",
                    columns=3,
                    allow_preview=False,
                    height=380,
                    object_fit="contain",
                    elem_id="examples",
                )
            with gr.Column(scale=1, elem_id="sa-right"):
                LessonView()  # folded above the views; it points at them
                with gr.Tabs(elem_id="views"):
                    with gr.Tab("panels", id="panels"):
                        heatmaps = panels.component()
                        with gr.Accordion("what the panels show", open=False, elem_id="explain"):
                            gr.Markdown(panels.HELP, elem_id="panels-help")
                            explanation = gr.Markdown(elem_id="explanation")
                        with gr.Accordion("export this click", open=False, elem_id="export-box"):
                            download_view = DownloadView()
                    with gr.Tab("how a row is made", id="mechanics") as mechanics_tab:
                        mechanics_view = MechanicsView()
                    with gr.Tab("timesteps", id="timesteps"):
                        timesteps_view = TimestepsView()
                    with gr.Tab("compare", id="compare"):
                        compare_view = CompareView(library, UNTRAINED)
                    with gr.Tab("ablation", id="ablation"):
                        ablation_view = AblationView(library)
                    with gr.Tab("whole model", id="modelwide"):
                        modelwide_view = ModelWideView()
                prompt_view = PromptView()  # text-conditioned models only

        view_inputs = [head, mode, cmap, scale, upsampling, opacity, layout, over]
        drawn = [heatmaps, explanation]
        reran = [state, image, *drawn, note, model_input, head, timestep, sample]
        run_inputs = [models, timestep, seed, *view_inputs]
        # Clicks and redraws are cheap: they run side by side for all users (no shared lane), and
        # within one session a result overtaken by a later event is dropped (Handlers._shown).
        # Model runs share one bounded lane, whatever their kind (serving.RUN_EVENTS).
        quiet = {"api_name": False, "show_progress": "hidden", "concurrency_limit": None}
        # Gradio hands each input's and output's processing to a worker thread of its own; a click
        # has ~20 of them, and under load each waits for the GIL. Their values are plain strings and
        # numbers, checked by view_of, so clicks and redraws skip that processing.
        raw = {**quiet, "preprocess": False, "postprocess": False}
        runs = {"api_name": False, **RUN_EVENTS}
        demo.load(on.start, run_inputs, reran, **runs)
        models.change(on.rerun, [state, *run_inputs], reran, **runs)
        # .change, not .release: a value typed into the box or stepped with the arrow keys re-runs too
        timestep.change(on.rerun, [state, *run_inputs], reran, trigger_mode="always_last", **runs)
        seed.submit(on.rerun, [state, *run_inputs], reran, **runs)
        upload.upload(on.uploaded, [state, upload, *run_inputs], reran, **runs)
        fit.change(on.refit, [state, fit, *run_inputs], reran, **runs)
        gallery.select(on.picked, [state, *run_inputs], reran, **runs)
        sample.click(on.generated, [state, *run_inputs], reran, **runs)
        # The tabs that follow the pinned pixel are drawn by the click's own event (Follower).
        on.followers = [mechanics_view.follower(), compare_view.follower(), prompt_view.follower()]
        drawing = [state, *view_inputs, *(c for f in on.followers for c in f.inputs)]
        drawn += [c for f in on.followers for c in f.outputs]
        # always_last, not Gradio's default "once": a click made while the previous one is still
        # pending is sent when it ends, instead of being ignored (a lost click under load)
        image.select(on.clicked, drawing, drawn, trigger_mode="always_last", **raw)
        # the arrow keys: every press is sent ("always_last" would resend a pending press's data, not
        # the newest); an answer that a later press overtook is dropped, as for clicks
        heatmaps.select(on.pinned, drawing, drawn, trigger_mode="multiple", **raw)
        for control in view_inputs:  # redrawing is cheap: follow every change, sliders included
            control.change(on.redraw, drawing, drawn, trigger_mode="always_last", **raw)

        with gr.Row(visible=False):  # the /attend endpoint: inputs and outputs for API callers only
            api_inputs = [
                gr.File(label="image"),
                gr.Textbox(model, label="model"),
                gr.Number(DEFAULT_TIMESTEP, label="timestep"),
                gr.Number(16, label="x"),
                gr.Number(16, label="y"),
                gr.Textbox("mean", label="head"),
                gr.Number(0, label="seed"),
                gr.Textbox("", label="prompt"),
                gr.Checkbox(False, label="images"),
            ]
            api_outputs = [gr.Gallery(format="png", label="heatmaps"), gr.JSON(label="rows")]
            api_only = gr.Button()  # never shown nor clicked: gr.on(None) would also run on page load
        api_only.click(on.attend, api_inputs, api_outputs, api_name="attend", **RUN_EVENTS)
        mechanics_view.wire(state, mechanics_tab, head)
        mechanics_view.html.select(on.pinned, drawing, drawn, trigger_mode="multiple", **raw)  # a matrix row
        download_view.wire(state, view_inputs, view_of)
        timesteps_view.wire(state)
        compare_view.wire(state, view_inputs, view_of)
        ablation_view.wire(state)
        modelwide_view.wire(state)
        prompt_view.wire(state, head, cmap, on, run, run_inputs, reran, guarded)
    serving.share_lane(demo)  # the JSON API's runs and these take turns in one lane
    demo.attend = functools.partial(attend, library, cache=on.explorations)  # for the JSON API
    return demo


def launch(
    model: str | Any = "ddpm-faces",
    host: str | None = None,
    port: int = 7860,
    share: bool = False,
    placement: Any = None,
    **kwargs: Any,
) -> gr.Blocks:
    """Build the app and serve it. Blocks until stopped, unless ``prevent_thread_lock=True`` is passed;
    then returns the running app (``.close()`` stops it). ``host=None`` is Gradio's own choice:
    ``GRADIO_SERVER_NAME`` if set (a Space sets it), else 127.0.0.1. Served behind the guard, with
    the JSON API, a temp folder of its own, and a clean stop on SIGTERM (see :mod:`.public`)."""
    folder = public.own_temp_folder()  # before the Blocks: Gradio's components read it when made
    public.atomic_cache_writes()
    demo = build_demo(model, Library(placement=placement))
    # no handler outside the queue, and a bounded one: past 256 waiting events, "queue full" (503)
    demo.queue(default_concurrency_limit=RUNS, api_open=False, max_size=256)
    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    quiet, blocking = kwargs.pop("quiet", False), not kwargs.pop("prevent_thread_lock", False)
    if blocking:
        public.stop_on_sigterm()
    demo.launch(  # quiet: Gradio would tell a CLI user to "set share=True in launch()"
        server_name=host,
        server_port=port,
        share=share,
        css=CSS,
        theme=theme,
        state_session_capacity=256,
        max_file_size=f"{MAX_UPLOAD_MB:g}mb",
        footer_links=["api"],
        app_kwargs=public.app_kwargs(demo, demo.attend),
        quiet=True,
        prevent_thread_lock=True,
        **kwargs,
    )
    if not quiet:
        print(f"* Running on local URL:  {demo.local_url}")
        if not share:
            print("* For a public link: spatial-attn serve --share")
    if blocking:
        demo.block_thread()  # Gradio's wait loop: until Ctrl-C or SIGTERM
        public.stopped(demo, folder)
    return demo
