"""The page as an instrument (issue 21), in Chromium: every layer on one screen at 1280x800 (and a
12-layer ViT at 1920x1080), the arrow keys moving the pinned pixel with every panel following, the
lesson walking through its steps, and a phone (390x844) where a tap pins and the panels come right
under the image.
"""

from __future__ import annotations

import itertools
import json

import pytest
import tiny_models
from browser import PANELS, click_and_wait, clicked_pixel, open_app
from test_browser import shots  # noqa: F401  (a fixture; chromium is conftest's)
from test_browser_own import _serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Every map and the input image, as boxes: [top, bottom, left, right, width] in CSS px.
BOXES = """() => [...document.querySelectorAll('#input-image img, #heatmaps figure.sa-panel canvas.sa-map')]
    .map(e => { const r = e.getBoundingClientRect(); return [r.top, r.bottom, r.left, r.right, r.width]; })"""
#: The pixel the server's panels are for (in their payload), and every figure's pixel as drawn.
PIXELS = f"""() => [JSON.parse(document.querySelector('{PANELS}').dataset.payload).pixel.join(','),
    ...[...document.querySelectorAll('{PANELS} figure.sa-panel')].map(f => f.dataset.pixel)]"""


def _all_on_screen(page, width: int, height: int) -> list[list[float]]:
    """The boxes of the image and every map, each asserted inside the viewport and >= 128 px wide
    (once the input image has loaded: under load the panels can be painted before it is)."""
    page.wait_for_function(
        "() => { const i = document.querySelector('#input-image img'); return i && i.complete"
        " && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0; }",
        timeout=30_000,
    )
    boxes = page.evaluate(BOXES)
    for top, bottom, left, right, w in boxes:
        assert top >= 0 and bottom <= height and left >= 0 and right <= width, boxes
        assert w >= 128, boxes
    return boxes


def test_every_ddpm_layer_and_the_image_are_on_a_laptop_screen(app_url, chromium):
    with open_app(app_url, chromium, viewport=(1280, 800)) as page:
        boxes = _all_on_screen(page, 1280, 800)
        assert len(boxes) == 1 + 7
        assert page.evaluate("() => window.scrollY") == 0
        # no two tick labels of a colorbar touch (narrow bars hide some, never the ends)
        for ticks in page.eval_on_selector_all(
            f"{PANELS} .sa-ticks",
            "els => els.map(e => [...e.children].filter(s => getComputedStyle(s).visibility !== 'hidden')"
            "  .map(s => { const r = s.getBoundingClientRect(); return [r.left, r.right, s.textContent]; }))",
        ):
            assert ticks[0][2] == "1/16×" and ticks[-1][2] == "16×" and len(ticks) >= 3
            assert all(a[1] + 2 <= b[0] for a, b in itertools.pairwise(ticks)), ticks


def test_a_twelve_layer_vit_fits_a_full_hd_screen(tmp_path, chromium):
    url, demo = _serve(tiny_models.vit_classifier(tmp_path / "vit12", layers=12, size=224))
    try:
        with open_app(url, chromium, viewport=(1920, 1080)) as page:
            assert len(_all_on_screen(page, 1920, 1080)) == 1 + 12
    finally:
        demo.close()


def test_more_layers_than_fit_scroll_inside_the_panels_not_the_page(app_url, chromium):
    with open_app(app_url, chromium, viewport=(1280, 560)) as page:
        panels = page.locator(PANELS)
        scrolls = panels.evaluate("e => [e.scrollHeight > e.clientHeight, getComputedStyle(e).overflowY]")
        assert scrolls == [True, "auto"]
        bottom = panels.evaluate("e => e.getBoundingClientRect().bottom")
        assert bottom <= 560


def test_arrow_keys_move_the_pin_and_every_panel_follows(app_url, chromium):
    with open_app(app_url, chromium) as page:
        box = page.locator("#input-image img").bounding_box()
        click_and_wait(page, box["width"] * 0.5, box["height"] * 0.5)
        y, x = clicked_pixel(page)
        page.mouse.move(0, 0)  # off the image: the panels show the pin
        focused = page.evaluate(
            "() => { const e = document.activeElement; return [Boolean(e.closest('#input-image')),"
            " getComputedStyle(e).outlineStyle]; }"
        )
        assert focused[0] and focused[1] != "none"  # the click left the focus on the image, shown
        for key, (dy, dx) in (("ArrowRight", (0, 1)), ("ArrowDown", (1, 0)), ("Shift+ArrowLeft", (0, -4))):
            y, x = y + dy, x + dx
            page.keyboard.press(key)
            page.wait_for_function(  # the panels follow at once, then the server's answer pins it
                f"p => ({PIXELS})().every(v => v === p)", arg=f"{y},{x}", timeout=30_000
            )
            assert page.locator("#input-image .sa-marker").get_attribute("data-pixel") == f"{y},{x}"
            status = page.locator("#sa-pin")
            assert status.get_attribute("aria-live") == "polite"
            assert f"({y}, {x})" in status.inner_text()
        for _ in range(12):  # the edge holds
            page.keyboard.press("Shift+ArrowUp")
        page.wait_for_function(f"p => ({PIXELS})().every(v => v === p)", arg=f"0,{x}", timeout=30_000)


