"""The public server's door, against the real app on 127.0.0.1: every route that can run a model
goes through the queue or the one lane, every bad input gets one readable line through every route,
image slots take uploads only (nothing is fetched), and the JSON API answers what /attend answers.

No request leaves 127.0.0.1: the URL a client may name is a server of this test on loopback, which
counts the requests it gets (none, when the guard holds).
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest

from spatial_attn.app import guard, serving
from spatial_attn.app.blocks import examples

ATTEND = [None, "vit-faces", 0, 3, 4, "mean", 0, "", False]  # /attend's nine values
FACE = examples()[0]


def _routes(routes, prefix=""):
    """(methods, path) of every route of a FastAPI app, included routers flattened."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's included router
            yield from _routes(route.original_router.routes, prefix + route.include_context.prefix)
        else:
            yield set(getattr(route, "methods", None) or {"GET"}), prefix + route.path


def _fn(demo, name: str):
    """The event whose handler is ``Handlers.<name>`` (or the /attend API event for "attend")."""
    if name == "attend":
        return next(fn for fn in demo.fns.values() if fn.api_name == "attend")
    return next(fn for fn in demo.fns.values() if getattr(fn.fn, "__qualname__", "") == f"Handlers.{name}")


def _initial(fn) -> list:
    return [None if type(block).__name__ == "State" else getattr(block, "value", None) for block in fn.inputs]


def queued(url: str, body: dict) -> tuple[int, object]:
    """``queue/join`` then the session's event stream, as the page does: (status, message or
    output). A refusal at the door is (4xx, its error); an event's failure (200, its message)."""
    with httpx.Client(base_url=url + "gradio_api/", timeout=120) as http:
        joined = http.post("queue/join", json=body)
        if joined.status_code != 200:
            return joined.status_code, joined.json().get("error")
        event_id = joined.json()["event_id"]
        with http.stream("GET", "queue/data", params={"session_hash": body["session_hash"]}) as answer:
            for line in answer.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    output = message["output"]
                    return 200, output.get("error") if not message["success"] else output
    raise AssertionError("the event stream ended without the event's result")


def called(url: str, data: list) -> tuple[int, object]:
    """``POST /gradio_api/call/attend`` and its event stream: (status, message or data)."""
    with httpx.Client(base_url=url + "gradio_api/", timeout=120) as http:
        posted = http.post("call/attend", json={"data": data})
        if posted.status_code != 200:
            return posted.status_code, posted.json().get("error")
        text = http.get(f"call/attend/{posted.json()['event_id']}").text
    kind, payload = re.findall(r"event: (\w+)\ndata: (.*)", text)[-1]
    payload = json.loads(payload)
    return (200, payload) if kind == "complete" else (200, (payload or {}).get("error") or payload)


def posted_json(url: str, body: dict) -> tuple[int, object]:
    answer = httpx.post(url + "api/v1/attend", json=body, timeout=120)
    payload = answer.json()
    return answer.status_code, payload.get("error", payload)


def _upload(url: str, path: Path) -> str:
    with open(path, "rb") as f:
        answer = httpx.post(url + "gradio_api/upload", files={"files": (path.name, f)}, timeout=60)
    answer.raise_for_status()
    return answer.json()[0]


def _bomb(tmp_path: Path) -> Path:
    """A 32 x 32 PNG with a zTXt chunk inflating to 64 MB: a decompression bomb in the metadata."""
    png = FACE.read_bytes()
    data = b"k\0\0" + zlib.compress(b"\0" * (64 * 2**20), 9)
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    path = tmp_path / "bomb.png"
    path.write_bytes(png[:33] + chunk + png[33:])  # after the IHDR chunk
    return path


class Loopback:
    """An HTTP server on 127.0.0.1 that counts the requests it gets: the URL given to an image slot."""

    def __enter__(self) -> Loopback:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = FACE.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/face.png"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


