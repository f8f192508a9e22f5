"""Capture-engine benchmarks (issue 3): every figure is a ratio of two things measured side by side.

    python bench/bench_capture.py            # all of it (about two minutes on 2 cores)
    python bench/bench_capture.py --quick    # skip the 128x128 memory run

1. A Stable-Diffusion-sized self-attention layer (64x64 map, 320 channels, 8 heads, diffusers
   ``Attention`` with the SDPA processor): forward under capture vs the plain forward (goal <= 1.25x),
   and one head-mean row vs the full N x N softmax the row comes from (goal >= 50x faster).
2. The same layer on a 128x128 map (N = 16384, N x N = 1 GiB per head): extra peak RSS of capture +
   3 rows + 1 column over the plain forward, each in a fresh process (goal < 128 MiB).
3. Rows of every layer of each bundled model for one click (goal <= 5 ms in all).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spatial_attn as sa


def sd_layer(side: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """Stable Diffusion's first self-attention shape: 320 channels, 8 heads of 40, on a side x side map."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    layer = Attention(320, heads=8, dim_head=40, norm_num_groups=32, residual_connection=True)
    layer.set_processor(AttnProcessor2_0())
    return layer.eval(), torch.randn(1, 320, side, side)


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead(model: torch.nn.Module, x: torch.Tensor, repeat: int) -> tuple[float, float, sa.Capture]:
    """Median plain and captured forward times, and one capture to click on. The two alternate, so
    that drifting machine load hits both sides alike."""

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def captured() -> sa.Capture:
        with torch.no_grad(), sa.capture(model) as cap:
            model(x)
        return cap

    t_plain, t_cap = [], []
    for _ in range(repeat):
        t_plain.append(median_time(plain, 1))
        t_cap.append(median_time(captured, 1))
    return statistics.median(t_plain), statistics.median(t_cap), captured()


def bench_sd_layer(repeat: int = 7) -> list[tuple[str, str, str, str]]:
    layer, x = sd_layer(64)
    t_plain, t_cap, cap = overhead(layer, x, repeat)
    forward_ratio = t_cap / t_plain

    attention = cap.layers[0]
    q, k = attention.q, attention.k  # (1, 8, 4096, 40), scale folded in

    def full_softmax() -> None:
        torch.softmax(q[0] @ k[0].transpose(-1, -2), dim=-1)  # (8, 4096, 4096): 512 MiB

    t_full = median_time(full_softmax, 3)
    t_row = median_time(lambda: attention.row(31, 17), 50)
    return [
        (
            "SD layer 64x64x320, 8 heads: forward under capture",
            f"{t_cap * 1e3:.0f} ms",
            f"plain {t_plain * 1e3:.0f} ms",
            f"{forward_ratio:.2f}x (goal <= 1.25x)",
        ),
        (
            "SD layer: one head-mean row",
            f"{t_row * 1e3:.2f} ms",
            f"full N x N softmax {t_full * 1e3:.0f} ms",
            f"{t_full / t_row:.0f}x faster (goal >= 50x)",
        ),
    ]


def rss_mib() -> float:
    """Resident memory of this process now, MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


class PeakSampler:
    """Samples RSS every millisecond in a thread: the peak of a phase, excluding what came before."""

    def __enter__(self) -> PeakSampler:
        self.peak, self._stop = rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(mode: str) -> None:
    """Run one side of the memory comparison in this (fresh) process and print what it used."""
    layer, x = sd_layer(128)
    out = {}
    with torch.no_grad():
        if mode == "plain":
            layer(x)
            out["after_forward_mib"] = rss_mib()
        else:
            with sa.capture(layer) as cap:
                layer(x)
            out["after_forward_mib"] = rss_mib()
            attention = cap.layers[0]
            with PeakSampler() as sampler:
                for y, xx in ((0, 0), (64, 64), (127, 5)):
                    attention.row(y, xx)
                attention.column(40, 90)
            out["queries_peak_mib"] = sampler.peak - out["after_forward_mib"]
            out["held_mib"] = attention.nbytes() / 2**20
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def bench_memory() -> list[tuple[str, str, str, str]]:
    runs = {}
    for mode in ("plain", "capture"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True
        )
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, cap = runs["plain"], runs["capture"]
    return [
        (
            "128x128 map (N = 16384): capture + 3 rows + 1 column, extra peak RSS over the plain forward",
            f"+{cap['peak_mib'] - plain['peak_mib']:.0f} MiB",
            f"plain forward peak {plain['peak_mib']:.0f} MiB",
            "goal < 128 MiB (N x N would be 8 GiB)",
        ),
        (
            "same: RSS growth during the 3 rows and the column alone",
            f"+{cap['queries_peak_mib']:.0f} MiB",
            f"q and k held by the layer: {cap['held_mib']:.0f} MiB",
            "",
        ),
        (
            "same: RSS after the forward, captured vs plain",
            f"+{cap['after_forward_mib'] - plain['after_forward_mib']:.0f} MiB",
            "includes memory the allocator keeps after freeing",
            "",
        ),
    ]


def bench_bundled_click() -> list[tuple[str, str, str, str]]:
    rows = []
    from spatial_attn.models import available_models

    for name in available_models():
        try:
            model = sa.load_model(name, pretrained=False)  # same architecture and sizes as the trained one
        except FileNotFoundError as missing:
            rows.append((f"{name}: rows of all layers for one click", "not measured", str(missing), ""))
            continue
        prepared = model.prepare(seed=0, timestep=500) if model.kind != "vit" else None
        if prepared is None:
            from PIL import Image

            prepared = model.prepare(Image.new("RGB", (32, 32), (128, 90, 60)))
        with torch.no_grad(), sa.capture(model.module) as cap:
            model.run(prepared)

        def click(cap: sa.Capture = cap) -> None:
            for layer in cap.layers:
                y, x = sa.cell_at((13, 20), (32, 32), layer.query_grid)
                layer.attend(y, x)

        t = median_time(click, 50)
        grids = ", ".join(sorted({f"{layer.query_grid[0]}x{layer.query_grid[1]}" for layer in cap.layers}))
        n = len(cap.layers)
        rows.append(
            (
                f"{name}: rows of {n} layer{'s' * (n > 1)} ({grids}) for one click",
                f"{t * 1e3:.2f} ms",
                "",
                "goal <= 5 ms",
            )
        )
    return rows


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    print("| measurement | result | beside it | ratio / goal |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 128x128 memory measurement")
    parser.add_argument("--child", choices=["plain", "capture"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = bench_sd_layer()
    if not args.quick:
        rows += bench_memory()
    rows += bench_bundled_click()
    print_table(rows)


if __name__ == "__main__":
    main()
