"""The door of the public server: every request that could reach an event handler is checked here,
before Gradio reads, keeps or fetches anything.

Gradio's own routes are many, and some skip what the page goes through: ``/gradio_api/run/NAME`` and
``/gradio_api/api/NAME`` call a handler outside the queue (and so outside its lanes), by its API name
or by any ``fn_index``, private events included (``/run/false_3``). Rather than close the ones known
to be open, this is an allowlist: a request that is not a GET may only reach the queue (``queue/join``,
``call/attend``), the upload route, the page's cancel and reset, the panels' server function (their
hover data: no model runs) and the JSON API; anything else is
answered 404 with a sentence saying where to go. A route added by a later Gradio is closed until it is
listed here (``tests/test_guard.py`` enumerates the app's routes and fails on one it does not know).

What passes is checked as data, with the field named and the allowed values said, in one line:
the body's size before it is read (``MAX_BODY``), the event's index and its number of values, each
value's type for its component (a number for a slider, text for a textbox, true or false for a
checkbox), every text's length (``MAX_TEXT``: Gradio keeps a session's inputs, so a 4 MB prompt sent
by 256 sessions would pin a gigabyte), and the files: only uploads of this server and the served
examples, never a URL (Gradio would download it) nor another server path. Ranges and choices that
depend on the model (a timestep's maximum, a model's heads) are the handlers' to check.

Pure ASGI, so no body is read twice and nothing here imports more than Starlette.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from . import images

MAX_TEXT = 1000  #: characters in any text value (a prompt, a model's name); a prompt is ~77 tokens
MAX_BODY = 256 * 2**10  #: bytes in an event's JSON body: its values are numbers and short texts
#: An upload's multipart body: the file's own limit and room for the form around it.
MAX_UPLOAD_BODY = int(images.MAX_UPLOAD_MB * 2**20) + 64 * 2**10
#: The JSON API's body: an image as base64 (4/3 of its bytes) and the fields.
MAX_JSON_BODY = int(images.MAX_UPLOAD_MB * 2**20 * 4 / 3) + 64 * 2**10
UPLOADED = "images must be uploaded"  # the one answer to a URL or a server path in an image slot
PREFIX = "/gradio_api"
#: The POST routes a request may reach: what they are for is in the test of the routes.
EVENT, CALL, UPLOAD, SMALL, JSON_API, SERVER_FN = "event", "call", "upload", "small", "json", "server_fn"
ROUTES = {
    f"{PREFIX}/queue/join": EVENT,
    f"{PREFIX}/component_server": SERVER_FN,  # a component's own function (the panels' hover data)
    f"{PREFIX}/upload": UPLOAD,
    f"{PREFIX}/cancel": SMALL,
    f"{PREFIX}/reset": SMALL,
    "/api/v1/attend": JSON_API,
}
_CALL = re.compile(rf"{PREFIX}/call/(?P<name>[^/]+)/?")
_FILES = ("File", "Image", "UploadButton", "Gallery", "Video", "Audio", "Model3D")
_NUMBERS = ("Number", "Slider")
_TEXTS = ("Textbox", "Dropdown", "Radio")
CLOSED = (
    "{method} {path} is not served here: the model runs through the queue (gradio_client, or "
    "POST /gradio_api/call/attend) or through POST /api/v1/attend"
)


class Refused(ValueError):
    """A request answered with ``status`` and a one-line message, before Gradio sees it."""

    def __init__(self, message: str, status: int = 422, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field  # the value's name, for gradio_client's own message


def route_of(method: str, path: str) -> str | None:
    """What a request is, by its method and path: None for a read (GET, HEAD, OPTIONS), else one of
    the kinds in :data:`ROUTES` or :data:`CALL`; a route nobody listed is refused."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    path = path.rstrip("/") or "/"
    if method == "POST" and path in ROUTES:
        return ROUTES[path]
    if method == "POST" and _CALL.fullmatch(path):
        return CALL
    raise Refused(CLOSED.format(method=method, path=path), 404)


def limit_of(kind: str) -> int:
    """The largest body a route of ``kind`` reads."""
    return {UPLOAD: MAX_UPLOAD_BODY, JSON_API: MAX_JSON_BODY}.get(kind, MAX_BODY)


