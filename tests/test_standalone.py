"""The export's index.html and ``sa.show``: one self-contained page, opened from ``file://`` with every
request that is not the file itself refused, follows the mouse with the app's own panels, and the
rows it computes are the export's (rows.npy) at the exported pixel and softmax(q k^T) elsewhere."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from browser import CHROMIUM_ARGS, WAIT_PIXEL
from PIL import Image

import spatial_attn as sa
from spatial_attn.analysis.explore import Exploration, View
from spatial_attn.analysis.export import export_zip
from spatial_attn.models import load_model

PIXEL = (13, 9)


@pytest.fixture(scope="module")
def ddpm() -> Exploration:
    from spatial_attn.app.blocks import default_image

    return Exploration(load_model("ddpm-faces"), default_image()[0], timestep=250, seed=0)


@pytest.fixture(scope="module")
def exported(ddpm, tmp_path_factory):
    """The export's zip unpacked: its index.html, rows.json and rows/*.npy."""
    folder = tmp_path_factory.mktemp("export")
    zipfile.ZipFile(io.BytesIO(export_zip(ddpm, PIXEL, View()))).extractall(folder)
    return folder


def test_the_page_is_one_file_that_asks_for_nothing(exported):
    page = (exported / "index.html").read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # images are data URIs; no links
    assert "fetch(" not in page and "XMLHttpRequest" not in page and "import(" not in page
    assert 'id="input-image"' in page and 'class="sa-panel"' in page


def _reference_row(layer, cell) -> np.ndarray:
    """Head mean of softmax(q_i k^T), from the stored q and k, on the key grid."""
    q, k = layer.q[0].double(), layer.k[0].double()
    i = layer.queries.token(*cell)
    return torch.softmax(torch.einsum("hd,hnd->hn", q[:, i], k), -1).mean(0).numpy()


def _open_offline(p, chromium: str, url: str):
    """A page at ``url`` in which every request but the file itself is aborted (and recorded)."""
    browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    refused: list[str] = []
    errors: list[str] = []

    def route(r):
        if r.request.url == url:
            return r.continue_()
        refused.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return browser, page, refused, errors


@pytest.mark.browser
@pytest.mark.slow
def test_hovering_the_exported_page_repaints_every_panel_offline(ddpm, exported, chromium):
    from playwright.sync_api import sync_playwright

    described = json.loads((exported / "rows.json").read_text())
    url = (exported / "index.html").as_uri()
    with sync_playwright() as p:
        browser, page, refused, errors = _open_offline(p, chromium, url)
        try:
            page.goto(url)
            page.wait_for_function("() => window.saReady && window.saReady()", timeout=20_000)
            figures = page.eval_on_selector_all(
                "#heatmaps figure.sa-panel", "els => els.map(e => e.dataset.layer)"
            )
            assert figures == [layer.name for layer in ddpm.layers]
            box = page.locator("#input-image img").bounding_box()
            for y, x in ((0, 0), (20, 27), (31, 5)):  # model pixels: 12 display px each
                page.mouse.move(box["x"] + 12 * x + 6, box["y"] + 12 * y + 6)
                page.wait_for_function(WAIT_PIXEL, arg=f"{y},{x}", timeout=10_000, polling="raf")
                for mine, layer in zip(
                    page.evaluate("p => window.saRows(...p)", [y, x]), ddpm.layers, strict=True
                ):
                    cell = tuple(mine["cell"])
                    np.testing.assert_allclose(mine["values"], _reference_row(layer, cell), atol=1e-3)
            # at the exported pixel, the page's rows are the export's own arrays
            for mine, entry in zip(
                page.evaluate("p => window.saRows(...p)", list(PIXEL)), described["layers"], strict=True
            ):
                assert mine["name"] == entry["name"] and mine["cell"] == entry["cell"]
                saved = np.load(exported / entry["file"]).ravel()
                np.testing.assert_allclose(mine["values"], saved, atol=1e-3, err_msg=entry["name"])
            page.mouse.move(box["x"] + box["width"] + 300, box["y"])  # off the image: the exported pixel
            page.wait_for_function(WAIT_PIXEL, arg=f"{PIXEL[0]},{PIXEL[1]}", timeout=10_000)
        finally:
            browser.close()
    assert refused == [] and errors == []


def test_show_needs_no_gradio_and_renders_the_same_page():
    """``sa.show`` on a capture of the user's own: the page inside an iframe's srcdoc, with the panels of
    the captured layers; importing and calling it loads no gradio."""
    code = """
import sys, torch, numpy as np
import spatial_attn as sa
from torch import nn
torch.manual_seed(0)
mha = nn.MultiheadAttention(8, 2, batch_first=True)
x = torch.randn(1, 16, 8)
with torch.no_grad(), sa.capture(mha, grid=(4, 4)) as cap:
    mha(x, x, x)
shown = sa.show(cap, image=np.zeros((32, 32, 3), np.uint8), pixel=(5, 30))
html = shown._repr_html_()
assert html.startswith('<iframe srcdoc="') and 'figure class=&quot;sa-panel&quot;' in html, html[:300]
print(sorted({'gradio', 'diffusers'} & set(sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_show_on_a_model_or_a_run_titles_the_page_as_the_export(ddpm, tmp_path):
    shown = sa.show(ddpm, pixel=PIXEL)
    assert "ddpm-faces · t = 250 · seed 0 · pixel (y, x) = (13, 9)" in shown.html
    assert shown.html == sa.show(ddpm, pixel=PIXEL, head="mean").html  # one page per request
    vit = sa.show(load_model("vit-faces"), Image.new("RGB", (64, 48), (200, 90, 40)), head="max")
    assert "vit-faces" in vit.html and vit.html.count('class="sa-panel"') == 4
    shown.save(str(tmp_path / "page.html"))
    assert (tmp_path / "page.html").read_text() == shown.html
    with pytest.raises(ValueError, match="outside the 32x32 image"):
        sa.show(ddpm, pixel=(32, 0))
    with pytest.raises(ValueError, match="pass image="):
        sa.show([layer for layer in ddpm.layers])


def test_a_capture_is_drawn_only_over_the_picture_its_forward_saw(ddpm):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        Exploration.captured(ddpm.layers, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="show takes a model run, a bundled model or a capture"):
        sa.show("ddpm-faces")
