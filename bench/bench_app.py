"""App latency benchmarks (issue 5), printed as a table.

    python bench/bench_app.py            # server side and in the browser (needs Debian's chromium)
    python bench/bench_app.py --server   # server side only

1. Server side, per bundled model: one click -> every layer's row read and its panel rendered and
   encoded as the app sends it (goal <= 20 ms), beside the model run that a click never repeats.
2. In Chromium (Playwright): click on the image -> heatmaps repainted, median and 90th percentile over
   20 clicks (goal <= 200 ms median).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_capture import median_time, print_table  # noqa: E402

from spatial_attn.analysis.explore import View  # noqa: E402
from spatial_attn.app.blocks import Library, Session, default_image, draw, run  # noqa: E402


def bench_server() -> list[tuple[str, str, str, str]]:
    library = Library()
    source, note = default_image()
    rows = []
    for name in library.choices():
        if name.endswith("(untrained)"):
            continue
        t_run = median_time(lambda name=name: run(library, name, 250, 0, source, note), 5)
        session = run(library, name, 250, 0, source, note)
        points = [(y, x) for y in range(0, 32, 5) for x in range(0, 32, 7)]
        clicks = iter(points * 100)

        def click(session: Session = session, clicks=clicks) -> None:
            session.point = next(clicks)
            draw(session, View())

        t_click = median_time(click, 30)
        layers = len(session.exploration.layers)
        rows.append(
            (
                f"{name}: click -> {layers} panel{'s' * (layers > 1)} rendered (server)",
                f"{t_click * 1e3:.1f} ms",
                f"model run (once per image) {t_run * 1e3:.0f} ms",
                "goal <= 20 ms",
            )
        )
    return rows


def bench_browser(clicks: int = 20) -> list[tuple[str, str, str, str]]:
    from browser import click_and_wait, find_chromium, open_app

    from spatial_attn.app.blocks import launch

    chromium = find_chromium()
    if chromium is None:
        return [("browser click -> repaint", "skipped", "Debian's chromium is not installed", "")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch("ddpm-faces", port=port, prevent_thread_lock=True, quiet=True)
    times = []
    try:
        with open_app(f"http://127.0.0.1:{port}/", chromium) as page:
            box = page.locator("#input-image img").bounding_box()
            for i in range(clicks + 1):
                fx, fy = 0.1 + 0.8 * ((i * 7) % 11) / 10, 0.1 + 0.8 * ((i * 3) % 7) / 6
                start = time.perf_counter()
                click_and_wait(page, box["width"] * fx, box["height"] * fy)
                if i:  # the first click warms the browser up
                    times.append(time.perf_counter() - start)
    finally:
        demo.close()
    p90 = statistics.quantiles(times, n=10)[-1]
    return [
        (
            f"ddpm-faces in Chromium: click -> heatmaps repainted ({clicks} clicks)",
            f"median {statistics.median(times) * 1e3:.0f} ms",
            f"90th percentile {p90 * 1e3:.0f} ms",
            "goal <= 200 ms median",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="store_true", help="skip the browser measurement")
    args = parser.parse_args()
    rows = bench_server()
    if not args.server:
        rows += bench_browser()
    print_table(rows)


if __name__ == "__main__":
    main()
