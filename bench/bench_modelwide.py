"""Model-wide views (issue 21): time of each on the bundled models and on an SD-1.5-shaped UNet.

    python bench/bench_modelwide.py                  # bundled models + the SD-1.5 UNet at a 32x32 latent
    python bench/bench_modelwide.py --latent 64      # the UNet at SD-1.5's own 64x64 latent (512 px)
    python bench/bench_modelwide.py --no-unet        # bundled models only

Each view beside the forward that captured what it reads (the model run the app makes anyway), so the
ratio says what a view costs in model runs. The layer statistics are one pass over every query of every
layer and give three views (mean distance by depth, entropy and distance maps, attention received);
rollout is one pass per layer of its run, per direction. The UNet is built from SD-1.5's config
(``UNet2DConditionModel``: 320/640/1280/1280 channels, 8 heads, 768-d text) with random weights:
the attention's shapes are SD-1.5's, its values are not. Times are medians of 3 runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_capture import print_table  # noqa: E402

import spatial_attn as sa  # noqa: E402
from spatial_attn.analysis import modelwide  # noqa: E402

REPEAT = 3  # each view's time is the median of this many runs


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """The median time of ``repeat`` calls (s), and the last call's result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def views(
    name: str, layers: list, image_hw: tuple[int, int], forward: float
) -> list[tuple[str, str, str, str]]:
    """Time every view on captured ``layers``; ``forward`` is the capturing forward's time (s)."""
    layers = [layer for layer in layers if layer.query_grid is not None]
    groups = modelwide.rollout_groups(layers)
    longest = max(groups, key=lambda g: (len(g), layers[g[0]].queries.count))  # ties: the finest
    chain = [layers[i] for i in longest]
    centre = (chain[0].query_grid[0] // 2, chain[0].query_grid[1] // 2)
    rows = []
    for layer in layers:  # the copies of q and k a first click makes, made before the clock starts
        layer.q  # noqa: B018
    took, _ = timed(lambda: modelwide.model_stats(layers, image_hw), REPEAT)
    rows.append(
        (
            f"{name}: layer statistics of {len(layers)} layers (distance by depth, entropy and distance "
            "maps, attention received)",
            f"{took * 1e3:.1f} ms",
            f"forward under capture {forward * 1e3:.0f} ms",
            f"{took / forward:.2f}x a forward",
        )
    )
    for mode in ("row", "column"):
        took, _ = timed(lambda mode=mode: modelwide.rollout(chain, centre, mode=mode), REPEAT)
        rows.append(
            (
                f"{name}: rollout ({mode}) through {len(chain)} layers of {chain[0].queries.count} tokens",
                f"{took * 1e3:.1f} ms",
                f"forward under capture {forward * 1e3:.0f} ms",
                f"{took / forward:.2f}x a forward",
            )
        )
    return rows


def bundled(name: str) -> list[tuple[str, str, str, str]]:
    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.app.blocks import default_image
    from spatial_attn.models import load_model

    model = load_model(name)
    image = None if model.kind == "sagan" else default_image()[0]
    took, ex = timed(lambda: Exploration(model, image, timestep=250 if model.num_timesteps else None))
    return views(name, ex.layers, ex.image_hw, took) + tab(name, ex, took)


def tab(name: str, explored: Any, forward: float) -> list[tuple[str, str, str, str]]:
    """Each view as the app's tab gives it (computed and drawn), the layer statistics not yet kept."""
    from types import SimpleNamespace

    from spatial_attn.app.views import modelwide as view

    session = SimpleNamespace(exploration=explored, point=explored.first_point())
    rows = []
    for shown in view.VIEWS:

        def press(shown: str = shown) -> Any:
            view._STATS.clear()  # as the first press after a model run
            return view.ModelWideView.show(session, shown, None, lambda *a, **k: None)

        took, _ = timed(press, REPEAT)
        rows.append(
            (f"{name}, app tab: {shown}", f"{took * 1e3:.1f} ms", f"model run {forward * 1e3:.0f} ms", "")
        )
    return rows


def sd15_unet(latent: int) -> list[tuple[str, str, str, str]]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    ).eval()
    latents = torch.randn(1, 4, latent, latent)
    text = torch.randn(1, 77, 768)
    with torch.no_grad():
        plain, _ = timed(lambda: unet(latents, 500, encoder_hidden_states=text))
        with sa.capture(unet) as cap:
            took, _ = timed(lambda: unet(latents, 500, encoder_hidden_states=text))
    name = f"SD-1.5-shaped UNet, {latent}x{latent} latent ({8 * latent} px)"
    rows = [
        (f"{name}: forward under capture", f"{took * 1e3:.1f} ms", f"plain forward {plain * 1e3:.0f} ms", "")
    ]
    return rows + views(name, list(cap.layers), (8 * latent, 8 * latent), took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=32, help="the UNet's latent side (SD-1.5: 64)")
    parser.add_argument("--no-unet", action="store_true", help="the bundled models only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [row for name in ("ddpm-faces", "sagan-faces", "vit-faces") for row in bundled(name)]
    if not args.no_unet:
        rows += sd15_unet(args.latent)
    print_table(rows)


if __name__ == "__main__":
    main()
