"""The panels' numbers without a browser: colour scales, panel sizes, what the page is sent (queries
and keys in float16, pinned vectors) checked against attention written out from its definition."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from PIL import Image

from spatial_attn.analysis import payload, render
from spatial_attn.analysis.explore import Exploration, View
from spatial_attn.models import load_model


def _decode(text: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).astype(np.float64).reshape(shape)


def _face() -> Image.Image:
    from spatial_attn.app.blocks import default_image

    return default_image()[0]


@pytest.fixture(scope="module")
def ddpm() -> Exploration:
    return Exploration(load_model("ddpm-faces"), _face(), timestep=250, seed=0)


def test_uniform_attention_is_one_flat_colour_at_the_middle_of_the_x_uniform_scale():
    for grid in ((8, 8), (16, 16)):
        n = grid[0] * grid[1]
        row = np.full(grid, 1 / n)
        scale = render.colour_scale(row, "× uniform", n)
        np.testing.assert_allclose(scale.unit(row), 0.5)
        assert scale.unit(np.array([4 / n]))[0] == pytest.approx(0.5 + 2 / (2 * render.SPAN))
    assert [label for _, label in render.ColourScale(True, tokens=64).ticks()] == [
        "1/16×",
        "1/4×",
        "1×",
        "4×",
        "16×",
    ]
    per_map = render.colour_scale(np.array([0.1, 0.4]), "per map", 2)
    assert per_map.top == 0.4 and per_map.ticks()[-1] == (1.0, "0.4")


@pytest.mark.parametrize(
    ("grids", "size"),
    [([(16, 16), (8, 8)], 192), ([(4, 4)], 192), ([(7, 7)], 224), ([(64, 64)], 192), ([(48, 48)], 192)],
)
def test_every_panel_is_one_integer_upscale_of_every_grid(grids, size):
    got = render.panel_size(grids, (32, 32))
    assert got == size and got >= render.MIN_PANEL
    assert all(got % side == 0 for grid in grids for side in grid)


def test_queries_and_keys_sent_to_the_browser_give_the_servers_rows(ddpm):
    hover = payload.hover_json(ddpm.layers)
    for layer, sent in zip(ddpm.layers, hover, strict=True):
        h, n, d = layer.q.shape[1:]
        q = _decode(sent["q"], "<f2", (h, n, d))
        k = _decode(sent["k"], "<f2", (h, layer.keys.count, d))
        logits = np.einsum("hnd,hmd->hnm", q, k)  # the definition, with float16 inputs
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for y, x in ((0, 0), (3, 5), (layer.query_grid[0] - 1, layer.query_grid[1] - 1)):
            i = y * layer.query_grid[1] + x
            np.testing.assert_allclose(
                probs[:, i].mean(0).reshape(layer.key_grid), layer.row(y, x), atol=1e-3
            )
        lse = _decode(sent["lse"], "<f4", (h, n))
        exact = torch.logsumexp(layer.q[0].double() @ layer.k[0].double().transpose(-1, -2), -1).numpy()
        np.testing.assert_allclose(lse, exact, atol=1e-4)


def test_queries_and_keys_over_the_budget_are_not_sent(ddpm):
    first = ddpm.layers[0]
    cost = 2 * (first.q[0].numel() + first.k[0].numel())
    hover = payload.hover_json(ddpm.layers, budget=cost)
    assert hover[0] is not None and all(h is None for h in hover[1:])


def test_pinned_rows_and_columns_are_the_definitions(ddpm):
    layer = ddpm.layers[1]  # 8 x 8, two heads
    q, k = layer.q[0].double(), layer.k[0].double()
    probs = torch.softmax(q @ k.transpose(-1, -2), -1).numpy()  # (h, N, N)
    point = (13, 9)  # model-input pixel: cell (3, 2) of an 8 x 8 grid
    row = payload.pinned_json(layer, point, (32, 32), "row")
    assert row["cell"] == [3, 2] and row["token"] == 3 * 8 + 2
    np.testing.assert_allclose(_decode(row["values"], "<f4", (2, 64)), probs[:, 26], atol=1e-6)
    column = payload.pinned_json(layer, point, (32, 32), "column")
    np.testing.assert_allclose(_decode(column["values"], "<f4", (2, 64)), probs[:, :, 26], atol=1e-6)


def test_the_browser_data_names_every_layer_and_its_tokens():
    vit = Exploration(load_model("vit-faces"), _face())
    data = vit.browser_data((5, 20), View(head="max", heads_grid=True))
    assert [layer["name"] for layer in data["layers"]] == [layer.name for layer in vit.layers]
    keys = data["layers"][0]["keys"]
    assert keys["labels"] == ["CLS"] and keys["special"] == [0] and keys["grid"] == [8, 8]
    assert data["size"] == 192 and data["view"]["scale"] == "× uniform"
    assert len(data["lut"]) == 256 * 3 and data["base"].startswith("data:image/png;base64,")
    json.dumps(data)  # all of it travels as JSON


def test_first_click_lands_on_an_eye_of_a_face_and_the_centre_otherwise(ddpm):
    from spatial_attn.faces.sample_eval import locate_eyes

    eyes, _ = locate_eyes(ddpm.image)
    y, x = ddpm.first_point()
    assert abs(y - eyes[0][0]) <= 1 and abs(x - eyes[0][1]) <= 1
    blank = Exploration(load_model("vit-faces"), Image.new("RGB", (32, 32), (90, 90, 90)))
    assert blank.first_point() == (16, 16)


def test_max_caption_says_its_entropy_is_the_means_and_one_head_layers_are_not_doubled(ddpm):
    clicks = ddpm.click((13, 9), (32, 32), View(head="max", heads_grid=True))
    two_heads = next(c for c in clicks if c.layer.heads == 2)
    one_head = next(c for c in clicks if c.layer.heads == 1)
    assert "(of the head mean)" in two_heads.caption() and "of 6.00 bits" in two_heads.caption()
    assert one_head.panel.width == 192  # one map, not the head and an identical "mean"
    assert two_heads.panel.width == 3 * 192 + 2 * 4  # head 0, head 1, their mean


def test_masked_causal_and_probability_only_layers_are_drawn_for_clicks_only():
    from spatial_attn.engine.grid import TokenLayout
    from spatial_attn.engine.layer import AttentionLayer, QKScores, StoredProbs

    grid = TokenLayout(16, (4, 4))
    q, k = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    plain = AttentionLayer("plain", "sdpa", QKScores(q, k), grid, grid)
    masked = AttentionLayer(
        "masked", "sdpa", QKScores(q, k, mask=torch.ones(16, 16, dtype=torch.bool)), grid, grid
    )
    causal = AttentionLayer("causal", "sdpa", QKScores(q, k, causal=True), grid, grid)
    stored = AttentionLayer(
        "stored", "softmax", StoredProbs(torch.softmax(q @ k.transpose(-1, -2), -1)), grid, grid
    )
    text = AttentionLayer("text", "sdpa", QKScores(q, k), grid, TokenLayout(16, None))
    hover = payload.hover_json([plain, masked, causal, stored, text])
    assert hover[0] is not None and hover[1:] == [None, None, None, None]
    pinned = payload.pinned_json(stored, (5, 5), (8, 8), "row")  # still shown for a click
    np.testing.assert_allclose(
        _decode(pinned["values"], "<f4", (2, 16)), stored.scores.p[0, :, 2 * 4 + 2].numpy(), atol=1e-7
    )


def test_a_sagan_opens_on_its_generator_unless_given_an_image():
    import gradio as gr

    from spatial_attn.app.blocks import Handlers, Library

    handlers = Handlers(Library(["sagan-faces", "vit-faces"]))
    view = ("mean", "row: where it looks", "viridis", "× uniform", "nearest", 0.65, "per layer", "image")
    opened = handlers.start("sagan-faces", 0, 2, *view)[0]
    assert opened.source is None and [la.name for la in opened.exploration.layers] == ["generator.attn"]
    vit = handlers.start("vit-faces", 0, 2, *view)[0]
    switched = handlers.rerun(vit, "sagan-faces", 0, 2, *view)[0]  # from the example face: generate
    assert switched.exploration.layers[0].name == "generator.attn" and "seed 2" in switched.note
    picked = handlers.picked(
        gr.SelectData(None, {"index": 4, "value": None}), None, "sagan-faces", 0, 2, *view
    )[0]
    assert picked.exploration.layers[0].name == "discriminator.attn"  # a picked image is judged
