"""The app without a browser: its handlers called as plain functions, and ``/attend`` over HTTP."""

from __future__ import annotations

import re

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import spatial_attn as sa
from spatial_attn.app.blocks import DISPLAY, Follower, Handlers, Library, default_image

VIEW = ("mean", "row: where it looks", "viridis", "per map", "nearest", 0.65, "per layer", "image")


@pytest.fixture(scope="module")
def handlers() -> Handlers:
    return Handlers(Library())


def _select(x: int, y: int) -> gr.SelectData:
    return gr.SelectData(None, {"index": [x, y], "value": None})


def test_start_shows_every_layer_of_the_default_model(handlers):
    out = dict(zip(Handlers.RERAN, handlers.start("ddpm-faces", 250, 0, *VIEW), strict=True))
    session = out["state"]
    names = [layer.name for layer in session.exploration.layers]
    assert names and all(".attentions." in n for n in names)
    assert out["heatmaps"].count("<figure") == len(names)
    assert out["image"].size == (DISPLAY, DISPLAY)
    assert "token i = y·W + x" in out["explanation"]


def test_click_reads_rows_without_running_the_model(handlers, monkeypatch):
    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    ran = []
    monkeypatch.setattr(session.exploration.model, "run", lambda *a: ran.append(a))
    heatmaps, text = handlers.clicked(_select(200, 100), session, *VIEW)
    assert not ran
    assert session.point == (100 * 32 // DISPLAY, 200 * 32 // DISPLAY)  # kept in the session itself
    assert "(y, x) = (8, 16)" in text and "CLS" in heatmaps


def test_a_run_nobody_holds_any_more_is_freed(handlers):
    """A run holds every layer's queries and keys: once its session is gone, nothing the click path
    keeps per run (the panels' picture, the hover data's registry) may hold it alive."""
    import gc
    import weakref

    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    handlers.clicked(_select(200, 100), session, *VIEW)
    handlers.redraw(session, *VIEW[:-1], "model input")  # both pictures the panels are drawn over
    run = weakref.ref(session.exploration)
    del session
    gc.collect()
    assert run() is None


def test_a_click_draws_its_followers_in_the_same_event(handlers, monkeypatch):
    drawn = []

    def follow(session, view, *mine):
        drawn.append((session.point, view.cmap, mine))
        return ("followed",)

    monkeypatch.setattr(handlers, "followers", [Follower(["its", "inputs"], ["its output"], follow)])
    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    *_, followed = handlers.clicked(_select(200, 100), session, *VIEW, "a", "b")
    assert followed == "followed" and drawn == [((8, 16), "viridis", ("a", "b"))]
    assert handlers.redraw(session, *VIEW, "c", "d")[2] == "followed"
    assert len(handlers.redraw(None, *VIEW, "c", "d")) == 3


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, 7, "head must be"),
        (0, "head x", "head must be"),
        (1, "diagonal", "show must be one of"),
        (2, "jet", "colormap must be one of"),
        (3, None, "colour scale must be one of"),
        (4, "bicubic", "upsampling must be one of"),
        (5, 1.5, "opacity must be from 0 to 1"),
        (5, "nan", "opacity must be a finite number"),
        (6, ["per layer"], "layout must be one of"),
        (7, "noise", "draw over must be one of"),
    ],
)
def test_a_forged_display_control_is_a_message(handlers, position, value, message):
    """Clicks and redraws skip Gradio's own processing of their inputs: view_of is their check."""
    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    view = list(VIEW)
    view[position] = value
    with pytest.raises(gr.Error, match=message):
        handlers.redraw(session, *view)


@pytest.mark.parametrize(
    "view",
    [
        ("max", "column: who looks at it", "magma", "shared", "smooth", 1.0, "per layer", "model input"),
        ("head 1", "row: where it looks", "cividis", "percentile", "nearest", 0.3, "layers × heads", "image"),
        ("head 7", "row: where it looks", "inferno", "per map", "nearest", 0.5, "per layer", "image"),
    ],
)
def test_every_display_control_draws(handlers, view):
    session = handlers.start("ddpm-faces", 500, 1, *VIEW)[0]
    heatmaps, _ = handlers.redraw(session, *view)
    assert heatmaps.count("<figure") == len(session.exploration.layers)


