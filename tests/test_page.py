"""The page's parts that need no browser (issue 21): a pixel pinned by the page itself (arrow keys, a
row of the matrix) is checked like a click; colorbar labels never touch; text drawn into pictures is
readable; the lesson's steps name only numbers the page has."""

from __future__ import annotations

import itertools
import re

import gradio as gr
import pytest

from spatial_attn.analysis import render
from spatial_attn.app.blocks import Handlers, Library

VIEW = ("mean", "row: where it looks", "viridis", "× uniform", "nearest", 0.65, "per layer", "image")


@pytest.fixture(scope="module")
def handlers() -> Handlers:
    return Handlers(Library(["vit-faces"]))


def _pin(index) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": "keys"})


def test_a_pixel_pinned_by_the_page_is_drawn_as_a_click(handlers):
    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    heatmaps, text = handlers.pinned(_pin([7, 30]), session, *VIEW)
    assert session.point == (7, 30) and "(y, x) = (7, 30)" in text and 'data-pixel="7,30"' in heatmaps


@pytest.mark.parametrize(
    ("index", "message"),
    [([32, 0], "y must be from 0 to 31"), ([0, -1], "x must be from 0 to 31"), ([1.5, 2], "whole number"),
     ([1], r"a pixel is \[y, x\]"), ("3,4", r"a pixel is \[y, x\]"), (None, r"a pixel is \[y, x\]")],
)  # fmt: skip
def test_a_forged_pin_is_a_message_and_moves_nothing(handlers, index, message):
    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    before = session.point
    with pytest.raises(gr.Error, match=message):
        handlers.pinned(_pin(index), session, *VIEW)
    assert session.point == before
    with pytest.raises(gr.Error, match="still loading"):
        handlers.pinned(_pin([1, 1]), None, *VIEW)


@pytest.mark.parametrize("width", [96, 128, 150, 192, 400])
def test_colorbar_labels_never_touch_and_keep_both_ends(width):
    ticks = render.ColourScale(True, tokens=64).ticks()
    f = render.font(render.TEXT - 2)
    placed = render.tick_places(width, ticks, f.getlength)
    texts = [t for _, t in placed]
    assert texts[0] == "1/16×" and texts[-1] == "16×"
    spans = [(left, left + f.getlength(t)) for left, t in placed]
    assert all(a[1] + 4 <= b[0] for a, b in itertools.pairwise(spans)), spans
    assert all(a >= 0 and b <= width for a, b in spans)
    if width >= 400:
        assert texts == ["1/16×", "1/4×", "1×", "4×", "16×"]  # room for all of them


def test_text_in_pictures_is_at_least_11_px_and_has_the_signs_it_uses():
    f = render.font()
    top, bottom = f.getbbox("Ty")[1::2]
    assert bottom - top >= 11  # filmstrip labels, axis names
    # "×" and "·" are real glyphs, not the missing-glyph box (which is the same for both)
    assert f.getmask("×").getbbox() != f.getmask("·").getbbox()
    picture = render.labelled(
        render.upscale(__import__("numpy").zeros((4, 4, 3), "uint8"), (64, 64)), "t = 5"
    )
    assert picture.height == 64 + render.TEXT + 7
    # the filmstrip is shown at about 600 of its 5 x 192 + 4 x 6 px: its labels still read >= 11 px
    from spatial_attn.app.views.timesteps import COLUMNS, LABEL

    shown = 600 / (COLUMNS * 192 + (COLUMNS - 1) * 6)
    top, bottom = render.font(LABEL).getbbox("Ty")[1::2]
    assert (bottom - top) * shown >= 11


def test_the_lesson_asks_only_for_numbers_the_page_has():
    from spatial_attn.app.views.lesson import SCRIPT, STEPS

    known = set(
        re.search(r"return \{ (layer: .*?) \};", SCRIPT, re.S).group(1).replace("\n", " ").split(", ")
    )
    names = {k.split(":")[0].strip() for k in known}
    for step in STEPS:
        assert set(re.findall(r"\{(\w+)\}", step.text + " ".join(step.spot))) <= names, step.title
    assert [s.tab for s in STEPS].count("panels") >= 4 and len(STEPS) == 7


def test_serving_names_the_cli_flag_not_gradios_launch_argument(capsys, monkeypatch):
    import socket

    from spatial_attn.app import blocks

    def empty(model: str, library: object = None) -> gr.Blocks:  # the launch alone, no models built
        with gr.Blocks() as demo:
            gr.Markdown("empty")
        demo.attend = lambda *args, **kwargs: None  # what the JSON API would call
        return demo

    monkeypatch.setattr(blocks, "build_demo", empty)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = blocks.launch("ddpm-faces", host="127.0.0.1", port=port, prevent_thread_lock=True)
    try:
        out = capsys.readouterr().out
        assert f"Running on local URL:  http://127.0.0.1:{port}/" in out
        assert "spatial-attn serve --share" in out and "share=True" not in out
    finally:
        demo.close()
