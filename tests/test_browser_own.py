"""Your own text-conditioned model in a real browser: ``spatial-attn serve --model FOLDER`` on a tiny
Stable-Diffusion-shaped pipeline, a prompt typed and entered, a click, a token chosen; the bars drawn
are the cross-attention rows ``/attend`` returns for the same pixel and prompt."""

from __future__ import annotations

import re
import socket

import numpy as np
import pytest
import tiny_models
from browser import click_and_wait, clicked_pixel, find_chromium, open_app

from spatial_attn import cli
from spatial_attn.app import DEFAULT_TIMESTEP

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def sd_url(tmp_path_factory):
    import spatial_attn.app as app

    folder = tiny_models.sd_pipeline(tmp_path_factory.mktemp("own") / "tiny-sd")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demos = []
    real_launch = app.launch
    with pytest.MonkeyPatch.context() as mp:  # the CLI's own path, kept from blocking
        mp.setattr(
            app,
            "launch",
            lambda m, **kw: demos.append(real_launch(m, prevent_thread_lock=True, quiet=True, **kw)),
        )
        assert cli.main(["serve", "--port", str(port), "--model", str(folder)]) == 0
    yield f"http://127.0.0.1:{port}/"
    demos[0].close()


def test_prompt_click_and_token_in_the_browser(sd_url):
    from gradio_client import Client

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
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
            row = np.array(
                layer["values"]
            )  # start, a, red, cat, end x 8
            drawn = [float(v) for v in re.findall(r'data-value="([0-9.]+)"', chart)]
            np.testing.assert_allclose(drawn, [*row[:4], row[4:].sum()], atol=1e-5)
        page.locator("#token label", has_text="red").click()
        page.wait_for_function(
            "() => { const caps = [...document.querySelectorAll('#token-maps figcaption')];"
            " return caps.length === 4 && caps.every(f => f.innerText.includes('· red ·')); }",
            timeout=30_000,
        )
