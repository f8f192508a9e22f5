"""Driving Debian's Chromium with Playwright: shared by the browser tests and the browser benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """Debian's Chromium; under CI=true it is installed with apt when missing."""
    path = shutil.which("chromium")
    if path is None and os.environ.get("CI") == "true":
        subprocess.run(
            "apt-get update -q && apt-get install -y -q chromium",
            shell=True,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        path = shutil.which("chromium")
    return path


@contextmanager
def served_app(model: Any = "ddpm-faces") -> Iterator[str]:
    """The app serving ``model`` (a name, your own model, or a list: see ``launch``) on a free local
    port: its URL, until the block ends."""
    import socket

    from spatial_attn.app.blocks import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(model, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextmanager
def open_app(
    url: str, chromium: str, viewport: tuple[int, int] = (1280, 800), **context: Any
) -> Iterator[Any]:
    """A page showing the app, once its first heatmaps are painted and it can follow the mouse;
    ``context`` is passed to Playwright's ``new_page`` (a phone: ``has_touch=True, is_mobile=True``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, **context)
        page.goto(url)
        page.wait_for_selector(f"{PANELS} figure .sa-stats:not(:empty)", timeout=60_000)
        page.wait_for_function("() => window.saReady && window.saReady()", timeout=30_000)  # hover data in
        try:
            yield page
        finally:
            browser.close()


PANELS = "#heatmaps .sa-panels"  # the panels alone: #heatmaps also holds Gradio's status tracker


def click_and_wait(page: Any, x: float, y: float) -> str:
    """Click the input image at CSS position (x, y); return the panels' HTML once the server's
    answer has replaced it (the payload changes with the click, even when hover already showed it)."""
    before = page.eval_on_selector(PANELS, "e => e.dataset.payload")
    page.locator("#input-image img").click(position={"x": x, "y": y})
    page.wait_for_function(
        "([sel, prev]) => { const e = document.querySelector(sel); return e && e.dataset.payload !== prev; }",
        arg=[PANELS, before],
        timeout=30_000,
    )
    return page.eval_on_selector(PANELS, "e => e.outerHTML")


def image_pixel(page: Any, fx: float, fy: float) -> tuple[float, float]:
    """Page coordinates of the point at fractions (fx, fy) of the input image."""
    box = page.locator("#input-image img").bounding_box()
    return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy


WAIT_PIXEL = """pixel => [...document.querySelectorAll('#heatmaps figure.sa-panel')]
    .every(f => f.dataset.pixel === pixel)"""


def hover_and_wait(page: Any, x: float, y: float, pixel: str, timeout: float = 30_000) -> None:
    """Move the mouse to page position (x, y); return once every panel shows model pixel ``"y,x"``."""
    page.mouse.move(x, y)
    page.wait_for_function(WAIT_PIXEL, arg=pixel, timeout=timeout, polling="raf")


def clicked_pixel(page: Any) -> tuple[int, int]:
    """The model-input pixel (y, x) the panels on screen are for (the same HTML as the panels)."""
    y, x = page.get_attribute(PANELS, "data-pixel").split(",")
    return int(y), int(x)


def panels(page: Any) -> list[tuple[str, str]]:
    """(layer name, PNG data URI of its first map's canvas) of every heatmap panel."""
    return page.eval_on_selector_all(
        f"{PANELS} figure",
        "els => els.map(e => [e.dataset.layer, e.querySelector('canvas.sa-map').toDataURL('image/png')])",
    )