def check_event(blocks: Any, body: bytes, api_name: str | None, upload_dir: str | Path) -> None:
    """A ``queue/join`` body (``api_name`` None) or a ``call/NAME`` body, checked value by value."""
    request = parse_json(body)
    if api_name is not None:
        fn = _public(blocks, api_name)
    else:
        fn = _indexed(blocks, request.get("fn_index"))
        session = request.get("session_hash")
        if not isinstance(session, str) or not 0 < len(session) <= 64:
            raise Refused(f"session_hash must be text of 1 to 64 characters; got {_shown(session)}")
    data = request.get("data")
    fields = [_label(block) for block in fn.inputs]
    if not isinstance(data, list) or len(data) != len(fields):
        got = f"{len(data)}" if isinstance(data, list) else _shown(data)
        raise Refused(f"{_name(fn)} takes {len(fields)} values ({', '.join(fields)}); got {got}")
    for block, field, value in zip(fn.inputs, fields, data, strict=True):
        check_value(type(block).__name__, field, value, block, upload_dir)
    event = request.get("event_data")
    if event is not None and not isinstance(event, dict):
        raise Refused(f"event_data must be an object or null; got {_shown(event)}")
    selection = api_name is None and any(kind == "select" for _, kind in fn.targets)
    if selection and (not isinstance(event, dict) or "index" not in event):
        raise Refused(f"{_name(fn)} is a selection: event_data must hold its index; got {_shown(event)}")


def check_server_fn(blocks: Any, body: bytes) -> None:
    """A call of a component's server function (``gr.HTML(server_functions=...)``): the component
    must be one of the page's and the function one it declares; its arguments short texts."""
    request = parse_json(body)
    block = (
        blocks.blocks.get(request.get("component_id"))
        if isinstance(request.get("component_id"), int)
        else None
    )
    names = [fn.__name__ for fn in getattr(block, "server_fns", None) or []]
    if not names:
        raise Refused(f"component_id {_shown(request.get('component_id'))} has no server functions", 404)
    if request.get("fn_name") not in names:
        raise Refused(f"fn_name must be one of {', '.join(names)}; got {_shown(request.get('fn_name'))}", 404)
    for text in _texts(request.get("data")):
        if len(text) > MAX_TEXT:
            raise Refused(f"data is {len(text):,} characters long; the limit is {MAX_TEXT:,}", 413)


def parse_json(body: bytes) -> dict:
    """``body`` as a JSON object, or a one-line refusal."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise Refused("the body must be JSON (Content-Type: application/json)", 400) from None
    if not isinstance(request, dict):
        raise Refused(f"the body must be a JSON object; got {type(request).__name__}", 400)
    return request


def check_value(kind: str, field: str, value: Any, block: Any, upload_dir: str | Path) -> None:
    """One value for a component of class ``kind``: its type, the length of its texts, its files."""
    if kind == "State":
        return  # the server's own: Gradio ignores what is sent
    if kind in _FILES:
        check_file(field, value, upload_dir)
        return
    if kind in _NUMBERS:
        if kind == "Number" and value is None:
            return  # a cleared box: the handler says the value is required
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            low, high = getattr(block, "minimum", None), getattr(block, "maximum", None)
            span = f" from {low:g} to {high:g}" if low is not None and high is not None else ""
            raise Refused(f"{field} must be a number{span}, got {_shown(value)}", field=field)
    elif kind == "Checkbox" and not isinstance(value, bool):
        raise Refused(f"{field} must be true or false; got {_shown(value)}", field=field)
    elif kind in _TEXTS and value is not None and not isinstance(value, str):
        raise Refused(f"{field} must be text; got {_shown(value)}", field=field)
    for text in _texts(value):
        if len(text) > MAX_TEXT:
            raise Refused(f"{field} is {len(text):,} characters long; the limit is {MAX_TEXT:,}", 413, field)


def check_file(field: str, value: Any, upload_dir: str | Path) -> None:
    """An image slot holds nothing, or a file in this server's upload folder: an upload, or an example
    as the gallery serves it (Gradio's copy there). A URL would be downloaded by Gradio, and any
    other path would read the server's disk."""
    if value is None:
        return
    path = value.get("path") if isinstance(value, dict) else None
    where = "(POST /gradio_api/upload first)"
    if not isinstance(path, str) or not path:
        raise Refused(f"{field}: {UPLOADED} {where}; got {_shown(value)}", field=field)
    if "://" in path or path.startswith("data:"):
        raise Refused(f"{field}: {UPLOADED} {where}; a URL is never fetched, got {_shown(path)}", field=field)
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(upload_dir).resolve()):
        message = f"{field}: {UPLOADED} {where}; got the server path {path!r}"
        raise Refused(message, field=field)


