"""Training the in-painter: one eye of each valid ``wide``-layout face masked, painted back (L1).

Which eye is masked is drawn per face from the step's seed (left or right, evenly), and every
patch that eye's pixels can touch is masked (:func:`~spatial_attn.models.vit_inpaint.eye_mask`), so
nothing of it is left to copy. The loss is the L1 error on the masked patches' pixels only, those
within the eye's reach weighted ``1 +`` :data:`EYE_WEIGHT` times: most of a masked patch is skin,
which its neighbours tell, while the eye's colour and shape can only be read off the other eye.

Where to read it must not be told by geometry: a first run on plain valid faces (``--layout wide``)
learnt to look at the mirror image of the masked eye about the head's axis. At step 1,800 its best
layer put 6.6 times uniform on that place with the other eye erased against 9.0 with it there
(content lift 1.4) and followed a moved eye 44% of the time, falling. So in :data:`SHIFT_SHARE` of
the faces the *kept* eye is drawn moved (:data:`SHIFT_PX`, uniform in y and in x): the masked eye is
still to be painted as the other eye looks, but the other eye has to be found by what it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...data import Edit, FaceBatch, make_faces
from ...models.vit_inpaint import EYE_REACH, InpaintConfig, InpaintViT, eye_mask
from ...models.weights import save_weights
from .common import OneModel, Settings, batch_seed, cosine_lr, set_lr, to_tensor

DEFAULTS = {"steps": 6000, "batch_size": 128, "lr": 1e-3}
EYE_WEIGHT = 4.0  # an eye pixel's weight in the loss is 1 + this, against 1 for the masked skin around it
SHIFT_SHARE = 0.75  # of the faces, those whose kept eye is drawn moved
SHIFT_PX = (5.0, 3.0)  # up to this far in y and in x (less in x: eyes can be 8 px apart)
KEEP_APART = 9.5  # px between the eyes' centres that a move in x keeps: a masked eye reaches <= 4.7


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

    def augment(self, batch: FaceBatch, seed: int, layout: str) -> FaceBatch:
        """``batch`` redrawn from its ``seed`` with the kept eye of some faces moved (see above)."""
        n = len(batch)
        rng = np.random.default_rng([seed, 37])
        moved = rng.uniform(0, 1, n) < SHIFT_SHARE
        rows, side = np.arange(n), masked_side(seed, n)
        step = rng.uniform(-1, 1, (n, 2)) * np.array(SHIFT_PX) * moved[:, None]  # (n, (dy, dx))
        apart = np.abs(batch.eyes[rows, 1 - side, 1] + step[:, 1] - batch.eyes[rows, side, 1])
        gap = np.minimum(KEEP_APART, np.abs(batch.eyes[:, 1, 1] - batch.eyes[:, 0, 1]))
        step[:, 1] *= apart >= gap  # no closer than KEEP_APART (or than it was): not into the mask
        shift = np.zeros((n, 2, 2), np.float32)  # (face, eye, (dy, dx))
        shift[rows, 1 - side] = step
        return make_faces(n, seed, self.kinds, Edit(shift=shift), layout)

    def step(self, step: int, batch: FaceBatch, gen: torch.Generator) -> dict[str, float]:
        set_lr(self.opt, cosine_lr(step, self.s.steps, self.s.lr, warmup=300))
        loss = self.loss(batch, masked_side(batch_seed(self.s.seed, step), len(batch)))
        self.update(loss)
        return {"loss": loss.item()}

    def loss(self, batch: FaceBatch, side: np.ndarray) -> torch.Tensor:
        """Weighted L1 over the masked patches' pixels of ``batch``, eye ``side[i]`` of face i masked."""
        x = to_tensor(batch.images)  # (B, 3, 32, 32)
        rows = np.arange(len(x))
        centres, radii = batch.eyes[rows, side], batch.eye_radius[rows, side]  # (B, 2), (B,)
        mask = torch.from_numpy(eye_mask(centres, radii, self.cfg))  # (B, N)
        weight = pixel_mask(mask, self.cfg) * (1 + EYE_WEIGHT * near_eye(centres, radii))  # (B, 1, 32, 32)
        err = (self.model(x, mask) - x).abs()  # (B, 3, 32, 32)
        return (err * weight).sum() / (3 * weight.sum())

    def export(self, out_dir: Path) -> None:
        save_weights(out_dir, {"kind": "vit-inpaint", **self.cfg.to_dict()}, self.model.state_dict())


def masked_side(seed: int, n: int) -> np.ndarray:
    """(n,) which eye of each face of step seed ``seed`` is masked (0 left, 1 right), evenly."""
    return np.random.default_rng([seed, 41]).integers(0, 2, n)


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
