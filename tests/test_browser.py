"""The app in a real browser (Debian's Chromium, driven by Playwright): clicks repaint the heatmaps,
and what is drawn is the rows that ``/attend`` returns for the same pixel."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from browser import click_and_wait, clicked_pixel, find_chromium, open_app, panels
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium); under CI=true it is installed"
        )
    return path


def _viridis() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round()


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _drawn_values(panel: np.ndarray, grid: tuple[int, int], table: np.ndarray) -> np.ndarray:
    """Per cell of ``grid``: the colormap position (0..1) of the colour drawn inside it (median of the
    cell's interior, so the outline of the query cell does not matter)."""
    h, w = grid
    height, width = panel.shape[:2]
    out = np.zeros(grid)
    for y in range(h):
        for x in range(w):
            block = panel[
                y * height // h + 2 : (y + 1) * height // h - 2, x * width // w + 2 : (x + 1) * width // w - 2
            ]
            colours = block.reshape(-1, 1, 3).astype(float)
            index = ((colours - table[None]) ** 2).sum(-1).argmin(-1)
            out[y, x] = np.median(index) / 255
    return out


def test_clicks_repaint_and_draw_the_rows_attend_returns(app_url, chromium):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    table = _viridis()
    with open_app(app_url, chromium) as page:
        before = page.inner_html("#heatmaps")
        page.locator("#opacity input[type=number]").fill("1")
        page.locator("#opacity input[type=number]").press("Enter")
        page.wait_for_function("prev => document.querySelector('#heatmaps').innerHTML !== prev", arg=before)
        seen = []
        for fx, fy in ((0.33, 0.42), (0.68, 0.62)):
            box = page.locator("#input-image img").bounding_box()
            seen.append(click_and_wait(page, box["width"] * fx, box["height"] * fy))
            y, x = clicked_pixel(page)
            _, rows = client.predict(None, "ddpm-faces", 250, x, y, "mean", 0, api_name="/attend")
            layers = {layer["name"]: layer for layer in rows["layers"]}
            drawn = panels(page)
            assert [name for name, _ in drawn] == list(layers)
            for name, uri in drawn:
                values = np.array(layers[name]["values"])
                decoded = _drawn_values(_decode(uri), values.shape, table)
                np.testing.assert_allclose(decoded, values / values.max(), atol=3 / 255, err_msg=name)
                assert np.unravel_index(decoded.argmax(), values.shape) == np.unravel_index(
                    values.argmax(), values.shape
                )
        assert seen[0] != seen[1]
        page.locator("#opacity input[type=number]").fill("0.65")
        page.locator("#opacity input[type=number]").press("Enter")
        page.wait_for_timeout(500)
        page.screenshot(path=str(ASSETS / "screenshot-app.png"))
