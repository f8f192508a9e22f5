"""The app in a real browser (Debian's Chromium, driven by Playwright): hovering and clicking repaint
every panel, the rows the page computes are the server's, what is drawn is those rows, the layout
fits a laptop screen, and a timestep typed into the box re-runs the model.

Screenshots go to a temporary folder, or to ``$SPATIAL_ATTN_SCREENSHOTS`` when set: the README's are
refreshed with ``SPATIAL_ATTN_SCREENSHOTS=assets python -m pytest tests/test_browser.py
tests/test_browser_page.py``.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from browser import (
    PANELS,
    click_and_wait,
    clicked_pixel,
    hover_and_wait,
    image_pixel,
    open_app,
    panels,
)
from PIL import Image

from spatial_attn.analysis.render import ColourScale
from spatial_attn.app.blocks import DISPLAY
from spatial_attn.engine.grid import cell_at

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
OPACITY = 0.65  # the app's default heatmap opacity
DEFAULT_FACE = ASSETS / "faces" / "valid-0.png"  # the app opens on the first valid example


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: a temporary folder unless SPATIAL_ATTN_SCREENSHOTS names one."""
    chosen = os.environ.get("SPATIAL_ATTN_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")


def _viridis() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round()


def _base(size: tuple[int, int]) -> np.ndarray:
    """The picture under the heatmaps: the default face, upscaled with crisp pixels."""
    face = Image.open(DEFAULT_FACE).convert("RGB")
    return np.asarray(face.resize((size[1], size[0]), Image.Resampling.NEAREST)).astype(float)


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _drawn_values(
    panel: np.ndarray, grid: tuple[int, int], base: np.ndarray, table: np.ndarray
) -> np.ndarray:
    """Per cell of ``grid``: the colormap position (0..1) drawn inside it.

    The panel is ``(1 - a) * base + a * heat`` at the app's default opacity ``a``; the heat colour of
    each pixel is recovered from the base image and matched to the nearest colormap entry, and each
    cell takes the median over its interior (so the query cell's outline does not matter).
    """
    heat = (panel.astype(float) - (1 - OPACITY) * base) / OPACITY
    h, w = grid
    height, width = panel.shape[:2]
    out = np.zeros(grid)
    for y in range(h):
        for x in range(w):
            block = heat[
                y * height // h + 4 : (y + 1) * height // h - 4, x * width // w + 4 : (x + 1) * width // w - 4
            ]
            index = ((block.reshape(-1, 1, 3) - table[None]) ** 2).sum(-1).argmin(-1)
            out[y, x] = np.median(index) / 255
    return out


def _model_pixel(fx: float, fy: float) -> str:
    """The model-input pixel "y,x" under fractions (fx, fy) of the displayed image (shown at its own
    size, so a CSS pixel is an image pixel; Gradio rounds the position of a click)."""
    y, x = cell_at((round(fy * DISPLAY), round(fx * DISPLAY)), (DISPLAY, DISPLAY), (32, 32))
    return f"{y},{x}"


def _direct_capture() -> list:
    """The app's first run, made here: ddpm-faces on the default face at t = 250, noise seed 0."""
    import torch

    import spatial_attn as sa
    from spatial_attn.models import load_model

    model = load_model("ddpm-faces")
    with torch.no_grad(), sa.capture(model.module) as cap:
        model.run(model.prepare(Image.open(DEFAULT_FACE).convert("RGB"), timestep=250, seed=0))
    return list(cap.layers)


def _reference_column(layer, cell: tuple[int, int]) -> np.ndarray:
    """Head mean of column j of softmax(q k^T), from the stored q and k: (N,)."""
    import torch

    q, k = layer.q[0].double(), layer.k[0].double()  # (h, N, d), (h, N', d)
    j = cell[0] * layer.key_grid[1] + cell[1]
    return torch.softmax(q @ k.transpose(-1, -2), -1)[:, :, j].mean(0).numpy()