def _texts(value: Any) -> Iterable[str]:
    """Every string inside ``value`` (nested lists and objects included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)


def _public(blocks: Any, api_name: str) -> Any:
    public = {fn.api_name: fn for fn in blocks.fns.values() if fn.api_visibility == "public"}
    if api_name not in public:
        names = ", ".join(f"/{name}" for name in public)
        raise Refused(f"no endpoint named {_shown(api_name)}; this server's API is {names}", 404)
    return public[api_name]


def _indexed(blocks: Any, index: Any) -> Any:
    if isinstance(index, bool) or not isinstance(index, int) or index not in blocks.fns:
        events = f"from 0 to {max(blocks.fns)} (the page's events)"
        raise Refused(f"fn_index must be a whole number {events}; got {_shown(index)}")
    return blocks.fns[index]


def _label(block: Any) -> str:
    return getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__.lower()


def _name(fn: Any) -> str:
    return f"/{fn.api_name}" if fn.api_visibility == "public" else f"event {fn._id}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class Guard:
    """ASGI middleware: route allowlist, body limits, and the event checks above, before Gradio.

    ``blocks`` is the app's ``gr.Blocks``; ``upload_dir`` a callable giving Gradio's upload folder (it
    is read per request: the server may set ``GRADIO_TEMP_DIR`` after this is made). ``stopping`` is
    set while the server shuts down: requests then get 503 instead of starting work; ``in_flight``
    counts the requests past the door that have not been answered yet (the stop waits for them)."""

    def __init__(
        self,
        app: Any,
        blocks: Any,
        upload_dir: Callable[[], str],
        stopping: Any = None,
        in_flight: Any = None,
    ) -> None:
        self.app = app
        self.blocks = blocks
        self.upload_dir = upload_dir
        self.stopping = stopping
        self.in_flight = in_flight if in_flight is not None else contextlib.nullcontext()

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            kind = route_of(scope["method"], scope["path"])
            if kind is None:
                await self.app(scope, receive, send)
                return
            if self.stopping is not None and self.stopping.is_set():
                raise Refused("the server is stopping; try again when it is back", 503)
            body = await _read(scope, receive, limit_of(kind), chunked=kind != UPLOAD)
        except Refused as refusal:
            await answer(send, refusal.status, str(refusal), refusal.field)
            return
        if body is None:  # an upload: streamed to Gradio, its declared length checked
            with self.in_flight:
                await self.app(scope, receive, send)
            return
        try:
            if kind == SERVER_FN:
                check_server_fn(self.blocks, body)
            if kind in (EVENT, CALL):
                match = _CALL.fullmatch(scope["path"].rstrip("/"))
                name = match["name"] if match else None
                check_event(self.blocks, body, name, self.upload_dir())
        except Refused as refusal:
            await answer(send, refusal.status, str(refusal), refusal.field)
            return
        with self.in_flight:
            await self.app(scope, _replay(body, receive), send)


async def _read(scope: dict, receive: Receive, limit: int, chunked: bool) -> bytes | None:
    """The whole body, refused past ``limit`` bytes before more is read; for an upload (``chunked``
    False) only its declared length is checked and None returned."""
    headers = dict(scope.get("headers") or [])
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused("Content-Length must be a whole number", 400)
        if int(declared) > limit:
            raise Refused(f"the body is {int(declared):,} bytes; the limit here is {limit:,}", 413)
    elif not chunked:
        raise Refused("an upload must declare its Content-Length", 411)
    if not chunked:
        return None
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused("the client went away", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refused(f"the body is over {limit:,} bytes, the limit here", 413)
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _replay(body: bytes, original: Receive) -> Receive:
    """The body already read, then the connection's own messages (its disconnect, when it comes)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


async def answer(send: Send, status: int, message: str, field: str | None = None) -> None:
    """A JSON ``{"error": message}`` answer; a 422 also in the form gradio_client reads and shows
    (Gradio's own validation errors), so a script sees the sentence, not "400 Bad Request"."""
    content: dict[str, Any] = {"error": message}
    if status == 422:
        check = {"__type__": "validate", "is_valid": False, "message": message}
        content["detail"] = [{**check, "parameter_name": field or "request"}]
    payload = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
