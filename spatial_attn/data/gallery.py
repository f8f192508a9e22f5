"""Example faces for the app's gallery, and a measurement of how fast faces are made."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from .faces import KINDS, make_faces

#: How many examples of each kind go into the gallery (valid faces are what most clicks are about).
PER_KIND = {"valid": 4, "eye_color": 2, "eye_shape": 2, "missing_eye": 2}


def write_examples(out_dir: Path, seed: int = 0) -> list[Path]:
    """``<kind>-<i>.png`` at the native 32 x 32 (the app scales them; models get them unresized)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, count in PER_KIND.items():
        faces = make_faces(count, seed + KINDS.index(kind), (kind,))
        for i, img in enumerate(faces.images):
            path = out_dir / f"{kind}-{i}.png"
            Image.fromarray(img).save(path)
            paths.append(path)
    return paths


def measure_throughput(n: int = 5000, repeats: int = 5) -> float:
    """Images per second of ``make_faces`` for batches of ``n`` of all kinds (best of ``repeats``)."""
    make_faces(100, 0, KINDS)  # warm up
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        make_faces(n, r, KINDS)
        best = min(best, time.perf_counter() - t0)
    return n / best
