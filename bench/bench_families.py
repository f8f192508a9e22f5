"""Capture overhead on the families of issue 20, side by side with the plain forward in one run.

    python bench/bench_families.py

1. transformers' ``VitDetModel`` at ViT-S width (dim 384, 6 heads, 12 layers, 8 of them windowed in
   14 x 14 windows, decomposed relative positions) on a 224 px image: a 28 x 28 map whose blocks
   receive NCHW maps and fold windows and heads into one axis.
2. transformers' ``DetrModel`` (d_model 256, 6 + 6 layers, 100 object queries) over a small ResNet on a
   512 px image: encoder self-attention, decoder self-attention over the queries, cross-attention.

Goal: the forward under capture within 1.2x the plain one, as for the ViT of ``bench_speed.py``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_capture import overhead, print_table


def vitdet() -> torch.nn.Module:
    config = transformers.VitDetConfig(
        image_size=224,
        pretrain_image_size=224,
        patch_size=8,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        window_size=14,
        window_block_indices=[0, 1, 3, 4, 6, 7, 9, 10],
        use_relative_position_embeddings=True,
    )
    return transformers.VitDetModel(config).eval()


def detr() -> torch.nn.Module:
    backbone = transformers.ResNetConfig(
        embedding_size=32, hidden_sizes=[64, 128, 256], depths=[1, 1, 1], out_features=["stage3"]
    )
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=256,
        encoder_layers=6,
        decoder_layers=6,
        num_queries=100,
    )
    return transformers.DetrModel(config).eval()


def main() -> None:
    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # transformers' notes on configs; nothing here is a problem
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} threads")
    rows = []
    for name, model, image in [
        ("ViTDet-S 224 px (28 x 28, 14 x 14 windows, 12 layers)", vitdet(), torch.randn(1, 3, 224, 224)),
        ("DETR 512 px (100 queries, 6 + 6 layers)", detr(), torch.randn(1, 3, 512, 512)),
    ]:
        plain, captured, cap = overhead(model, image, repeat=5)
        rows.append(
            (
                f"{name}: forward under capture ({len(cap.layers)} layers, {len(cap.problems)} problems)",
                f"{captured * 1000:.0f} ms",
                f"plain {plain * 1000:.0f} ms",
                f"{captured / plain:.2f}x (goal <= 1.2x)",
            )
        )
    print_table(rows)


if __name__ == "__main__":
    main()
