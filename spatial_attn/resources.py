"""Where the bundled models and the example faces are, in a checkout and in an installed wheel.

A checkout has ``checkpoints/`` and ``assets/`` beside the package; ``pip install .`` puts them under
``<prefix>/share/spatial-attn/`` (pyproject's data-files), because a wheel holds only packages and
the files it names. An environment variable points elsewhere; when nothing is found, the message
lists every place that was searched, so a user knows what to set.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

#: The environment variables that override each folder.
ENV = {"checkpoints": "SPATIAL_ATTN_CHECKPOINTS", "assets": "SPATIAL_ATTN_ASSETS"}


def candidates(kind: str) -> list[Path]:
    """The folders searched for ``kind`` ("checkpoints" or "assets"), in order."""
    if os.environ.get(ENV[kind]):
        return [Path(os.environ[ENV[kind]]).expanduser()]
    checkout = Path(__file__).resolve().parents[1] / kind
    installed = [Path(prefix) / "share" / "spatial-attn" / kind for prefix in (sys.prefix, site.USER_BASE)]
    return [checkout, *installed]


def locate(kind: str) -> Path:
    """The first of :func:`candidates` that exists (else the first, for messages to name)."""
    found = candidates(kind)
    return next((path for path in found if path.is_dir()), found[0])


def searched(kind: str) -> str:
    """Where ``kind`` was looked for, and how to point elsewhere: for error messages."""
    places = ", ".join(str(p) for p in candidates(kind))
    return f"looked in {places}; set {ENV[kind]} to the folder that holds them"
