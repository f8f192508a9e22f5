"""How much of the model is on screen (issue 21): for each viewport, how many heatmap maps and whether
the input image lie wholly inside it without scrolling, and how wide the maps are.

    python bench/bench_layout.py

Cases: ddpm-faces (7 layers) at 1280x800, 1920x1080 and 390x844 (a phone), and a 12-layer ViT
(transformers, 224 px, 14x14 patches, random weights made here) at 1920x1080. Goal (issue 21): every
DDPM map and the image at 1280x800, each map >= 128 px wide; the 12-layer ViT at 1920x1080.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_capture import print_table  # noqa: E402
from browser import find_chromium, open_app, served_app  # noqa: E402

#: [maps on screen, maps, image on screen, narrowest map px] in the viewport as the page opens.
SEEN = """() => {
  const inside = e => { const r = e.getBoundingClientRect();
    return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth; };
  const maps = [...document.querySelectorAll('#heatmaps figure.sa-panel canvas.sa-map')];
  return [maps.filter(inside).length, maps.length, inside(document.querySelector('#input-image img')),
    Math.min(...maps.map(m => m.getBoundingClientRect().width))];
}"""


def _row(name: str, url: str, chromium: str, viewport: tuple[int, int], **context) -> tuple[str, ...]:
    with open_app(url, chromium, viewport=viewport, **context) as page:
        seen, total, image, narrowest = page.evaluate(SEEN)
    return (
        f"{name} at {viewport[0]}x{viewport[1]}",
        f"{seen} of {total} maps on screen",
        f"image {'on screen' if image else 'NOT on screen'}",
        f"narrowest map {narrowest:.0f} px",
    )


def bench_layout() -> list[tuple[str, ...]]:
    chromium = find_chromium()
    if chromium is None:
        return [("layout", "skipped", "Debian's chromium is not installed", "")]
    rows = []
    with served_app("ddpm-faces") as url:
        rows.append(_row("ddpm-faces", url, chromium, (1280, 800)))
        rows.append(_row("ddpm-faces", url, chromium, (1920, 1080)))
        rows.append(_row("ddpm-faces (phone)", url, chromium, (390, 844), has_touch=True, is_mobile=True))
    try:
        import tiny_models  # transformers: a 12-layer ViT, as a folder served with --model
    except ImportError:
        return rows
    from spatial_attn.cli import open_models

    with tempfile.TemporaryDirectory() as folder:
        spec = str(tiny_models.vit_classifier(Path(folder) / "vit12", layers=12, size=224))
        with served_app(open_models([[spec, None]])) as url:
            rows.append(_row("ViT, 12 layers", url, chromium, (1920, 1080)))
    return rows


def main() -> None:
    print_table(bench_layout())


if __name__ == "__main__":
    main()
