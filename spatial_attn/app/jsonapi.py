"""``POST /api/v1/attend``: the ``/attend`` rows for a plain JSON body, beside Gradio's API.

Gradio's API is made for its client: an upload, a join of the queue, then an event stream to read
the answer from, 72-94 ms a call against about 1 ms of work. This route is one request and one JSON
answer, made for curl and for scripts that keep a connection open. It answers exactly what
``/attend`` answers (same function, same checks, same cache of captures) and takes the same lane
as every model run (:data:`~spatial_attn.app.serving.LANE`); its body is bounded by the guard
(:mod:`.guard`) before it is read.

The image comes as base64 (``"image"``), or as the ``"upload"`` id an earlier answer gave for it, so
asking about more pixels of one image sends it once. Uploads are kept content-hashed in the server's
temp folder (the newest :data:`MAX_UPLOADS`), written whole before they are visible.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import serving
from .guard import MAX_TEXT, UPLOADED, Refused, parse_json
from .images import MAX_UPLOAD_MB

PATH = "/api/v1/attend"
MAX_UPLOADS = 256  #: images kept for ``"upload"`` ids, the least recent deleted first
#: The body's fields and their defaults (``...``: required); the same as ``/attend``'s parameters.
FIELDS: dict[str, Any] = {
    "model": ...,
    "x": ...,
    "y": ...,
    "timestep": 250,
    "seed": 0,
    "head": "mean",
    "mode": "row",
    "prompt": "",
    "image": None,
    "upload": None,
}
MAX_IMAGE = MAX_UPLOAD_MB * 2**20  #: the largest image accepted, bytes: the app's upload limit
_ID = re.compile(r"[0-9a-f]{64}")
_DATA_URL = re.compile(r"data:[\w/+.-]*;base64,")
log = logging.getLogger(__name__)


class Uploads:
    """Images sent as base64, kept by the SHA-256 of their bytes in ``folder()/api``."""

    def __init__(self, folder: Callable[[], str], max_files: int = MAX_UPLOADS) -> None:
        self.folder = folder
        self.max_files = max_files

    def put(self, data: bytes) -> tuple[str, Path]:
        """Keep ``data``; its id and path."""
        digest = hashlib.sha256(data).hexdigest()
        path = serving.atomic_write(self._root() / digest / "image", data)
        path.touch()  # the most recently used
        self._prune()
        return digest, path

    def get(self, upload: Any) -> Path:
        """The image an earlier answer named ``upload``."""
        if not isinstance(upload, str) or not _ID.fullmatch(upload):
            raise Refused(f"upload must be the 64-hex-digit id an earlier answer gave; got {upload!r:.60}")
        path = self._root() / upload / "image"
        try:
            os.utime(path)  # the most recently used; fails if it was never kept, or was pruned
        except FileNotFoundError:
            raise Refused(
                f"upload {upload} is not on this server (any more): send the image as base64", 404
            ) from None
        return path

    def _root(self) -> Path:
        return Path(self.folder()) / "api"

    def _prune(self) -> None:
        kept = sorted(self._root().glob("*/image"), key=_mtime, reverse=True)
        for old in kept[self.max_files :]:  # another request may be pruning the same ones
            old.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                old.parent.rmdir()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # pruned meanwhile by another request
        return 0.0


def decoded(text: Any) -> bytes:
    """The bytes of a base64 image (a ``data:`` URL prefix allowed), its size checked first."""
    if not isinstance(text, str):
        raise Refused(f"image must be base64 text; got {type(text).__name__}")
    text = _DATA_URL.sub("", text[:100], count=1) + text[100:]
    limit = int(MAX_IMAGE * 4 / 3) + 4
    if len(text) > limit:
        size = len(text) * 3 / 4 / 2**20
        raise Refused(f"image is {size:.1f} MB; the limit is {MAX_IMAGE / 2**20:g} MB", 413)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(
            f"image: {UPLOADED} as base64 (the standard alphabet, padded with =); "
            "a URL or a server path is never fetched"
        ) from None


def parsed(body: bytes) -> dict[str, Any]:
    """The body's fields with their defaults, or a one-line refusal naming the field."""
    request = parse_json(body)
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise Refused(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}", 400)
    missing = [name for name, default in FIELDS.items() if default is ... and name not in request]
    if missing:
        raise Refused(f"{missing[0]} is required; the fields are {', '.join(FIELDS)}", 400)
    query = {**FIELDS, **request}
    if query["image"] is not None and query["upload"] is not None:
        raise Refused("give image (base64) or upload (an id), not both", 400)
    for name in ("model", "head", "mode", "prompt"):
        if isinstance(query[name], str) and len(query[name]) > MAX_TEXT:
            raise Refused(f"{name} is {len(query[name]):,} characters long; the limit is {MAX_TEXT:,}", 413)
    return query


def route(attend: Callable[..., tuple], folder: Callable[[], str]) -> Route:
    """The route, answering with ``attend(path, model, timestep, x, y, head, seed, prompt, False,
    mode=...)`` (the app's :func:`~spatial_attn.app.blocks.attend`, cache bound) run in the lane."""
    uploads = Uploads(folder)

    def answer(path: Path | None, query: dict) -> dict:
        with serving.LANE.held():
            _, rows = attend(
                str(path) if path else None,
                query["model"],
                query["timestep"],
                query["x"],
                query["y"],
                query["head"],
                query["seed"],
                query["prompt"],
                False,
                mode=query["mode"],
            )
        return rows

    async def endpoint(request: Request) -> Response:
        try:
            query = parsed(await request.body())
            upload, path = None, None
            if query["image"] is not None:
                upload, path = uploads.put(decoded(query["image"]))
            elif query["upload"] is not None:
                upload, path = query["upload"], uploads.get(query["upload"])
            rows = await run_in_threadpool(answer, path, query)
        except Refused as refusal:
            return _error(refusal.status, str(refusal))
        except serving.Busy as busy:
            return _error(503, str(busy))
        except ValueError as error:  # the checks of /attend, and ImageError
            return _error(422, str(error))
        except Exception:  # a bug: logged here, never sent as a traceback
            log.exception("POST %s failed", PATH)
            return _error(500, "the server failed on this request; it is logged")
        if upload is not None:
            rows = {**rows, "upload": upload}
        return Response(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return Route(PATH, endpoint, methods=["POST"])


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")
