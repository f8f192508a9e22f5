"""The serving pieces on their own: the /attend cache's two bounds, the per-session tickets, and the
click event's trigger mode (a click made while one is pending must be sent, not ignored)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spatial_attn.app.serving import Explorations, Tickets, number, whole


def test_the_cache_is_bounded_by_count_and_by_bytes_least_recent_first():
    made: list[str] = []

    def make(key: str, size: int):
        return lambda: made.append(key) or (key, size)

    cache = Explorations(size=lambda entry: entry[1], max_items=2, max_bytes=100)
    cache.get("a", make("a", 10))
    cache.get("b", make("b", 10))
    cache.get("a", make("a", 10))  # a hit: "a" is now the most recent
    cache.get("c", make("c", 10))  # over the count: "b", the least recent, goes
    assert made == ["a", "b", "c"] and len(cache) == 2
    cache.get("a", make("a", 10))
    assert made == ["a", "b", "c"]
    cache.get("d", make("d", 95))  # over the bytes: everything older goes
    assert len(cache) == 1 and cache.nbytes == 95
    cache.get("e", make("e", 500))  # larger than the whole budget: returned, never kept
    assert cache.nbytes == 95 and (cache.hits, cache.misses) == (2, 5)


def test_tickets_show_only_the_latest_event_of_a_live_session():
    tickets = Tickets()
    first = tickets.take()
    second = tickets.take()
    assert not tickets.current(first) and tickets.current(second)
    tickets.retire()
    assert not tickets.current(second)


@pytest.mark.parametrize("value", [True, None, "x", float("nan"), float("inf"), 10**400])
def test_numbers_refuse_what_is_not_a_finite_number(value):
    with pytest.raises(ValueError, match=r"number|required"):
        number(value, "x")


def test_whole_refuses_fractions_instead_of_truncating():
    assert whole(3.0, "t", 0, 9) == 3
    with pytest.raises(ValueError, match="whole number"):
        whole(-0.5, "t", 0, 9)


def test_a_click_is_one_event_and_carries_no_picture():
    """Each event costs the server its own handling, and a crowd of sessions clicking waits on the
    sum: the tabs that follow the click are drawn by the click's own event, the panels' redraw sets
    off nothing, and the answer carries no image (the page outlines the pinned pixel itself)."""
    from spatial_attn.app.blocks import Library, build_demo

    demo = build_demo("vit-faces", Library(["vit-faces"]))
    ids = {getattr(block, "elem_id", None): i for i, block in demo.blocks.items()}
    on_image = [fn for fn in demo.fns.values() if (ids["input-image"], "select") in fn.targets]
    assert len(on_image) == 1
    # nor a worker-thread hop per input and output (Gradio's processing; view_of checks the values)
    assert not on_image[0].preprocess and not on_image[0].postprocess
    outputs = {getattr(block, "elem_id", None) for block in on_image[0].outputs}
    assert "input-image" not in outputs and {"heatmaps", "mechanics", "compare", "token-bars"} <= outputs
    assert not [fn for fn in demo.fns.values() if (ids["heatmaps"], "change") in fn.targets]


def test_gradios_queue_does_not_summarise_every_event_it_ever_served():
    """Gradio's queue summarises its event records with pandas after every event; with its defaults
    (10,000 records, every event) a click's cost grew with the events the server had served."""
    import subprocess
    import sys

    code = (
        "from spatial_attn.app.blocks import Library, build_demo; "
        "q = build_demo('vit-faces', Library(['vit-faces']))._queue; "
        "print(q.ANALYTICS_MAX_EVENTS, q.ANAYLTICS_CACHE_FREQUENCY)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_ANALYTICS_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1000", "100"]


def test_the_image_click_is_sent_even_while_the_previous_one_is_pending():
    from spatial_attn.app.blocks import Library, build_demo

    demo = build_demo("vit-faces", Library(["vit-faces"]))
    clicks = [fn for fn in demo.fns.values() if getattr(fn.fn, "__qualname__", "") == "Handlers.clicked"]
    assert [fn.trigger_mode for fn in clicks] == ["always_last"]


@pytest.mark.parametrize("writer", ["save_pil_to_cache", "save_bytes_to_cache"])
def test_a_content_hashed_file_is_never_seen_half_written(tmp_path, writer):
    """One thread sends the same image again and again (Gradio rewrites its content-hashed file each
    time), another reads the file as a page downloading it would: every read is the whole image."""
    import threading

    import numpy as np
    from gradio import processing_utils
    from PIL import Image

    from spatial_attn.app import public

    public.atomic_cache_writes()
    pixels = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    if writer == "save_pil_to_cache":  # BMP: no compression, so the writes, not the encoding, dominate
        args = (Image.fromarray(pixels), str(tmp_path), "image", "bmp")
    else:
        args = (pixels.tobytes(), "image.raw", str(tmp_path))
    write = getattr(processing_utils, writer)
    path = Path(write(*args))
    whole = path.read_bytes()
    done = threading.Event()
    short: list[int] = []

    def reader() -> None:
        while not done.is_set():
            got = path.read_bytes()
            if got != whole:
                short.append(len(got))

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(100):
        assert write(*args) == str(path)
    done.set()
    thread.join()
    assert not short, f"{len(short)} reads saw a partial file, e.g. {short[:3]} of {len(whole)} bytes"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_the_lane_runs_size_at_once_and_tells_the_rest_it_is_busy():
    """RUNS at once; ``waiting`` more wait their turn; beyond them, Busy (the JSON API's 503)."""
    import threading
    import time

    from spatial_attn.app.serving import Busy, Lane

    lane = Lane(size=1, waiting=1)
    release, entered = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with lane.held():
            entered.set()
            release.wait(10)
            order.append("first")

    def then(name: str, bounded: bool) -> None:
        with lane.held(bounded):
            order.append(name)

    threads = [threading.Thread(target=first), threading.Thread(target=then, args=("second", True))]
    threads[0].start()
    entered.wait(10)
    threads[1].start()
    time.sleep(0.2)  # the second is waiting now
    with pytest.raises(Busy, match="busy"), lane.held():
        pass
    threads.append(threading.Thread(target=then, args=("gradio's", False)))  # its queue bounds it: waits
    threads[-1].start()
    release.set()
    for t in threads:
        t.join(10)
    assert order[0] == "first" and sorted(order[1:]) == ["gradio's", "second"]
