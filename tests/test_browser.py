"""The app in a real browser (Debian's Chromium, driven by Playwright): clicks repaint the heatmaps,
and what is drawn is the rows that ``/attend`` returns for the same pixel."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from browser import PANELS, click_and_wait, clicked_pixel, find_chromium, open_app, panels
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
OPACITY = 0.65  # the app's default heatmap opacity
DEFAULT_FACE = ASSETS / "faces" / "valid-0.png"  # the app opens on the first valid example


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
                y * height // h + 2 : (y + 1) * height // h - 2, x * width // w + 2 : (x + 1) * width // w - 2
            ]
            index = ((block.reshape(-1, 1, 3) - table[None]) ** 2).sum(-1).argmin(-1)
            out[y, x] = np.median(index) / 255
    return out


def test_clicks_repaint_and_draw_the_rows_attend_returns(app_url, chromium):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    table = _viridis()
    with open_app(app_url, chromium) as page:
        seen = []
        for fx, fy in ((0.33, 0.42), (0.68, 0.62)):
            box = page.locator("#input-image img").bounding_box()
            seen.append(click_and_wait(page, box["width"] * fx, box["height"] * fy))
            y, x = clicked_pixel(page)  # from the same HTML as the panels
            _, rows = client.predict(None, "ddpm-faces", 250, x, y, "mean", 0, api_name="/attend")
            layers = {layer["name"]: layer for layer in rows["layers"]}
            drawn = panels(page)
            assert [name for name, _ in drawn] == list(layers)
            for name, uri in drawn:
                values = np.array(layers[name]["values"])
                panel = _decode(uri)
                decoded = _drawn_values(panel, values.shape, _base(panel.shape[:2]), table)
                np.testing.assert_allclose(
                    decoded, values / values.max(), atol=4 / 255, err_msg=f"{name} {y, x}"
                )
                brightest = np.unravel_index(decoded.argmax(), values.shape)
                assert values[brightest] >= values.max() - 4 / 255 * values.max()
        assert seen[0] != seen[1]
        page.screenshot(path=str(ASSETS / "screenshot-app.png"))
        before = page.eval_on_selector(PANELS, "e => e.outerHTML")
        page.get_by_label("layers × heads").check()
        page.wait_for_function(
            "([sel, prev]) => document.querySelector(sel).outerHTML !== prev", arg=[PANELS, before]
        )
        assert page.locator("#heatmaps figure").count() == len(drawn)
        page.locator("#heatmaps").screenshot(path=str(ASSETS / "screenshot-heads.png"))