def test_model_switch_keeps_the_click(handlers):
    session = handlers.start("ddpm-faces", 250, 0, *VIEW)[0]
    handlers.clicked(_select(40, 300), session, *VIEW)
    switched = handlers.rerun(session, "sagan-faces", 250, 0, *VIEW)[0]
    assert switched.point == session.point and switched.exploration.model.name == "sagan-faces"


def test_generators_sample_from_the_seed(handlers):
    out = dict(zip(Handlers.RERAN, handlers.generated(None, "sagan-faces", 0, 3, *VIEW), strict=True))
    assert out["state"].source is None and "generator" in " ".join(
        layer.name for layer in out["state"].exploration.layers
    )


def test_click_before_the_image_has_loaded_is_a_message(handlers):
    with pytest.raises(gr.Error, match="still loading"):
        handlers.clicked(_select(10, 10), None, *VIEW)


def test_click_outside_the_image_is_a_message(handlers):
    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    with pytest.raises(gr.Error, match="outside"):
        handlers.clicked(_select(DISPLAY + 5, 10), session, *VIEW)


def test_bad_upload_is_a_message_and_the_app_keeps_serving(handlers, tmp_path):
    bad = tmp_path / "model.png"
    bad.write_bytes(b"\x80\x04not an image")
    with pytest.raises(gr.Error, match="not an image"):
        handlers.uploaded(None, str(bad), "ddpm-faces", 250, 0, *VIEW)
    good = tmp_path / "face.png"
    default_image()[0].resize((320, 320)).convert("RGBA").save(good)
    outputs = handlers.uploaded(None, str(good), "ddpm-faces", 250, 0, *VIEW)
    out = dict(zip(Handlers.RERAN, outputs, strict=True))
    assert "transparency" in out["note"] and "320×320" in out["note"]


def test_attend_over_http_matches_a_direct_capture(app_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    panels, rows = client.predict(None, "vit-faces", 0, 20, 9, "mean", 0, "", True, api_name="/attend")
    model = sa.load_model("vit-faces")
    prepared = model.prepare(default_image()[0])
    with torch.no_grad(), sa.capture(model.module) as cap:
        model.run(prepared)
    assert [layer["name"] for layer in rows["layers"]] == cap.layers.names()
    assert len(panels) == len(cap.layers)
    for layer, json_layer in zip(cap.layers, rows["layers"], strict=True):
        cell = sa.cell_at((9, 20), (32, 32), layer.query_grid)
        assert json_layer["cell"] == list(cell) and json_layer["query_grid"] == list(layer.query_grid)
        np.testing.assert_allclose(json_layer["values"], layer.row(*cell), atol=1e-6)
    # pixels of an uploaded image of any size map through its own size
    big = tmp_path / "big.png"
    default_image()[0].resize((96, 64), Image.Resampling.NEAREST).save(big)
    _, rows = client.predict(handle_file(str(big)), "vit-faces", 0, 60, 27, "mean", 0, api_name="/attend")
    # centre-cropped (the default fit): resized to 48x32, the window 8 px from the left; x = 60.5 * 48/96 - 8
    assert rows["model_pixel"] == [13, 22] and rows["image_size"] == [64, 96]
    assert "centre-cropped to 32x32 (fit: crop)" in rows["input_note"]
    with pytest.raises(Exception, match="not an image"):
        junk = tmp_path / "junk.png"
        junk.write_text("hello")
        client.predict(handle_file(str(junk)), "vit-faces", 0, 1, 1, "mean", 0, api_name="/attend")


def test_your_own_model_is_served_beside_the_bundled_ones(handlers):
    from test_gan_attention import SelfAttn
    from torch import nn

    from spatial_attn.models import BundledModel, Prepared

    class MyModel(BundledModel):
        """An engineer's own network: an image in, its SAGAN-style attention captured."""

        def prepare(self, image=None, *, timestep=None, seed=0):
            x, pixels, note = self.to_input(image)
            return Prepared((x,), {}, pixels, note)

        def run(self, prepared):
            self.module(*prepared.args)
            return {}

    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), SelfAttn(32))
    net[1].gamma.data.fill_(0.5)
    mine = MyModel(name="my-net", kind="custom", pretrained=True, module=net.eval(), image_size=16)
    assert handlers.library.add(mine) == "my-net" and handlers.library.choices()[0] == "my-net"
    out = dict(zip(Handlers.RERAN, handlers.start("my-net", 0, 0, *VIEW), strict=True))
    layer = out["state"].exploration.layers[0]
    assert (layer.name, layer.query_grid, layer.verified) == ("1", (16, 16), True)
    assert out["heatmaps"].count("<figure") == 1
    # a generated SAGAN face has no image behind it: switching to a model that needs one falls
    # back to the example face instead of failing
    sampled = dict(zip(Handlers.RERAN, handlers.generated(None, "sagan-faces", 0, 3, *VIEW), strict=True))
    assert sampled["state"].source is None
    switched = dict(zip(Handlers.RERAN, handlers.rerun(sampled["state"], "my-net", 0, 3, *VIEW), strict=True))
    assert switched["state"].exploration.model.name == "my-net" and "example" in switched["state"].note


