"""What serving many users from one small machine needs, apart from the widgets.

* Parameters arrive from people and from scripts (``/attend``), as numbers, strings, None, NaN or
  10^400: each is checked here and refused with a sentence that names it, what it must be and
  what came, instead of a traceback or Gradio's "upstream error".
* Model runs are the expensive events: all of them share one bounded pool (:data:`RUNS`), so a
  crowd queues instead of running 30 forwards on 2 cores.
* Clicks are cheap and run side by side for different users; within one user's session,
  :class:`Tickets` keeps the screen from going backwards (a late result is dropped, never painted
  over a newer one) and a retired session (the user switched model or image) never paints again.
* ``/attend`` callers often ask about the same image many times: :class:`Explorations` keeps the
  captured runs in a bounded LRU, so a repeated image costs a click, not a forward.

Nothing here imports gradio: the app maps :class:`ValueError` to its own error box.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
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
        raise ValueError(f"{name} must be a number, got {_shown(value)}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {_shown(value)}")
    if (low is not None and out < low) or (high is not None and out > high):
        raise ValueError(f"{name} must be from {_bound(low)} to {_bound(high)}, got {_shown(value)}")
    return out


def whole(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an integer within ``[low, high]``: fractions are refused, not truncated."""
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


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the cache key of an uploaded image, whatever its name."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
