"""Your own text-conditioned model in a real browser: ``spatial-attn serve --model FOLDER`` on a tiny
Stable-Diffusion-shaped pipeline, a prompt typed and entered, a click, a token chosen; the bars drawn
are the cross-attention rows ``/attend`` returns for the same pixel and prompt."""

from __future__ import annotations

import re
import socket

import numpy as np
import pytest
import tiny_models
from browser import click_and_wait, clicked_pixel, open_app

from spatial_attn import cli
from spatial_attn.app.blocks import DEFAULT_TIMESTEP

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _serve(*folders) -> tuple[str, object]:
    """``spatial-attn serve --model ...`` through the CLI's own path, kept from blocking."""
    import spatial_attn.app.blocks as app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demos = []
    real_launch = app.launch
    args = ["serve", "--port", str(port)]
    for folder in folders:
        args += ["--model", str(folder)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            app,
            "launch",
            lambda m, **kw: demos.append(real_launch(m, prevent_thread_lock=True, quiet=True, **kw)),
        )
        assert cli.main(args) == 0
    return f"http://127.0.0.1:{port}/", demos[0]


@pytest.fixture(scope="module")
def sd_url(tmp_path_factory):
    url, demo = _serve(tiny_models.sd_pipeline(tmp_path_factory.mktemp("own") / "tiny-sd"))
    yield url
    demo.close()


def test_a_transformers_folder_opens_first_and_a_click_lands_on_its_cropped_input(tmp_path, chromium):
    from gradio_client import Client

    url, demo = _serve(
        tiny_models.vit_classifier(tmp_path / "vit"), tiny_models.ddpm_pipeline(tmp_path / "ddpm")
    )
    try:
        with open_app(url, chromium) as page:
            assert page.input_value("#model input") == "vit"
            assert "centre-cropped to 64x64" in page.inner_text("#input-note")
            box = page.locator("#input-image img").bounding_box()
            click_and_wait(page, box["width"] * 0.3, box["height"] * 0.6)
            y, x = clicked_pixel(page)
            # 30% across and 60% down the picture of the 64 px input the model saw (shown at 384 px)
            assert abs(y - 0.6 * 64) <= 1 and abs(x - 0.3 * 64) <= 1
            names = page.eval_on_selector_all(
                "#heatmaps figure.sa-panel", "els => els.map(e => e.dataset.layer)"
            )
        _, rows = Client(url, verbose=False).predict(None, "vit", 0, 16, 16, "mean", 0, api_name="/attend")
        assert (
            names
            == [layer["name"] for layer in rows["layers"]]
            == ["vit.layers.0.attention", "vit.layers.1.attention"]
        )
    finally:
        demo.close()


def test_prompt_click_and_token_in_the_browser(sd_url, chromium):
    from gradio_client import Client

    client = Client(sd_url, verbose=False)
    with open_app(sd_url, chromium, viewport=(1280, 1400)) as page:
        page.locator("#prompt textarea").fill("a red cat")
        page.locator("#prompt textarea").press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#token-bars')?.innerText.includes('red')", timeout=60_000
        )
        box = page.locator("#input-image img").bounding_box()
        click_and_wait(page, box["width"] * 0.3, box["height"] * 0.7)
        y, x = clicked_pixel(page)
        page.wait_for_function(
            "p => document.querySelector('#token-bars [data-pixel]')?.dataset.pixel === p", arg=f"{y},{x}"
        )
        bars = page.inner_html("#token-bars")
        _, rows = client.predict(
            None, "tiny-sd", DEFAULT_TIMESTEP, x, y, "mean", 0, "a red cat", api_name="/attend"
        )
        cross = [layer for layer in rows["layers"] if layer["key_grid"] is None]
        charts = bars.split('class="sa-bars"')[1:]
        assert len(charts) == len(cross) == 4
        for layer, chart in zip(cross, charts, strict=True):
            assert f'data-layer="{layer["name"]}"' in chart
            row = np.array(layer["values"])  # start, a, red, cat, end x 8
            drawn = [float(v) for v in re.findall(r'data-value="([0-9.]+)"', chart)]
            np.testing.assert_allclose(drawn, [*row[:4], row[4:].sum()], atol=1e-5)
        page.locator("#token label", has_text="red").click()
        page.wait_for_function(
            "() => { const caps = [...document.querySelectorAll('#token-maps figcaption')];"
            " return caps.length === 4 && caps.every(f => f.innerText.includes('· red ·')); }",
            timeout=30_000,
        )
        page.locator("#token-film-run").click()  # 4 timesteps by default, each re-running the model
        page.wait_for_function(
            "() => document.querySelectorAll('#token-film .sa-token-film-row').length === 4"
            " && document.querySelectorAll('#token-film figure').length === 16",
            timeout=60_000,
        )
