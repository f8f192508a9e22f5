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

The second recipe (issue 23, :class:`InpaintRecipe`, ``--set FIELD=VALUE``; the defaults leave the
first recipe's batches byte for byte as they were) adds *decoys*: in ``decoy_share`` of the faces a
skin-toned disc of an eye's size and contrast (the evaluation's decoy, ``decoy_colour``) is drawn
elsewhere on the head, so the masked eye must tell the other eye from a disc that merely stands out.
It can move the kept eye more often or further, and start from a trained in-painter (``init_from``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data import Edit, FaceBatch, make_faces
from ...models.vit_inpaint import EYE_REACH, InpaintConfig, InpaintViT, eye_mask, unpatchify
from ...models.weights import load_weights, save_weights
from .common import OneModel, Settings, batch_seed, cosine_lr, eye_to_eye_loss, recipe_from, set_lr, to_tensor

DEFAULTS = {"steps": 6000, "batch_size": 128, "lr": 1e-3}
EYE_WEIGHT = 4.0  # an eye pixel's weight in the loss is 1 + this, against 1 for the masked skin around it
SHIFT_SHARE = 0.75  # of the faces, those whose kept eye is drawn moved
SHIFT_PX = (5.0, 3.0)  # up to this far in y and in x (less in x: eyes can be 8 px apart)
KEEP_APART = 9.5  # px between the eyes' centres that a move in x keeps: a masked eye reaches <= 4.7
DECOY_GAP = 1.0  # px of skin at least between a decoy and an eye (of any shape: bars reach 1.15 r)
DECOY_TRIES = 64  # candidate places per face; the first that fits is kept, none fitting: no decoy
NEAR_REACH = 1.15  # a decoy "beside the kept eye" lies at 1 to this many times the least clear distance


@dataclass(frozen=True)
class InpaintRecipe:
    """The second recipe's switches (``spatial-attn train vit-inpaint --set FIELD=VALUE``); the
    defaults leave the first recipe exactly as it was."""

    decoy_share: float = 0.0  # of the faces, those given a decoy disc elsewhere on the head
    shift_share: float = SHIFT_SHARE  # of the faces, those whose kept eye is drawn moved
    shift_y_px: float = SHIFT_PX[0]  # a move is uniform up to this in y ...
    shift_x_px: float = SHIFT_PX[1]  # ... and in x
    init_from: str = ""  # a vit-inpaint folder to start from (a fine-tune: its time counts too)
    #: The loss weight of a *visible* patch's pixel (painted back from its own token), against 1 for
    #: a masked skin pixel. 0: the loss is on masked patches only (SimMIM). An audit found visible
    #: cheek cells looking at the other eye as hard as the masked eye does (their rows are free: no
    #: loss reads them), which the cheek control counts against the model.
    visible_weight: float = 0.0
    #: Of the decoys, those drawn *beside the kept eye* (as close as :data:`DECOY_GAP` allows, in any
    #: direction, where it fits), the rest anywhere on the head. Round 2's decoys, drawn anywhere, left
    #: the masked eye following a decoy moved in the kept eye's stead 45% of the time: a disc near
    #: where the other eye usually is was never a wrong answer in training. Beside the kept eye (moved
    #: or not) it is one the loss punishes: its colour is not the eye's.
    decoy_near: float = 0.0
    #: Round 4: weight of a supervision of block ``attn_block``'s attention: the cross-entropy of the
    #: masked eye's row (heads averaged, as the app and the eval show it) onto the kept eye's cells.
    #: Round 3's in-painter followed a decoy moved in the other eye's stead 41% as often as the eye
    #: (a black eye's decoy, near-black, 87 to 97%): painting a black eye from a dark brown disc
    #: costs the L1 loss little, so the loss alone never taught the two apart. With decoys on the
    #: faces (``decoy_share``) the supervision says which of the two the masked eye must read. The
    #: eval's decoy control (the other eye *replaced* by a decoy, no eye to read) is not trained on.
    attn_weight: float = 0.0
    attn_block: int = 1

    @classmethod
    def from_settings(cls, extra: dict) -> InpaintRecipe:
        """The recipe from ``--set`` values (strings), each converted to its field's type."""
        return recipe_from(cls, extra, "the in-painter's")


class InpaintTrainer(OneModel):
    """AdamW with warm-up and cosine decay on valid faces, one eye masked per face."""

    name = "vit-inpaint"
    kinds = ("valid",)

    def __init__(self, s: Settings, cfg: InpaintConfig | None = None) -> None:
        self.s = s
        self.cfg = cfg or InpaintConfig()
        self.recipe = InpaintRecipe.from_settings(s.extra)
        torch.manual_seed(s.seed)
        self.model = InpaintViT(self.cfg)
        if self.recipe.init_from:
            self.model.load_state_dict(load_weights(Path(self.recipe.init_from)))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=0.05)

    def augment(self, batch: FaceBatch, seed: int, layout: str) -> FaceBatch:
        """``batch`` redrawn from its ``seed`` with the kept eye of some faces moved and, if the
        recipe says so, a decoy drawn on some (see above)."""
        n, r = len(batch), self.recipe
        rng = np.random.default_rng([seed, 37])
        moved = rng.uniform(0, 1, n) < r.shift_share
        rows, side = np.arange(n), masked_side(seed, n)
        step = rng.uniform(-1, 1, (n, 2)) * np.array([r.shift_y_px, r.shift_x_px]) * moved[:, None]  # (n, 2)
        apart = np.abs(batch.eyes[rows, 1 - side, 1] + step[:, 1] - batch.eyes[rows, side, 1])
        gap = np.minimum(KEEP_APART, np.abs(batch.eyes[:, 1, 1] - batch.eyes[:, 0, 1]))
        step[:, 1] *= apart >= gap  # no closer than KEEP_APART (or than it was): not into the mask
        shift = np.zeros((n, 2, 2), np.float32)  # (face, eye, (dy, dx))
        shift[rows, 1 - side] = step
        decoys = None
        if r.decoy_share > 0:  # its own generator: the moves above are drawn as they always were
            eyes = batch.eyes + shift
            decoys = self.decoy_places(batch, np.random.default_rng([seed, 43]), eyes, side)
            if r.decoy_near > 0:  # a third generator: the decoys drawn anywhere keep their places
                near = self.decoy_places(batch, np.random.default_rng([seed, 47]), eyes, side, True)
                pick = np.random.default_rng([seed, 53]).uniform(0, 1, n) < r.decoy_near
                decoys = np.where(pick[:, None] & ~np.isnan(near).any(1, keepdims=True), near, decoys)
        return make_faces(n, seed, self.kinds, Edit(shift=shift, decoys=decoys), layout)

    def decoy_places(
        self,
        batch: FaceBatch,
        rng: np.random.Generator,
        eyes: np.ndarray,
        side: np.ndarray,
        beside_kept: bool = False,
    ) -> np.ndarray:
        """(n, 2) a decoy's centre (y, x) for :attr:`InpaintRecipe.decoy_share` of the faces, NaN for
        the rest: on the head between its top and the mouth, on the canvas, :data:`DECOY_GAP` clear
        of both eyes (``eyes``, after their moves) and of every patch masked around eye ``side``
        (it must not be painted: nothing tells where it is). The first of :data:`DECOY_TRIES`
        uniform candidates that fits; none (rare): no decoy. ``beside_kept``: the candidates lie
        on a ring around the kept eye (after its move), from the least clear distance to
        :data:`NEAR_REACH` times it: about where the evaluation's decoy control puts its disc."""
        n, k = len(batch), DECOY_TRIES
        top, left, bottom, right = batch.face_box.T  # (n,) each
        cy, cx, ry, rx = (top + bottom) / 2, (left + right) / 2, (bottom - top) / 2, (right - left) / 2
        r = batch.eye_radius[:, 0]
        wanted = rng.uniform(0, 1, n) < self.recipe.decoy_share
        if beside_kept:
            kept = eyes[np.arange(n), 1 - side]  # (n, 2)
            reach = ((1 + 1.15) * r[:, None] + DECOY_GAP) * rng.uniform(1.001, NEAR_REACH, (n, k))
            angle = rng.uniform(0, 2 * np.pi, (n, k))
            y = kept[:, :1] + reach * np.sin(angle)
            x = kept[:, 1:] + reach * np.cos(angle)
        else:
            y = cy[:, None] + ry[:, None] * rng.uniform(-0.8, 0.38, (n, k))  # (n, k)
            x = cx[:, None] + rx[:, None] * rng.uniform(-0.9, 0.9, (n, k))
        rk = r[:, None]
        fits = (np.minimum(y, x) >= rk + 0.5) & (np.maximum(y, x) <= 32 - rk - 0.5)  # on the canvas
        inner_y, inner_x = ry[:, None] - rk - 0.5, rx[:, None] - rk - 0.5
        fits &= ((y - cy[:, None]) / inner_y) ** 2 + ((x - cx[:, None]) / inner_x) ** 2 < 1  # on the head
        fits &= y + rk + 0.5 <= cy[:, None] + 0.38 * ry[:, None] - 1.8  # above the mouth's highest top
        for e in (0, 1):
            apart = np.hypot(y - eyes[:, e, :1], x - eyes[:, e, 1:])
            fits &= apart >= (1 + 1.15) * rk + DECOY_GAP
        rows = np.arange(n)
        masked = eye_mask(eyes[rows, side], batch.eye_radius[rows, side], self.cfg)  # (n, N)
        touched = eye_mask(np.stack([y, x], -1).reshape(-1, 2), np.repeat(r / EYE_REACH[0], k), self.cfg)
        fits &= ~(touched.reshape(n, k, -1) & masked[:, None]).any(2)  # the decoy's patches (r + 0.5 px)
        pick = np.argmax(fits, 1)
        place = np.stack([y[rows, pick], x[rows, pick]], -1)
        return np.where((wanted & fits.any(1))[:, None], place, np.nan).astype(np.float32)

    def step(self, step: int, batch: FaceBatch, gen: torch.Generator) -> dict[str, float]:
        set_lr(self.opt, cosine_lr(step, self.s.steps, self.s.lr, warmup=300))
        self.logs: dict[str, float] = {}
        loss = self.loss(batch, masked_side(batch_seed(self.s.seed, step), len(batch)))
        self.update(loss)
        return {"loss": loss.item(), **self.logs}

    def loss(self, batch: FaceBatch, side: np.ndarray) -> torch.Tensor:
        """Weighted L1 over the masked patches' pixels of ``batch``, eye ``side[i]`` of face i masked
        (and over the visible ones' if the recipe weights them)."""
        x = to_tensor(batch.images)  # (B, 3, 32, 32)
        rows = np.arange(len(x))
        centres, radii = batch.eyes[rows, side], batch.eye_radius[rows, side]  # (B, 2), (B,)
        mask = torch.from_numpy(eye_mask(centres, radii, self.cfg))  # (B, N)
        masked = pixel_mask(mask, self.cfg)  # (B, 1, 32, 32)
        weight = masked * (1 + EYE_WEIGHT * near_eye(centres, radii))  # (B, 1, 32, 32)
        if self.recipe.visible_weight > 0:  # else the first recipe's loss, as it was
            weight = weight + self.recipe.visible_weight * (1 - masked)
        painted, attention = self.forward(x, mask)
        err = (painted - x).abs()  # (B, 3, 32, 32)
        loss = (err * weight).sum() / (3 * weight.sum())
        if attention is None:  # else round 4's supervision: the masked eye (source 0) reads the kept one
            return loss
        eyes = batch.eyes[rows[:, None], np.stack([side, 1 - side], 1)]  # (B, 2 (masked, kept), 2)
        found = [(eyes[b], float(batch.eye_radius[b, 1 - side[b]])) for b in rows]
        seeking, _ = eye_to_eye_loss(attention, (self.cfg.grid, self.cfg.grid), found, sources=(0,))
        self.logs = {"paint": loss.item(), "attn": seeking.item()}
        return loss + self.recipe.attn_weight * seeking

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The painted image and, when the recipe supervises it, block ``attn_block``'s attention
        (B, N, N), heads averaged; otherwise None and the model's own forward, as it always was."""
        if self.recipe.attn_weight <= 0:
            return self.model(x, mask), None
        h, attention = self.model.embed(x, mask), None
        for i, block in enumerate(self.model.blocks):
            if i == self.recipe.attn_block:
                attention = block_attention(block, h)
            h = block(h)
        return unpatchify(self.model.decoder(self.model.norm(h)), self.cfg), attention

    def export(self, out_dir: Path) -> None:
        save_weights(out_dir, {"kind": "vit-inpaint", **self.cfg.to_dict()}, self.model.state_dict())


def block_attention(block: nn.TransformerEncoderLayer, h: torch.Tensor) -> torch.Tensor:
    """(B, N, N): the softmax attention of a pre-norm encoder block on its input ``h`` (B, N, D),
    heads averaged: its own ``norm1`` and ``in_proj`` (no mask, no dropout, as the in-painter runs
    it), recomputed with a graph since ``nn.MultiheadAttention`` gives no weights on its fast path."""
    attn = block.self_attn
    q, k, _ = F.linear(block.norm1(h), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    B, N, D = q.shape
    q, k = (t.view(B, N, attn.num_heads, D // attn.num_heads).transpose(1, 2) for t in (q, k))
    return torch.softmax(q @ k.transpose(-1, -2) / (D // attn.num_heads) ** 0.5, -1).mean(1)


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
