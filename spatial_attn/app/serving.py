"""What serving many users from one small machine needs, apart from the widgets.

* Parameters arrive from people and from scripts (``/attend``), as numbers, strings, None, NaN or
  10^400: each is checked here and refused with a sentence that names it, what it must be and
  what came, instead of a traceback or Gradio's "upstream error".
* Model runs are the expensive events: all of them share one bounded pool (:data:`RUNS`), so a
  crowd queues instead of running 30 forwards on 2 cores.
* Clicks are cheap and run side by side for different users; within one user's session,
  :class:`Tickets` keeps the screen from going backwards (a late result is dropped, never painted
  over a newer one) and a retired session (the user switched model or image) never paints again.
* Gradio's queue bounds the events it runs, but the JSON API (:mod:`.jsonapi`) is not one of them:
  :data:`LANE` is the one bound every model run takes, whatever route it came by
  (:func:`share_lane` puts Gradio's model events in it too).
* ``/attend`` callers often ask about the same image many times: :class:`Explorations` keeps the
  captured runs in a bounded LRU, so a repeated image costs a click, not a forward.

Nothing here imports gradio: the app maps :class:`ValueError` to its own error box.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

RUNS = 2  #: model-running events at once, all kinds together (one per core)
#: Gradio's arguments for every event that runs a model: one shared, bounded lane.
RUN_EVENTS: dict[str, Any] = {"concurrency_id": "model", "concurrency_limit": RUNS}
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are 32-bit here

T = TypeVar("T")


def number(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float within ``[low, high]``, or a ValueError a person can read."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"{name} is required: a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        span = f" from {_bound(low)} to {_bound(high)}" if low is not None or high is not None else ""
        raise ValueError(f"{name} must be a number{span}, got {_shown(value)}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {_shown(value)}")
    if (low is not None and out < low) or (high is not None and out > high):
        raise ValueError(f"{name} must be from {_bound(low)} to {_bound(high)}, got {_shown(value)}")
    return out


def whole(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an integer within ``[low, high]``: fractions are refused, not truncated."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"{name} is required: a whole number from {low} to {high}, got {value!r}")
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):
        span = f"a whole number from {low} to {high}"
        raise ValueError(f"{name} must be a number ({span}), got {_shown(value)}") from None
    out = number(value, name)
    if out != int(out):
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {_shown(value)}")
    if not low <= out <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {_shown(value)}")
    return int(out)


def one_of(value: Any, name: str, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options`` (named in the message otherwise)."""
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(o) for o in options)
        raise ValueError(f"{name} must be one of {listed}; got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bound(value: float | None) -> str:
    return "any" if value is None else f"{value:g}"


def pixel(value: Any, name: str, side: int) -> tuple[float, float]:
    """A click's ``[x, y]`` as sent by the page: two numbers within a ``side`` x ``side`` image."""
    wanted = f"{name} must be [x, y], two numbers from 0 to {side - 1}; got {_shown(value)}"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(wanted)
    try:
        x, y = (number(v, name) for v in value)
    except ValueError:
        raise ValueError(wanted) from None
    return x, y  # a point outside the image is the grid's to refuse (it says where the image is)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the cache key of an uploaded image, whatever its name."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file, no file, or the whole new one:
    written under a temporary name in the same folder, then renamed over it (a rename is atomic).
    A content-hashed file that already exists holds the same bytes, so it is left as it is."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


class Busy(RuntimeError):
    """Too many runs are waiting already: answered 503, come back later."""


class Lane:
    """At most ``size`` model runs at once in this process, whatever route asked for them, and at
    most ``waiting`` more waiting their turn (the rest are told the server is busy)."""

    def __init__(self, size: int = RUNS, waiting: int = 64) -> None:
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = waiting

    @contextmanager
    def held(self, bounded: bool = True) -> Iterator[None]:
        """A slot for one run; :class:`Busy` if ``waiting`` runs are already waiting (unless not
        ``bounded``: Gradio's queue bounds its own events before they get here)."""
        with self._lock:
            if bounded and self._waiting >= self.max_waiting:
                raise Busy(f"the server is busy: {self._waiting} model runs are waiting; try again soon")
            self._waiting += 1
        try:
            self._slots.acquire()
        finally:
            with self._lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` run in the lane; its signature kept (Gradio reads it for ``gr.SelectData``)."""

        @functools.wraps(fn)
        def in_lane(*args: Any, **kwargs: Any) -> T:
            with self.held(bounded=False):
                return fn(*args, **kwargs)

        in_lane.in_lane = True  # type: ignore[attr-defined]
        if not hasattr(fn, "__name__"):  # a functools.partial: named after its function
            in_lane.__name__ = getattr(getattr(fn, "func", None), "__name__", "in_lane")
        return in_lane


LANE = Lane()  #: the one lane of every model run in this process


def share_lane(demo: Any, lane: Lane = LANE) -> None:
    """Put every event of ``demo`` that runs a model (``RUN_EVENTS``' concurrency id) in ``lane``,
    so that Gradio's queue and the JSON API together never run more than ``RUNS`` at once."""
    for fn in demo.fns.values():
        if fn.concurrency_id == RUN_EVENTS["concurrency_id"] and not getattr(fn.fn, "in_lane", False):
            fn.fn = lane.wrap(fn.fn)


class Tickets:
    """The order of one session's drawing events, and whether the session is still on screen.

    Each click or redraw takes a ticket when it starts; when it has drawn, its result is shown only
    if no later event of the session has started since (a later click would otherwise be painted
    over by an earlier, slower one) and the session has not been retired (the user switched model
    or image: a click still in flight must not bring the old model back).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest = 0
        self.retired = False

    def take(self) -> int:
        """A ticket for an event that is starting now."""
        with self._lock:
            self._latest += 1
            return self._latest

    def current(self, ticket: int) -> bool:
        """Whether the event holding ``ticket`` may still show its result."""
        with self._lock:
            return not self.retired and ticket == self._latest

    def retire(self) -> None:
        """The session is replaced: none of its events may show anything any more."""
        with self._lock:
            self.retired = True


class Explorations:
    """A bounded least-recently-used cache of captured runs, by key; thread-safe.

    Bounded twice: by count, and by the bytes the entries hold (``size(entry)``), because one
    exploration of a large model keeps far more queries and keys than one of a 32 x 32 face.
    Two callers asking for the same missing key at once both compute it (a run is never held
    under the lock); the second result replaces the first.
    """

    def __init__(self, size: Callable[[Any], int], max_items: int = 32, max_bytes: int = 512 * 2**20) -> None:
        self._size = size
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The entry for ``key``, made by ``make()`` if it is not cached."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key][0]
            self.misses += 1
        value = make()
        nbytes = self._size(value)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            if nbytes <= self._max_bytes:  # an entry larger than the whole budget is not kept
                self._entries[key] = (value, nbytes)
                self._bytes += nbytes
            while len(self._entries) > self._max_items or self._bytes > self._max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1][1]
        return value

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached entries, as ``size`` counts them."""
        return self._bytes
