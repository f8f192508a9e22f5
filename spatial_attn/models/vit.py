"""A small Vision Transformer that tells a valid face from each kind of broken one.

It is the bundled classifier whose attention the app shows (until issue 23 it was also the judge of
the generative models' samples; that is now the CNN of :mod:`.judge`, since this one learnt where a
face usually is): a face is valid only if its two eyes match, so the model has to compare one eye
with the other, ~3 patches away, which is what its attention rows should show. Patch 4 on a
32 x 32 image gives an 8 x 8 grid of tokens after a CLS token (token 0), so token ``1 + y*8 + x`` is
patch ``(y, x)``.

The blocks are plain ``nn.TransformerEncoderLayer`` (``nn.MultiheadAttention`` inside), pre-norm,
so the capture engine sees a standard attention module under a readable name:
``blocks.{i}.self_attn``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    """The patch grid and the encoder blocks, shared by the judge and the in-painter."""

    image_size: int = 32
    patch: int = 4
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def grid(self) -> int:
        """Patches per side (8: an 8 x 8 grid of tokens)."""
        return self.image_size // self.patch


@dataclass(frozen=True)
class ViTConfig(EncoderConfig):
    num_classes: int = 5


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> one token each (a strided conv is exactly that)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, 8, 8)
        return x.flatten(2).transpose(1, 2)  # (B, 64, D): token y*8 + x is patch (y, x)


def encoder_blocks(cfg: EncoderConfig) -> nn.ModuleList:
    """``cfg.depth`` pre-norm ``nn.TransformerEncoderLayer`` blocks (GELU, no dropout), batch first:
    each one's ``self_attn`` is the ``nn.MultiheadAttention`` the capture engine reads."""
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.heads,
            cfg.mlp_ratio * cfg.dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        for _ in range(cfg.depth)
    )


class ViT(nn.Module):
    """Patch embedding, CLS + learned positions, pre-norm encoder blocks, linear head on CLS."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = (cfg.image_size // cfg.patch) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, cfg.dim) * 0.02)
        self.blocks = encoder_blocks(cfg)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 32, 32) in [-1, 1] -> logits (B, num_classes)."""
        tokens = self.patch_embed(x)  # (B, 64, D)
        cls = self.cls_token.expand(len(x), -1, -1)  # (B, 1, D)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, 1 + 64, D): CLS first
        for block in self.blocks:
            h = block(h)  # (B, 65, D)
        return self.head(self.norm(h[:, 0]))  # (B, num_classes)