def test_a_late_click_cannot_undo_a_model_switch(handlers):
    old = handlers.start("ddpm-faces", 250, 0, *VIEW)[0]
    new = handlers.rerun(old, "vit-faces", 0, 0, *VIEW)[0]
    late = handlers.clicked(_select(40, 300), old, *VIEW)  # started before the switch, finished after
    assert all(isinstance(out, type(gr.skip())) for out in late)
    assert handlers.clicked(_select(40, 300), new, *VIEW)[0].count("<figure") == len(new.exploration.layers)


@pytest.mark.parametrize("replace", ["upload", "example", "sample"])
def test_every_run_retires_the_session_it_replaces(handlers, replace, tmp_path):
    old = handlers.start("sagan-faces", 0, 0, *VIEW)[0]
    if replace == "upload":
        face = tmp_path / "face.png"
        default_image()[0].save(face)
        handlers.uploaded(old, str(face), "sagan-faces", 0, 0, *VIEW)
    elif replace == "example":
        handlers.picked(gr.SelectData(None, {"index": 1, "value": None}), old, "sagan-faces", 0, 0, *VIEW)
    else:
        handlers.generated(old, "sagan-faces", 0, 1, *VIEW)
    assert old.tickets.retired


def test_a_result_overtaken_by_a_later_event_of_the_session_is_dropped(handlers, monkeypatch):
    import spatial_attn.app.blocks as app

    session = handlers.start("vit-faces", 0, 0, *VIEW)[0]
    draw = app.draw

    def slow_draw(s, view):  # a later click of the same session starts while this one draws
        s.tickets.take()
        return draw(s, view)

    monkeypatch.setattr(app, "draw", slow_draw)
    overtaken = handlers.redraw(session, *VIEW)
    assert all(isinstance(out, type(gr.skip())) for out in overtaken)
    monkeypatch.setattr(app, "draw", draw)
    assert handlers.redraw(session, *VIEW)[0].count("<figure") == len(session.exploration.layers)


