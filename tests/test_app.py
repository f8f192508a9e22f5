"""The app without a browser: its handlers called as plain functions, and ``/attend`` over HTTP."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import spatial_attn as sa
from spatial_attn.app import DISPLAY, Handlers, Library, default_image

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
    state, _, heatmaps, text = handlers.clicked(_select(200, 100), session, *VIEW)
    assert not ran
    assert state.point == (100 * 32 // DISPLAY, 200 * 32 // DISPLAY)
    assert "(y, x) = (8, 16)" in text and "CLS" in heatmaps


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
    _, heatmaps, _ = handlers.redraw(session, *view)
    assert heatmaps.count("<figure") == len(session.exploration.layers)


def test_model_switch_keeps_the_click(handlers):
    session = handlers.clicked(_select(40, 300), handlers.start("ddpm-faces", 250, 0, *VIEW)[0], *VIEW)[0]
    switched = handlers.rerun(session, "sagan-faces", 250, 0, *VIEW)[0]
    assert switched.point == session.point and switched.exploration.model.name == "sagan-faces"


def test_generators_sample_from_the_seed(handlers):
    out = dict(zip(Handlers.RERAN, handlers.generated("sagan-faces", 0, 3, *VIEW), strict=True))
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
        handlers.uploaded(str(bad), "ddpm-faces", 250, 0, *VIEW)
    good = tmp_path / "face.png"
    default_image()[0].resize((320, 320)).convert("RGBA").save(good)
    out = dict(zip(Handlers.RERAN, handlers.uploaded(str(good), "ddpm-faces", 250, 0, *VIEW), strict=True))
    assert "transparency" in out["note"] and "320×320" in out["note"]


def test_attend_over_http_matches_a_direct_capture(app_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    panels, rows = client.predict(None, "vit-faces", 0, 20, 9, "mean", 0, api_name="/attend")
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
    assert rows["model_pixel"] == [13, 20] and rows["image_size"] == [64, 96]
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
    sampled = dict(zip(Handlers.RERAN, handlers.generated("sagan-faces", 0, 3, *VIEW), strict=True))
    assert sampled["state"].source is None
    switched = dict(zip(Handlers.RERAN, handlers.rerun(sampled["state"], "my-net", 0, 3, *VIEW), strict=True))
    assert switched["state"].exploration.model.name == "my-net" and "example" in switched["state"].note