# -- 1. every route that can run a model goes through the queue or the lane -------------------------
#: The routes that are not reads, and why each may be reached. Any other is refused by the guard; a
#: route a newer Gradio adds fails this test until it is classified here.
THROUGH_THE_QUEUE = {"/gradio_api/queue/join", "/gradio_api/call/{api_name}"}
THROUGH_THE_LANE = {"/api/v1/attend"}
#: files, cancelling, the panels' hover data (a server function reading stored queries and keys)
NO_MODEL = {"/gradio_api/upload", "/gradio_api/cancel", "/gradio_api/reset", "/gradio_api/component_server"}


class Runs:
    """Counts the model runs in flight (each made slow), wherever they come from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.done = 0

    def slowed(self, real: type) -> type:
        runs = self

        class Counted(real):
            def __init__(self, *args, **kwargs) -> None:
                with runs.lock:
                    runs.now += 1
                    runs.peak = max(runs.peak, runs.now)
                try:
                    time.sleep(0.2)
                    super().__init__(*args, **kwargs)
                finally:
                    with runs.lock:
                        runs.now -= 1
                        runs.done += 1

        return Counted


@pytest.fixture
def runs(monkeypatch) -> Runs:
    import spatial_attn.app.blocks as blocks

    counter = Runs()
    monkeypatch.setattr(blocks, "Exploration", counter.slowed(blocks.Exploration))
    return counter


def test_no_route_runs_a_model_outside_the_queue_and_the_lane(served, runs):
    demo, url = served
    attend = _fn(demo, "attend")
    body = {"data": ATTEND, "fn_index": attend._id, "session_hash": "routes", "event_data": None}
    writes = [(methods - {"GET", "HEAD"}, path) for methods, path in _routes(demo.app.routes)]
    writes = [(methods, path) for methods, path in writes if methods]
    assert any(path == "/gradio_api/run/{api_name}" for _, path in writes)  # Gradio's route is there
    unknown = []
    for methods, path in writes:
        known = path.rstrip("/") or "/"
        if known in THROUGH_THE_QUEUE | THROUGH_THE_LANE | NO_MODEL:
            continue
        concrete = re.sub(r"\{[^}]+\}", "attend", path)
        for method in methods:
            answer = httpx.request(method, url.rstrip("/") + concrete, json=body, timeout=30)
            if answer.status_code != 404 or "not served here" not in answer.json().get("error", ""):
                unknown.append(f"{method} {path} -> {answer.status_code} {answer.text[:80]}")
    assert not unknown, "routes that reach Gradio without being classified here: " + "; ".join(unknown)
    assert runs.done == 0
    # a private event by its name, through the queue's own route
    status, message = called_named(url, "false_3")
    assert status == 404 and "this server's API is /attend" in message


def test_only_the_pages_own_server_functions_can_be_called(served):
    demo, url = served
    heatmaps = next(i for i, b in demo.blocks.items() if getattr(b, "elem_id", None) == "heatmaps")
    asked = {"component_id": heatmaps, "fn_name": "hover_data", "data": ["no-such-run"], "session_hash": "sf"}
    answer = httpx.post(url + "gradio_api/component_server", json=asked, timeout=30)
    assert answer.status_code == 200 and answer.json() is None  # a run it does not hold: nothing
    for bad, words in (
        ({"fn_name": "__init__"}, "fn_name must be one of hover_data"),
        ({"component_id": 10**6}, "has no server functions"),
    ):
        answer = httpx.post(url + "gradio_api/component_server", json=asked | bad, timeout=30)
        assert answer.status_code == 404 and words in _one_line(answer.json()["error"])


def called_named(url: str, name: str) -> tuple[int, str]:
    answer = httpx.post(f"{url}gradio_api/call/{name}", json={"data": []}, timeout=30)
    return answer.status_code, answer.json().get("error", "")


def test_the_queue_and_the_json_api_share_one_lane(served, runs):
    """Model runs from the page's queue, Gradio's REST call and the JSON API together: never more
    than RUNS at once (each would otherwise be bounded on its own, 2 + 2 + ...)."""
    demo, url = served
    attend = _fn(demo, "attend")
    image = base64.b64encode(FACE.read_bytes()).decode()
    answers: list[tuple[str, int, object]] = []
    lock = threading.Lock()

    def one(route: str, seed: int) -> None:
        if route == "queue":
            data = [None, "vit-faces", 0, 3, 4, "mean", seed, "", False]
            body = {"data": data, "fn_index": attend._id, "session_hash": f"lane{seed}"}
            got = queued(url, body)
        elif route == "rest":
            got = called(url, [None, "vit-faces", 0, 3, 4, "mean", seed, "", False])
        else:
            got = posted_json(url, {"model": "vit-faces", "x": 3, "y": 4, "seed": seed, "image": image})
        with lock:
            answers.append((route, *got))

    threads = [
        threading.Thread(target=one, args=(route, 1000 + 10 * k + i))
        for k, route in enumerate(["queue", "rest", "json"])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for _, status, _ in answers] == [200] * 12, answers
    assert runs.done == 12 and runs.peak <= serving.RUNS


# -- 2 and 3. one readable line for every bad input, through every route; nothing fetched ------------
def _attend_with(position: int, value: object) -> list:
    data = list(ATTEND)
    data[position] = value
    return data


BAD = [
    # (what, {route: value}, the message's words)
    ("head None", {"attend": _attend_with(5, None), "json": {"head": None}}, "head must be 'mean', 'max'"),
    (
        "missing values",
        {"attend": ATTEND[:7], "json": {"y": ...}},
        r"takes 9 values \(image, model|y is required",
    ),
    ("extra values", {"attend": [*ATTEND, 1, 2], "json": {"z": 1}}, r"takes 9 values|unknown field 'z'"),
    (
        "temperature None",
        {"temperature": None},
        r"temperature T \(logits / T\) must be a number from 0.1 to 5",
    ),
    ("temperature 'abc'", {"temperature": "abc"}, r"temperature T \(logits / T\) must be a number from 0.1"),
    ("click ['a', 'b']", {"click": ["a", "b"]}, r"click index must be \[x, y\], two numbers from 0 to 383"),
    ("click None", {"click": None}, r"click index must be \[x, y\]"),
    ("gallery 999", {"gallery": 999}, r"gallery index must be from 0 to \d+, got 999"),
    (
        "gallery '../x'",
        {"gallery": "../x"},
        r"gallery index must be a number \(a whole number from 0 to \d+\)",
    ),
    ("fn_index 999", {"fn_index": 999}, r"fn_index must be a whole number from 0 to \d+"),
    (
        "timestep 'abc'",
        {"attend": _attend_with(2, "abc"), "json": {"timestep": "abc"}},
        r"timestep.* must be a",
    ),
    ("seed None", {"attend": _attend_with(6, None), "json": {"seed": None}}, r"seed is required"),
    ("images 'yes'", {"attend": _attend_with(8, "yes")}, r"images must be true or false"),
    (
        "a long prompt",
        {"attend": _attend_with(7, "x" * 5000), "json": {"prompt": "x" * 5000}},
        r"prompt is 5,000",
    ),
    ("a server path", {"file": {"path": "/etc/passwd"}, "json": {"image": "/etc/passwd"}}, guard.UPLOADED),
    ("an example's own path", {"file": {"path": str(FACE)}}, guard.UPLOADED),
    (
        "a traversal",
        {"file": {"path": "../../etc/passwd"}, "json": {"upload": "../x"}},
        r"uploaded|upload must",
    ),
    ("a URL", {"file": "URL", "json": {"image": "URL"}}, guard.UPLOADED + ".*URL"),
    (
        "a zTXt bomb",
        {"file": "BOMB", "json": {"image": "BOMB"}},
        r"text metadata \(zTXt/iTXt\) inflates past",
    ),
]


def _one_line(message: object) -> str:
    assert isinstance(message, str) and message, f"no message: {message!r}"
    assert "\n" not in message and "Traceback" not in message and "Error(" not in message, message
    return message


@pytest.mark.parametrize(("what", "values", "words"), BAD, ids=[b[0] for b in BAD])
def test_every_bad_input_is_one_line_naming_the_field_through_every_route(
    served, tmp_path, what, values, words
):
    demo, url = served
    with Loopback() as loopback:
        answers = list(_bad_requests(demo, url, values, tmp_path, loopback.url))
        assert loopback.hits == 0  # nothing was fetched
    assert answers
    for route, (status, message) in answers:
        assert re.search(words, _one_line(message)), f"{route}: {message}"
        assert status in (200, 400, 404, 413, 422), f"{route}: {status}"
    # and the app keeps serving
    assert posted_json(url, {"model": "vit-faces", "x": 3, "y": 4})[0] == 200


def _bad_requests(demo, url: str, values: dict, tmp_path: Path, fetched: str):
    """(route, (status, message)) for each route the case applies to."""
    attend = _fn(demo, "attend")
    session = f"bad{time.monotonic_ns()}"
    if "attend" in values:
        body = {"data": values["attend"], "fn_index": attend._id, "session_hash": session}
        yield "queue", queued(url, body)
        yield "rest", called(url, values["attend"])
    if "file" in values:
        file = _file(values["file"], url, tmp_path, fetched)
        data = [file, *ATTEND[1:]]
        yield "queue", queued(url, {"data": data, "fn_index": attend._id, "session_hash": session})
        yield "rest", called(url, data)
        upload = _fn(demo, "uploaded")
        data = [None, file, *_initial(upload)[2:]]
        yield "upload", queued(url, {"data": data, "fn_index": upload._id, "session_hash": session})
    if "json" in values:
        body = {"model": "vit-faces", "x": 3, "y": 4}
        for key, value in values["json"].items():
            if value is ...:
                body.pop(key)
            elif value in ("URL", "BOMB"):
                raw = fetched.encode() if value == "URL" else _bomb(tmp_path).read_bytes()
                body[key] = fetched if value == "URL" else base64.b64encode(raw).decode()
            else:
                body[key] = value
        yield "json", posted_json(url, body)
    if "temperature" in values:
        fn = next(
            f for f in demo.fns.values() if "temperature T (logits / T)" in [b.label for b in f.inputs[-1:]]
        )
        data = [*_initial(fn)[:-1], values["temperature"]]
        yield "queue", queued(url, {"data": data, "fn_index": fn._id, "session_hash": session})
    if "click" in values:
        load = next(fn for fn in demo.fns.values() if any(kind == "load" for _, kind in fn.targets))
        queued(url, {"data": _initial(load), "fn_index": load._id, "session_hash": session})
        click = _fn(demo, "clicked")
        event = {"index": values["click"], "value": None, "selected": True}
        body = {"data": _initial(click), "fn_index": click._id, "session_hash": session, "event_data": event}
        yield "queue", queued(url, body)
    if "gallery" in values:
        picked = _fn(demo, "picked")
        event = {"index": values["gallery"], "value": None, "selected": True}
        body = {
            "data": _initial(picked),
            "fn_index": picked._id,
            "session_hash": session,
            "event_data": event,
        }
        yield "queue", queued(url, body)
    if "fn_index" in values:
        yield "queue", queued(url, {"data": ATTEND, "fn_index": values["fn_index"], "session_hash": session})


def _file(value: object, url: str, tmp_path: Path, fetched: str) -> dict:
    if value == "URL":
        return {"path": fetched, "url": fetched, "meta": {"_type": "gradio.FileData"}}
    if value == "BOMB":
        return {"path": _upload(url, _bomb(tmp_path)), "meta": {"_type": "gradio.FileData"}}
    return value


def test_an_upload_and_a_served_example_are_accepted(served):
    """An upload, and an example as the gallery serves it (Gradio's copy in its upload folder)."""
    demo, url = served
    attend = _fn(demo, "attend")
    config = httpx.get(url + "config", timeout=30).json()
    gallery = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "examples")
    served_example = gallery["props"]["value"][0]["image"]["path"]
    for path in (_upload(url, FACE), served_example):
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, *ATTEND[1:]]
        status, output = queued(url, {"data": data, "fn_index": attend._id, "session_hash": "ok"})
        assert status == 200 and output["data"][1]["model"] == "vit-faces"