def test_a_phone_taps_to_pin_and_sees_the_panels_under_the_image(app_url, chromium, shots):  # noqa: F811
    with open_app(app_url, chromium, viewport=(390, 844), has_touch=True, is_mobile=True) as page:
        intro = page.locator("#intro").inner_text()
        assert "tap the image" in intro and "move the mouse" not in intro
        image = page.locator("#input-image img").bounding_box()
        first = page.locator(f"{PANELS} figure canvas.sa-map").first.bounding_box()
        assert image["y"] + image["height"] <= first["y"] <= image["y"] + image["height"] + 160
        assert first["width"] >= 128 and first["x"] + first["width"] <= 390
        before = page.get_attribute(PANELS, "data-payload")
        page.locator("#input-image img").tap(position={"x": image["width"] * 0.7, "y": image["height"] * 0.3})
        page.wait_for_function(
            "([sel, prev]) => document.querySelector(sel).dataset.payload !== prev", arg=[PANELS, before]
        )
        y, x = clicked_pixel(page)
        assert abs(y - 0.3 * 32) <= 1 and abs(x - 0.7 * 32) <= 1
        page.screenshot(path=str(shots / "screenshot-phone.png"))
        page.locator("#explain").get_by_text("what the panels show").click()
        page.wait_for_selector("#explanation td", state="visible")  # the accordion opens after the click
        cells = page.eval_on_selector_all("#explanation td", "els => els.map(e => e.clientWidth)")
        assert cells and min(cells) >= 40  # the table scrolls sideways rather than crushing its cells


def test_the_lesson_walks_through_its_steps_on_the_live_page(app_url, chromium, shots):  # noqa: F811
    from spatial_attn.app.views.lesson import STEPS

    with open_app(app_url, chromium) as page:
        page.locator("#lesson").get_by_text("lesson: how an attention map").click()
        lesson = page.locator(".sa-lesson")
        lesson.locator("h3").get_by_text("1 / 7").wait_for()
        assert float(lesson.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 20  # a projector
        y, x = clicked_pixel(page)  # the default pin: (13, 9), in down_blocks.1's 16x16 grid cell (6, 4)
        seen = []
        for k, step in enumerate(STEPS, start=1):
            if k > 1:
                lesson.locator(".sa-lesson-next").click()
            page.wait_for_function(
                "k => document.querySelector('.sa-lesson').dataset.step === String(k)", arg=k
            )
            text = lesson.locator(".sa-lesson-text").inner_text()
            assert step.title in lesson.locator("h3").inner_text() and "{" not in text, text
            selected = page.locator("#views [role=tab][aria-selected=true]").first.inner_text()
            assert selected.strip() == step.tab
            page.wait_for_function(  # the step outlines what it is about
                "() => [...document.querySelectorAll('*')].some(e => e.style.outline.includes('4px'))"
            )
            seen.append(text)
            if k == 2:
                assert f"pixel ({y}, {x})" in text and "token i = 6·16 + 4 = 100" in text
                page.screenshot(path=str(shots / "screenshot-lesson.png"))
        assert lesson.locator(".sa-lesson-next").is_disabled() and len(set(seen)) == len(STEPS)
        lesson.locator(".sa-lesson-prev").click()
        page.wait_for_function("() => document.querySelector('.sa-lesson').dataset.step === '6'")


def test_a_row_of_the_mechanics_matrix_pins_its_pixel(app_url, chromium):
    with open_app(app_url, chromium) as page:
        page.get_by_role("tab", name="how a row is made").click()
        matrix = page.locator("#mechanics img.sa-pick")
        matrix.wait_for(timeout=60_000)
        pixels = json.loads(matrix.get_attribute("data-pixels"))  # 64 rows of 4 tokens: 16x16 queries
        top = int(matrix.get_attribute("data-top"))
        row = 40
        matrix.click(position={"x": 60, "y": (row + 0.5) * top / len(pixels)})
        y, x = pixels[row]
        page.wait_for_function(f"p => ({PIXELS})().every(v => v === p)", arg=f"{y},{x}", timeout=30_000)
        page.wait_for_function(  # the tab follows: the row clicked is now the pinned token's
            "t => document.querySelector('#mechanics').innerHTML.includes(`= <b>${t}</b>`)", arg=row * 4
        )
        assert "one head: head 0" in page.locator("#mechanics .sa-which").inner_text()


def test_compare_puts_a_beside_b_each_panel_with_its_colorbar(app_url, chromium):
    with open_app(app_url, chromium) as page:
        page.get_by_role("tab", name="compare").click()
        page.locator("#compare-run").click()
        page.wait_for_selector('#compare [data-model="ddpm-faces (untrained)"] img', timeout=60_000)
        a, b = (
            page.locator(f'#compare [data-model="{m}"]') for m in ("ddpm-faces", "ddpm-faces (untrained)")
        )
        box_a, box_b = a.bounding_box(), b.bounding_box()
        assert box_a["x"] + box_a["width"] <= box_b["x"] and abs(box_a["y"] - box_b["y"]) < 2  # A beside B
        assert page.locator("#compare figure img.sa-bar").count() == 2 * 7
        alts = page.eval_on_selector_all("#compare img.sa-bar", "els => els.map(e => e.alt)")
        assert all("× uniform (1× = 1/" in alt for alt in alts)
