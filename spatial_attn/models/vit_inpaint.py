"""A masked-patch ViT (SimMIM) that paints an erased eye back from the rest of the face.

Why it exists: the judge (:mod:`.vit`) can call a face valid from where things usually are, and its
attention rows showed it (fixed cheek cells whether or not the eye was there). This model is given
a face whose one eye's patches are all replaced by a learned *mask token* and must paint that eye
back. A valid face's eyes match (colour, shape, size), and on the ``wide`` layout the other eye's
place varies, so the only way to paint the masked eye right is to *find and read the other eye*:
the masked patches' attention rows are where that reading shows.

Patch 4 on a 32 x 32 image: an 8 x 8 grid of tokens (the judge's grid), token ``y*8 + x`` is patch
``(y, x)``; no CLS token (nothing is classified). Learned positions, the judge's pre-norm
``nn.TransformerEncoderLayer`` blocks (``blocks.{i}.self_attn`` for the capture engine), and a
linear decoder from each token to its patch's pixels. The loss (L1) is taken on masked patches only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .vit import EncoderConfig, PatchEmbed, encoder_blocks

#: How far an eye's pixels reach from its centre, in eye radii plus pixels: the bars' corners
#: (1.15 r by 0.38 r, 1.21 r) and their 1-px anti-aliased edge. Every patch within that is masked, so
#: no pixel of the masked eye is left for the model to read its colour or shape from.
EYE_REACH = (1.22, 0.5)


@dataclass(frozen=True)
class InpaintConfig(EncoderConfig):
    """The judge's grid and encoder; no classes (it paints patches)."""


class InpaintViT(nn.Module):
    """Patch embedding, mask token where ``mask`` is set, learned positions, encoder, linear decoder."""

    def __init__(self, cfg: InpaintConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.grid**2, cfg.dim) * 0.02)
        self.blocks = encoder_blocks(cfg)
        self.norm = nn.LayerNorm(cfg.dim)
        self.decoder = nn.Linear(cfg.dim, 3 * cfg.patch**2)

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's input: patch tokens, the masked ones replaced by the mask token, plus positions."""
        tokens = self.patch_embed(x)  # (B, N, D), N = 64
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)  # (B, N, D)
        return tokens + self.pos_embed

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 3, 32, 32) in [-1, 1], mask: (B, 64) bool (True = hidden) -> the painted image,
        (B, 3, 32, 32): every patch predicted, the masked ones from the rest of the face."""
        if mask is None:
            mask = torch.zeros(len(x), self.cfg.grid**2, dtype=torch.bool, device=x.device)
        h = self.embed(x, mask)  # (B, N, D)
        for block in self.blocks:
            h = block(h)  # (B, N, D)
        patches = self.decoder(self.norm(h))  # (B, N, 3 * p * p)
        return unpatchify(patches, self.cfg)


def unpatchify(patches: torch.Tensor, cfg: InpaintConfig) -> torch.Tensor:
    """(B, N, 3 * p * p) per-token pixels -> (B, 3, H, W) image (token y*g + x is patch (y, x))."""
    b, g, p = len(patches), cfg.grid, cfg.patch
    x = patches.view(b, g, g, 3, p, p)  # (B, gy, gx, 3, py, px)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, 3, g * p, g * p)  # (B, 3, gy*py, gx*px)


def eye_mask(centres: np.ndarray, radii: np.ndarray, cfg: InpaintConfig) -> np.ndarray:
    """(n, N) bool: the patches within :data:`EYE_REACH` of each eye (centres (n, 2) (y, x) and radii
    (n,) in pixels), i.e. every patch the eye's pixels can touch: the patches the model must paint."""
    p, g = cfg.patch, cfg.grid
    lo = np.arange(g) * p  # (g,) each patch row's / column's first pixel edge
    near_y = np.clip(centres[:, :1], lo, lo + p) - centres[:, :1]  # (n, g) to the nearest point, in y
    near_x = np.clip(centres[:, 1:], lo, lo + p) - centres[:, 1:]  # (n, g) in x
    reach = EYE_REACH[0] * np.asarray(radii)[:, None, None] + EYE_REACH[1]  # (n, 1, 1)
    inside = near_y[:, :, None] ** 2 + near_x[:, None, :] ** 2 < reach**2  # (n, g, g)
    return inside.reshape(len(centres), g * g)
