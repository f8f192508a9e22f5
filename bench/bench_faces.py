"""How fast the procedural faces are made: ``python bench/bench_faces.py`` (moved out of
``spatial-attn faces``, which only writes the gallery's examples)."""

from __future__ import annotations

import time

from spatial_attn.data.faces import KINDS, make_faces


def measure_throughput(n: int = 5000, repeats: int = 5) -> float:
    """Images per second of ``make_faces`` for batches of ``n`` of all kinds (best of ``repeats``)."""
    make_faces(100, 0, KINDS)  # warm up
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        make_faces(n, r, KINDS)
        best = min(best, time.perf_counter() - t0)
    return n / best


if __name__ == "__main__":
    print(f"make_faces: {measure_throughput():,.0f} images/s (batches of 5,000, all kinds, best of 5)")