def test_clicks_pin_and_what_is_drawn_is_the_rows_attend_returns(app_url, chromium, shots):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    table = _viridis()
    with open_app(app_url, chromium) as page:
        page.screenshot(path=str(shots / "screenshot-app.png"))
        assert clicked_pixel(page) == (13, 9)  # the first click is the left eye, not between the eyes
        seen = []
        for fx, fy in ((0.33, 0.42), (0.68, 0.62)):
            box = page.locator("#input-image img").bounding_box()
            seen.append(click_and_wait(page, box["width"] * fx, box["height"] * fy))
            page.mouse.move(0, 0)  # off the image: the panels show the pinned click
            page.wait_for_function(
                "p => [...document.querySelectorAll('#heatmaps figure')].every(f => f.dataset.pixel === p)",
                arg=_model_pixel(fx, fy),
            )
            y, x = clicked_pixel(page)
            assert f"{y},{x}" == _model_pixel(fx, fy)
            # the page outlines the pinned pixel: one model pixel, where the click was
            marker = page.locator("#input-image .sa-marker")
            assert marker.get_attribute("data-pixel") == f"{y},{x}" and marker.is_visible()
            m, at = marker.bounding_box(), (box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            assert m["x"] <= at[0] <= m["x"] + m["width"] and m["y"] <= at[1] <= m["y"] + m["height"]
            assert m["width"] == pytest.approx(box["width"] / 32, abs=1) == m["height"]
            _, rows = client.predict(None, "ddpm-faces", 250, x, y, "mean", 0, api_name="/attend")
            layers = {layer["name"]: layer for layer in rows["layers"]}
            drawn = panels(page)
            assert [name for name, _ in drawn] == list(layers)
            for name, uri in drawn:
                values = np.array(layers[name]["values"])
                panel = _decode(uri)
                assert panel.shape[:2] == (192, 192)
                decoded = _drawn_values(panel, values.shape, _base(panel.shape[:2]), table)
                expected = ColourScale(True, tokens=values.size).unit(values)  # "× uniform", the default
                np.testing.assert_allclose(decoded, expected, atol=4 / 255, err_msg=f"{name} {y, x}")
        assert seen[0] != seen[1]


def test_hover_repaints_every_panel_and_its_rows_are_the_servers(app_url, chromium, shots):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    with open_app(app_url, chromium) as page:
        pinned = page.get_attribute(PANELS, "data-pixel")
        for fx, fy in ((0.2, 0.3), (0.7, 0.35), (0.5, 0.8)):
            hover_and_wait(page, *image_pixel(page, fx, fy), _model_pixel(fx, fy))
        page.screenshot(path=str(shots / "screenshot-hover.png"))
        page.mouse.move(0, 0)  # leaving the image goes back to the pinned pixel
        page.wait_for_function(
            "p => [...document.querySelectorAll('#heatmaps figure')].every(f => f.dataset.pixel === p)",
            arg=pinned,
        )
        for y, x in ((0, 0), (13, 21), (31, 17)):
            browser_rows = page.evaluate("([y, x]) => window.saRows(y, x)", [y, x])
            _, rows = client.predict(None, "ddpm-faces", 250, x, y, "mean", 0, api_name="/attend")
            for mine, server in zip(browser_rows, rows["layers"], strict=True):
                assert mine["name"] == server["name"] and mine["cell"] == server["cell"]
                expected = np.asarray(server["values"]).ravel()
                np.testing.assert_allclose(mine["values"], expected, atol=1e-3, err_msg=mine["name"])
        # columns (who looks at a pixel), from the queries and the per-query normalisers sent
        layers = {layer.name: layer for layer in _direct_capture()}
        for y, x in ((5, 20), (31, 0)):
            for mine in page.evaluate("([y, x]) => window.saRows(y, x, 'column')", [y, x]):
                layer = layers[mine["name"]]
                cell = cell_at((y, x), (32, 32), layer.key_grid)
                assert mine["cell"] == list(cell)
                expected = _reference_column(layer, cell)
                np.testing.assert_allclose(mine["values"], expected.ravel(), atol=1e-3, err_msg=mine["name"])
        # the value under the cursor on a map
        canvas = page.locator(f"{PANELS} figure canvas.sa-map").first
        canvas.hover(position={"x": 100, "y": 100})
        assert "× uniform" in page.locator(f"{PANELS} figure .sa-value").first.inner_text()


def test_layout_fits_a_laptop_screen_and_heads_are_labelled(app_url, chromium, shots):
    with open_app(app_url, chromium, viewport=(1280, 800)) as page:
        for selector in (
            "#input-image img",
            "#model",
            "#timestep",
            "#head",
            f"{PANELS} figure canvas.sa-map",
        ):
            box = page.locator(selector).first.bounding_box()
            assert box["y"] >= 0 and box["y"] + box["height"] <= 800, selector
        sizes = page.eval_on_selector_all(
            f"{PANELS} canvas.sa-map", "els => els.map(e => [e.clientWidth, e.clientHeight])"
        )
        assert len({tuple(s) for s in sizes}) == 1 and all(w == h >= 128 for w, h in sizes)  # square
        ticks = page.eval_on_selector_all(f"{PANELS} figure .sa-ticks", "els => els.map(e => e.textContent)")
        assert all(t == "1/16×1/4×1×4×16×" for t in ticks)  # every bar has its numbers (touching ones hidden)
        before = page.get_attribute(PANELS, "data-payload")
        page.locator("#display-more").get_by_text("more display settings").click()
        page.get_by_label("layers × heads").check()
        page.wait_for_function(
            "([sel, prev]) => document.querySelector(sel).dataset.payload !== prev", arg=[PANELS, before]
        )
        titles = page.eval_on_selector_all(
            f"{PANELS} figure",
            "els => els.map(e => [...e.querySelectorAll('.sa-map-title')].map(t => t.textContent))",
        )
        assert ["head 0", "head 1", "mean of 2 heads"] in titles and [""] in titles  # one head: one map
        page.locator("#heatmaps").screenshot(path=str(shots / "screenshot-heads.png"))


def test_a_timestep_typed_into_the_box_reruns_the_model(app_url, chromium):
    with open_app(app_url, chromium) as page:
        assert "t=250" in page.locator("#input-note").inner_text()
        box = page.locator("#timestep input[type=number]")
        box.fill("900")
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#input-note').innerText.includes('t=900')")
        box.press("ArrowUp")  # the arrow keys step the value, and re-run too
        page.wait_for_function("() => document.querySelector('#input-note').innerText.includes('t=901')")


def test_mechanics_tab_follows_the_click_and_the_temperature(app_url, chromium, shots):
    with open_app(app_url, chromium) as page:
        page.get_by_role("tab", name="how a row is made").click()
        page.wait_for_function("() => document.querySelector('#mechanics').innerHTML.includes('<b>100</b>')")
        box = page.locator("#input-image img").bounding_box()
        click_and_wait(page, box["width"] * 0.68, box["height"] * 0.62)  # pixel (19, 21): cell (9, 10)
        page.wait_for_function("() => document.querySelector('#mechanics').innerHTML.includes('<b>154</b>')")
        temperature = page.locator("#mech-temperature input[type=number]")
        temperature.fill("0.5")
        temperature.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#mechanics').innerHTML.includes('softmax(logits / 0.5)')"
        )
        page.screenshot(path=str(shots / "screenshot-mechanics.png"), full_page=True)


