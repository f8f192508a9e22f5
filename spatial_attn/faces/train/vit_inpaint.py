"""Training the in-painter: one eye of each valid ``wide``-layout face masked, painted back (L1).

Which eye is masked is drawn per face from the step's generator (left or right, evenly), and every
patch that eye's pixels can touch is masked (:func:`~spatial_attn.models.vit_inpaint.eye_mask`), so
nothing of it is left to copy. The loss is the L1 error on the masked patches' pixels only, those
within the eye's reach weighted :data:`EYE_WEIGHT` times more: most of a masked patch is skin, which
its neighbours tell, while the eye's colour and shape can only be read off the other eye.
Train with ``--layout wide``: on the standard layout the other eye is where position says it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...data import FaceBatch
from ...models.vit_inpaint import EYE_REACH, InpaintConfig, InpaintViT, eye_mask
from ...models.weights import save_weights
from .common import OneModel, Settings, cosine_lr, set_lr, to_tensor

DEFAULTS = {"steps": 6000, "batch_size": 128, "lr": 1e-3}
EYE_WEIGHT = 4.0  # an eye pixel's weight in the loss, against 1 for the masked skin around it


class InpaintTrainer(OneModel):
    """AdamW with warm-up and cosine decay on valid faces, one eye masked per face."""

    name = "vit-inpaint"
    kinds = ("valid",)

    def __init__(self, s: Settings, cfg: InpaintConfig | None = None) -> None:
        self.s = s
        self.cfg = cfg or InpaintConfig()
        torch.manual_seed(s.seed)
        self.model = InpaintViT(self.cfg)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=0.05)

    def step(self, step: int, batch: FaceBatch, gen: torch.Generator) -> dict[str, float]:
        set_lr(self.opt, cosine_lr(step, self.s.steps, self.s.lr, warmup=300))
        loss = self.loss(batch, gen)
        self.update(loss)
        return {"loss": loss.item()}

    def loss(self, batch: FaceBatch, gen: torch.Generator) -> torch.Tensor:
        """Weighted L1 over the masked patches' pixels of ``batch``, one eye per face masked."""
        x = to_tensor(batch.images)  # (B, 3, 32, 32)
        side = torch.randint(0, 2, (len(x),), generator=gen).numpy()  # which eye each face hides
        rows = np.arange(len(x))
        centres, radii = batch.eyes[rows, side], batch.eye_radius[rows, side]  # (B, 2), (B,)
        mask = torch.from_numpy(eye_mask(centres, radii, self.cfg))  # (B, N)
        weight = pixel_mask(mask, self.cfg) * (1 + EYE_WEIGHT * near_eye(centres, radii))  # (B, 1, 32, 32)
        err = (self.model(x, mask) - x).abs()  # (B, 3, 32, 32)
        return (err * weight).sum() / (3 * weight.sum())

    def export(self, out_dir: Path) -> None:
        save_weights(out_dir, {"kind": "vit-inpaint", **self.cfg.to_dict()}, self.model.state_dict())


def pixel_mask(mask: torch.Tensor, cfg: InpaintConfig) -> torch.Tensor:
    """(B, N) patch mask -> (B, 1, H, W) float: 1 on the pixels of masked patches."""
    g, p = cfg.grid, cfg.patch
    grid = mask.view(-1, 1, g, g).float()  # (B, 1, g, g)
    return grid.repeat_interleave(p, 2).repeat_interleave(p, 3)  # (B, 1, g*p, g*p)


def near_eye(centres: np.ndarray, radii: np.ndarray, size: int = 32) -> torch.Tensor:
    """(B, 1, size, size) float: 1 on the pixels within :data:`EYE_REACH` of each eye's centre."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2  # (B, size, size)
    reach = EYE_REACH[0] * radii[:, None, None] + EYE_REACH[1]
    return torch.from_numpy((d2 < reach**2).astype(np.float32))[:, None]
