"""What a public server adds around the Blocks: the guard and the JSON API in front of Gradio's
routes, a temp folder of its own, and a clean stop.

* Files: Gradio writes uploads and outputs under ``GRADIO_TEMP_DIR``, shared by every Gradio app of
  the machine and never emptied by a server that is killed. Each server here takes a folder of its
  own, ``<GRADIO_TEMP_DIR or the system's temp>/spatial-attn-<pid>``, removes it when it stops, and
  at start removes those of servers that no longer run (a ``kill -9`` leaves its folder behind).
* Gradio names the images it sends by the hash of their bytes and rewrites the file each time one
  is sent again (truncate, then write): a page still downloading it from another session got a
  half-written image (``naturalWidth`` 0 under a crowd, "Too much data for declared
  Content-Length" in the log). :func:`atomic_cache_writes` makes those writes whole: a temporary
  name, then a rename, and a file that is already there is left alone (same hash, same bytes).
* Stopping: SIGTERM (what ``docker stop``, systemd and a Space send) is handled as Ctrl-C: requests
  that arrive from then on are answered 503, the server stops accepting, the queue is closed, and
  the folder is removed; the process then exits with status 0.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware

from . import jsonapi, serving
from .guard import Guard

PREFIX = "spatial-attn-"
STOPPING = threading.Event()  #: set once the server is stopping: the guard answers 503
DRAIN_S = 30  #: how long a stop waits for the requests already being served


class InFlight:
    """The requests past the guard and not answered yet: a stop waits for them before it removes
    the files they may still write (Gradio's own wait for its server gives up after 5 s)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1

    def wait_idle(self, timeout: float) -> bool:
        """Whether every request was answered within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.count


IN_FLIGHT = InFlight()


def own_temp_folder() -> Path:
    """Make this process's temp folder, point Gradio at it, and remove those of dead servers.

    Called before the Blocks are built: Gradio's components read the folder when they are made."""
    base = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    if base.name.startswith(PREFIX):  # already ours (a second launch in one process)
        base = base.parent
    remove_stale(base)
    folder = base / f"{PREFIX}{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def remove_stale(base: Path) -> list[Path]:
    """Remove the folders under ``base`` of spatial-attn servers that are no longer running."""
    removed = []
    for folder in base.glob(f"{PREFIX}*"):
        pid = folder.name.removeprefix(PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def app_kwargs(demo: Any, attend: Callable[..., tuple]) -> dict[str, Any]:
    """Gradio's ``launch(app_kwargs=...)``: the guard in front of every route, and the JSON API.
    ``attend`` is the app's ``attend`` with its library and cache bound."""
    folder = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    guard = Middleware(Guard, blocks=demo, upload_dir=lambda: folder, stopping=STOPPING, in_flight=IN_FLIGHT)
    return {"middleware": [guard], "routes": [jsonapi.route(attend, lambda: folder)]}


def atomic_cache_writes() -> None:
    """Replace Gradio's two writers of content-hashed files (images it sends, bytes it caches) with
    ones that write to a temporary name and rename; each is looked up on its module when called."""
    from gradio import processing_utils as gradio_files

    if getattr(gradio_files.save_pil_to_cache, "atomic", False):
        return

    def save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = gradio_files.encode_pil_to_bytes(img, format)
        path = Path(cache_dir) / gradio_files.hash_bytes(data) / f"{name}.{format}"
        return str(serving.atomic_write(path, data).resolve())

    def save_bytes_to_cache(data: bytes, file_name: str, cache_dir: str) -> str:
        if not Path(file_name).suffix:
            file_name += gradio_files.detect_audio_format(data)
        path = Path(cache_dir) / gradio_files.hash_bytes(data) / Path(file_name).name
        return str(serving.atomic_write(path, data).resolve())

    for writer in (save_pil_to_cache, save_bytes_to_cache):
        writer.atomic = True  # type: ignore[attr-defined]
        setattr(gradio_files, writer.__name__, writer)


def stop_on_sigterm() -> None:
    """SIGTERM and SIGINT both stop the server as Ctrl-C does (Gradio's own wait loop catches it);
    from the first of them on, new requests are answered 503."""

    def stop(signum: int, frame: Any) -> None:
        STOPPING.set()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


def stopped(demo: Any, folder: Path) -> None:
    """After Gradio's wait loop ends: new requests are refused (503), those already being served are
    answered (up to ``DRAIN_S``), then the queue and the server close and the temp folder goes."""
    STOPPING.set()
    IN_FLIGHT.wait_idle(DRAIN_S)
    demo.close()
    shutil.rmtree(folder, ignore_errors=True)
