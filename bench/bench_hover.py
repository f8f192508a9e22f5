"""Hover latency in Chromium (issue 11): mouse move over the image -> every panel shows the new pixel.

    python bench/bench_hover.py [--moves 100] [--model ddpm-faces] [--standalone]

``--standalone`` measures the export's ``index.html`` instead of the app: opened from ``file://``, every
other request aborted, the rows computed from the queries and keys embedded in the file.

Each move goes to a model pixel other than the last one, and counts as done when every panel's
``data-pixel`` names the new pixel. Two clocks, both printed:

* end to end, from Python: ``page.mouse.move`` until Playwright sees every panel updated (this
  includes Playwright's own round trips to the browser, two per move);
* in the page: the ``mousemove`` event's time stamp until the frame after every panel was updated
  (rows computed, canvases drawn, attributes set, and one animation frame for the paint).

Goal (issue 11): median <= 33 ms and 95th percentile <= 50 ms on ddpm-faces (7 layers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_capture import print_table  # noqa: E402
from browser import CHROMIUM_ARGS, WAIT_PIXEL, find_chromium, open_app, served_app  # noqa: E402

from spatial_attn.engine.grid import cell_at  # noqa: E402

# Installed before any move: when the figures' data-pixel all equal the pixel asked for, note the time
# of the next animation frame (the paint), measured from the mousemove event's own time stamp.
PROBE = """pixel => { window.saProbe = new Promise(done => {
    const start = { t: null };
    const onMove = e => { start.t = e.timeStamp; };
    document.addEventListener('mousemove', onMove, { capture: true, once: true });
    const check = () => {
        const figures = [...document.querySelectorAll('#heatmaps figure.sa-panel')];
        if (start.t !== null && figures.every(f => f.dataset.pixel === pixel)) {
            requestAnimationFrame(() => done(performance.now() - start.t));
        } else {
            setTimeout(check, 0);
        }
    };
    check();
}); }"""


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def bench_hover(model: str, moves: int, standalone: bool = False) -> list[tuple[str, str, str, str]]:
    chromium = find_chromium()
    if chromium is None:
        return [("hover", "skipped", "Debian's chromium is not installed", "")]
    if standalone:
        with exported_page(model) as url, open_offline(url, chromium) as page:
            return measure(page, f"{model} standalone index.html", moves)
    with served_app(model) as url, open_app(url, chromium) as page:
        return measure(page, model, moves)


def measure(page: Any, what: str, moves: int) -> list[tuple[str, str, str, str]]:
    """Move the mouse ``moves`` times over the image of ``page`` and time each repaint."""
    from spatial_attn.app.blocks import DISPLAY

    end_to_end, in_page = [], []
    box = page.locator("#input-image img").bounding_box()
    layers = page.locator("#heatmaps figure.sa-panel").count()
    last = None
    for i in range(moves + 5):  # the first five warm the page up
        fx, fy = 0.05 + 0.9 * ((i * 7) % 19) / 18, 0.05 + 0.9 * ((i * 5) % 13) / 12
        y, x = cell_at((round(fy * DISPLAY), round(fx * DISPLAY)), (DISPLAY, DISPLAY), (32, 32))
        if (y, x) == last:
            continue
        last, pixel = (y, x), f"{y},{x}"
        page.evaluate(PROBE, pixel)
        start = time.perf_counter()
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_function(WAIT_PIXEL, arg=pixel, polling=1)
        took = time.perf_counter() - start
        painted = page.evaluate("() => window.saProbe")
        if i >= 5:
            end_to_end.append(took * 1e3)
            in_page.append(painted)
    return [
        (
            f"{what} ({layers} layers), end to end from Playwright: move -> every data-pixel updated",
            f"median {statistics.median(end_to_end):.1f} ms",
            f"95th percentile {_quantile(end_to_end, 0.95):.1f} ms ({len(end_to_end)} moves)",
            "goal: median <= 33 ms, p95 <= 50 ms",
        ),
        (
            f"{what} ({layers} layers), in the page: mousemove event -> panels updated and painted",
            f"median {statistics.median(in_page):.1f} ms",
            f"95th percentile {_quantile(in_page, 0.95):.1f} ms",
            "",
        ),
    ]


@contextmanager
def exported_page(model: str) -> Iterator[str]:
    """The export's index.html for ``model``'s first click on the default face, as a file:// URL."""
    import io
    import tempfile
    import zipfile

    from spatial_attn.analysis.explore import Exploration, View
    from spatial_attn.analysis.export import export_zip
    from spatial_attn.app.blocks import default_image
    from spatial_attn.models import load_model

    bundled = load_model(model)
    explored = Exploration(bundled, default_image()[0], timestep=250 if bundled.num_timesteps else None)
    with tempfile.TemporaryDirectory() as folder:
        zipped = export_zip(explored, explored.first_point(), View(), ("html",))
        zipfile.ZipFile(io.BytesIO(zipped)).extract("index.html", folder)
        yield (Path(folder) / "index.html").as_uri()


@contextmanager
def open_offline(url: str, chromium: str) -> Iterator[Any]:
    """``url`` in Chromium with every other request aborted, once it can follow the mouse."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.route("**/*", lambda r: r.continue_() if r.request.url == url else r.abort())
        page.goto(url)
        page.wait_for_function("() => window.saReady && window.saReady()", timeout=30_000)
        try:
            yield page
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--model", default="ddpm-faces")
    parser.add_argument("--standalone", action="store_true", help="the export's index.html, offline")
    args = parser.parse_args()
    print_table(bench_hover(args.model, args.moves, args.standalone))


if __name__ == "__main__":
    main()
