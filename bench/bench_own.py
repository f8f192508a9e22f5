"""Your own models at real size (issue 10): the model run once, then a click, server side.

    python bench/bench_own.py

1. A ViT-B/16 at 224 px with random weights (transformers' default ``ViTConfig``: 12 layers x 197
   tokens, 12 heads), fed a 640 x 480 photo through its own preprocessing (resize, centre crop).
   Goal: click -> every panel rendered <= 50 ms.
2. A UNet shaped like Stable Diffusion 1.5's (``UNet2DConditionModel``: 320/640/1280/1280 channels,
   2 layers per block, 8 heads, cross-attention width 768) at 64 x 64 latents: 16 transformer blocks,
   i.e. 16 self-attention layers (4096, 1024, 256 and 64 tokens) and 16 cross-attention layers over
   77 prompt tokens. A small stand-in VAE (the same 8x downsampling to 4 channels) and a one-layer
   768-wide text encoder feed it: the UNet is the subject. Goal: click -> every panel and the prompt
   view's bar charts rendered <= 200 ms.

"Model run" is everything a new image costs (preprocessing, VAE, text encoder, the forward under
capture); a click never repeats it. The click is what the app's click handler does on the server:
every layer's row read and the panels' HTML written (the browser paints them), plus, for the text
model, the bars. Medians of 20 clicks spread over the image.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_capture import print_table  # noqa: E402
from PIL import Image  # noqa: E402

from spatial_attn.analysis.explore import View  # noqa: E402
from spatial_attn.analysis.text import PromptTokens  # noqa: E402
from spatial_attn.app.blocks import Library, draw, run  # noqa: E402
from spatial_attn.app.views.prompt import bars_html  # noqa: E402
from spatial_attn.models.own import DiffusionModel, ImageModel, TextEncoder  # noqa: E402
from spatial_attn.models.preprocess import from_transformers, square  # noqa: E402

CLICKS = 20


def vit_b16() -> ImageModel:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    module = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()
    steps = from_transformers(
        ViTImageProcessor(
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True
        ).to_dict()
    )
    return ImageModel(
        name="vit-b16",
        kind="vit",
        pretrained=False,
        module=module,
        image_size=224,
        labels=[f"class {i}" for i in range(1000)],
        preprocess=steps,
        forward=lambda m, x: m(pixel_values=x),
    )


def sd15_unet() -> DiffusionModel:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from tiny_models import clip_config, small_vae, tokenizer
    from transformers import CLIPTextModel

    tok = tokenizer(Path(tempfile.mkdtemp(prefix="spatial-attn-bench-")), max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()  # SD 1.5's shape
    vae = small_vae((32, 32, 32, 32), sample_size=512).eval()  # 512 px -> 64 x 64 x 4, as SD's
    text = CLIPTextModel(clip_config(tok, 768, heads=12)).eval()
    return DiffusionModel(
        name="sd15-shaped",
        kind="UNet2DConditionModel",
        pretrained=False,
        module=unet,
        image_size=512,
        num_timesteps=1000,
        preprocess=square(512),
        scheduler=DDPMScheduler(),
        vae=vae,
        text=TextEncoder(tok, text),
        call="conditioned",
        default_prompt="a red cat on the mat",
    )


def bench(library: Library, name: str, goal: str) -> tuple[str, str, str, str]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    start = time.perf_counter()
    session = run(library, name, 500, 0, photo, "photo")
    t_run = time.perf_counter() - start
    ex = session.exploration
    h, w = ex.image_hw
    points = [(int(h * (0.05 + 0.9 * i / CLICKS)), int(w * (0.95 - 0.9 * i / CLICKS))) for i in range(CLICKS)]
    prompt = PromptTokens.of(ex.prepared.tokens) if ex.prepared.tokens else None
    times = []
    for point in [points[0], *points]:  # the first click warms caches up
        session.point = point
        start = time.perf_counter()
        _, panels, _ = draw(session, View())
        if prompt is not None:
            bars_html(ex, point, prompt, "mean")
        times.append(time.perf_counter() - start)
    self_layers = sum(layer.key_grid is not None for layer in ex.layers)
    largest = max(layer.queries.count for layer in ex.layers)
    what = f"{len(ex.layers)} layers ({self_layers} self-attention, largest {largest} tokens)"
    return (
        f"{name}: click -> {what} rendered, server side",
        f"{statistics.median(times[1:]) * 1e3:.1f} ms (p90 {np.percentile(times[1:], 90) * 1e3:.1f})",
        f"model run once per image {t_run:.1f} s; panels HTML {len(panels) / 1e6:.1f} MB",
        goal,
    )


def main() -> None:
    torch.set_num_threads(2)
    library = Library(["vit-faces"])
    rows = []
    library.add(vit_b16())
    rows.append(bench(library, "vit-b16", "goal <= 50 ms"))
    library.add(sd15_unet())
    rows.append(bench(library, "sd15-shaped", "goal <= 200 ms"))
    print_table(rows)


if __name__ == "__main__":
    main()