# -- 4. the JSON API ---------------------------------------------------------------------------------
def test_the_json_api_answers_what_attend_answers(served):
    _, url = served
    image = base64.b64encode(FACE.read_bytes()).decode()
    status, rows = posted_json(url, {"model": "vit-faces", "x": 20, "y": 9, "timestep": 0, "image": image})
    assert status == 200
    upload = rows.pop("upload")
    _, reference = called(
        url,
        [
            {"path": _upload(url, FACE), "meta": {"_type": "gradio.FileData"}},
            *ATTEND[1:3],
            20,
            9,
            "mean",
            0,
            "",
            False,
        ],
    )
    assert rows == reference[1]
    # a prior upload's id: the same rows, without sending the image again
    status, again = posted_json(url, {"model": "vit-faces", "x": 20, "y": 9, "upload": upload})
    assert status == 200 and again.pop("upload") == upload and again == rows
    column = posted_json(url, {"model": "vit-faces", "x": 20, "y": 9, "upload": upload, "mode": "column"})[1]
    assert column["layers"][0]["values"] != rows["layers"][0]["values"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 400, "must be JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (
            json.dumps({"model": "vit-faces", "x": 1, "y": 1, "mode": "diagonal"}).encode(),
            422,
            "mode must be one of",
        ),
        (
            json.dumps({"model": "vit-faces", "x": 1, "y": 1, "upload": "0" * 64}).encode(),
            404,
            "not on this server",
        ),
        (json.dumps({"model": "gpt", "x": 1, "y": 1}).encode(), 422, "model must be one of"),
        (b"{" + b" " * (guard.MAX_JSON_BODY + 1) + b"}", 413, "the limit here is"),
    ],
)
def test_the_json_api_refuses_bad_bodies_with_an_error_field(served, body, status, words):
    _, url = served
    answer = httpx.post(url + "api/v1/attend", content=body, timeout=60)
    assert answer.status_code == status and words in _one_line(answer.json()["error"])