def test_export_button_downloads_the_zip(app_url, chromium, tmp_path):
    import zipfile

    with open_app(app_url, chromium) as page:
        page.locator("#export-box").get_by_text("export this click").click()
        page.locator("#export").wait_for()
        assert not page.locator("#export-file").is_visible()  # no empty file box before a file
        page.locator("#export").click()
        link = page.locator("#export-file a").first
        link.wait_for(timeout=60_000)
        with page.expect_download() as download:
            link.click()
        path = tmp_path / "export.zip"
        download.value.save_as(path)
        names = zipfile.ZipFile(path).namelist()
        expected = {"figure.png", "figure.svg", "rows.json", "input.png", "index.html"}
        assert expected <= set(names) and len(names) == len(expected) + 7


def test_timesteps_tab_shows_a_filmstrip(app_url, chromium, shots):
    with open_app(app_url, chromium) as page:
        page.get_by_role("tab", name="timesteps").click()
        page.locator("#film-run").click()
        page.wait_for_selector("#filmstrip img", timeout=60_000)
        page.wait_for_selector("#film-gif a", timeout=10_000)
        assert "t = 0, 111, 222" in page.locator("#film-note").inner_text()
        page.screenshot(path=str(shots / "screenshot-timesteps.png"), full_page=True)


def test_compare_tab_shows_the_twin_and_follows_clicks(app_url, chromium, shots):
    with open_app(app_url, chromium) as page:
        page.get_by_role("tab", name="compare").click()
        page.locator("#compare-run").click()
        page.wait_for_selector('#compare [data-model="ddpm-faces (untrained)"] img', timeout=60_000)
        assert page.locator("#compare figure").count() == 2 * 7
        before = page.eval_on_selector("#compare", "e => e.innerHTML")
        box = page.locator("#input-image img").bounding_box()
        click_and_wait(page, box["width"] * 0.68, box["height"] * 0.62)
        page.wait_for_function("prev => document.querySelector('#compare').innerHTML !== prev", arg=before)
        page.screenshot(path=str(shots / "screenshot-compare.png"), full_page=True)


def test_ablation_tab_shows_before_and_after(app_url, chromium, shots):
    with open_app(app_url, chromium) as page:
        picker = page.locator("#model input")
        picker.click()
        picker.fill("vit-faces")
        page.get_by_role("option", name="vit-faces", exact=True).click()
        page.wait_for_function("() => document.querySelector('#input-note').innerText.includes('classified')")
        assert page.locator("#model-input img").count() == 1  # what a ViT sees is shown too
        page.get_by_role("tab", name="ablation").click()
        page.wait_for_function("() => document.querySelector('#ablate-layer input').value.includes('blocks')")
        page.locator("#ablate-run").click()
        page.wait_for_function("() => document.querySelector('#ablation table')", timeout=60_000)
        cells = page.eval_on_selector_all("#ablation td", "els => els.map(e => e.innerText)")
        assert len(cells) == 2 and cells[0] != cells[1]  # the ViT's verdict changes without its layer
        page.screenshot(path=str(shots / "screenshot-ablation.png"), full_page=True)