# Each bad /attend parameter, as a script would send it, and the words its message must contain.
BAD_ATTEND = [
    ({"timestep": None}, "timestep is required"),
    ({"timestep": -0.5}, "timestep must be a whole number from 0 to 999, got -0.5"),
    ({"timestep": 1000}, "timestep must be from 0 to 999"),
    ({"timestep": float("inf")}, "timestep must be a finite number"),
    ({"timestep": float("nan")}, "timestep must be a finite number"),
    ({"timestep": 10**400}, "timestep must be a number"),
    ({"seed": 2**64}, "seed must be from 0 to 4294967295"),
    ({"seed": "abc"}, "seed must be a number"),
    ({"x": None}, "x is required"),
    ({"x": 1e400}, "x must be a finite number"),
    ({"x": 32}, "x must be from 0 to"),
    ({"y": -1}, "y must be from 0 to"),
    ({"head": "head 99"}, "head 99: the layers of ddpm-faces have at most"),
    ({"head": "first"}, "head must be 'mean', 'max' or 'head k'"),
    ({"model": "gpt-5"}, "model must be one of"),
    ({"model": None}, "model must be one of"),
    ({"prompt": None}, "prompt must be text"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ATTEND, ids=[m for _, m in BAD_ATTEND])
def test_bad_attend_parameters_get_messages_a_person_can_read(handlers, bad, message):
    args = {"path": None, "name": "ddpm-faces", "t": 250, "x": 16, "y": 16, "head": "mean", "s": 0}
    names = {"timestep": "t", "seed": "s", "model": "name"}
    args.update({names.get(k, k): v for k, v in bad.items()})
    with pytest.raises(gr.Error) as error:
        handlers.attend(**args)
    assert message in str(error.value.message)


def test_bad_attend_parameters_over_http(app_url):
    """The same table through gradio_client at its defaults: what a script really meets."""
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    order = ["image", "model", "timestep", "x", "y", "head", "seed", "prompt"]
    for bad, message in BAD_ATTEND:
        if any(isinstance(v, float) and not np.isfinite(v) for v in bad.values()) or 10**400 in bad.values():
            continue  # not JSON: the client cannot send these (in-process test above covers them)
        args = dict(zip(order, [None, "ddpm-faces", 250, 16, 16, "mean", 0, ""], strict=True)) | bad
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(*args.values(), api_name="/attend")
    # after all of that, the app still answers
    _, rows = client.predict(None, "ddpm-faces", 250, 16, 16, "mean", 0, api_name="/attend")
    assert len(rows["layers"]) == 7


def test_attend_answers_a_repeated_image_from_its_cache_and_writes_no_files(handlers, monkeypatch):
    import spatial_attn.app.blocks as app

    runs = []
    real_run = app.run
    monkeypatch.setattr(app, "run", lambda *a, **k: runs.append(a) or real_run(*a, **k))
    args = {"path": None, "name": "vit-faces", "t": 0, "head": "mean", "s": 0}
    panels, first = handlers.attend(x=3, y=4, **args)
    _, again = handlers.attend(x=20, y=9, **args)
    assert len(runs) == 1 and panels == []  # one forward for two calls; no images unless asked
    assert first["layers"][0]["cell"] != again["layers"][0]["cell"]
    handlers.attend(x=20, y=9, **(args | {"s": 1}))  # another seed: another capture
    assert len(runs) == 2


def test_an_upload_larger_than_the_session_keeps_says_the_size_it_was_kept_at(handlers, tmp_path):
    big = tmp_path / "big.png"
    default_image()[0].resize((600, 600)).save(big)
    out = dict(
        zip(Handlers.RERAN, handlers.uploaded(None, str(big), "ddpm-faces", 250, 0, *VIEW), strict=True)
    )
    kept = handlers.library["ddpm-faces"].max_source
    assert "600×600" in out["note"] and f"kept at {kept}×{kept} for this session" in out["note"]


def test_every_model_run_shares_one_bounded_lane_and_clicks_do_not():
    """Events that run a model (whatever tab they come from) queue in one lane of RUNS; clicks and
    redraws, which only read stored queries and keys, have no shared lane at all."""
    from spatial_attn.app.blocks import build_demo
    from spatial_attn.app.serving import RUNS

    demo = build_demo("vit-faces", Library(["vit-faces"]))
    runs = {"start", "rerun", "uploaded", "picked", "generated", "attend", "show", "prompted", "across"}
    runs |= {"follow", "follow_run"}  # the tabs that follow a new run run it through their models
    seen = set()
    for fn in demo.fns.values():
        name = getattr(fn.fn, "__name__", "") or getattr(getattr(fn.fn, "func", None), "__name__", "")
        if name in runs or name == "export":
            seen.add(name)
            assert (fn.concurrency_id, fn.concurrency_limit) == ("model", RUNS), name
        elif getattr(fn.fn, "__qualname__", "") in ("Handlers.clicked", "Handlers.redraw"):
            seen.add(name)
            assert fn.concurrency_limit is None, name
    assert seen == runs | {"export", "clicked", "redraw"}