# -- 5. nothing kept that the model ignores -----------------------------------------------------------
def test_the_cache_key_leaves_out_a_prompt_the_model_ignores():
    from spatial_attn.app.blocks import Handlers, Library

    handlers = Handlers(Library(["vit-faces"]))
    for prompt in ("a cat", "x" * 999, ""):
        handlers.attend(None, "vit-faces", 0, 3, 4, "mean", 0, prompt)
    assert handlers.explorations.misses == 1 and handlers.explorations.hits == 2


def test_an_oversize_body_is_refused_before_it_is_read(served):
    _, url = served
    body = {"data": _attend_with(7, "x" * (guard.MAX_BODY + 10)), "fn_index": 0, "session_hash": "big"}
    answer = httpx.post(url + "gradio_api/queue/join", json=body, timeout=30)
    assert answer.status_code == 413 and "the limit here is" in answer.json()["error"]


def test_the_json_apis_uploads_are_bounded_least_recent_first(tmp_path):
    from spatial_attn.app.jsonapi import Uploads

    uploads = Uploads(lambda: str(tmp_path), max_files=2)
    ids = [uploads.put(bytes([i]) * 10)[0] for i in range(3)]
    uploads.get(ids[1])  # used again: kept over the newer one
    ids.append(uploads.put(b"\4" * 10)[0])
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted([ids[1], ids[3]])
    with pytest.raises(guard.Refused, match="not on this server"):
        uploads.get(ids[0])


def test_sessions_and_waiting_events_are_bounded(served):
    """Gradio keeps each session's state (its exploration, its components' updates): at most 256
    sessions are kept, the oldest dropped; and at most 256 events wait in the queue (then 503)."""
    demo, _ = served
    assert demo.state_session_capacity == 256 and demo.app.state_holder.capacity == 256
    assert demo._queue.max_size == 256
