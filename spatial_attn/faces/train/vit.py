"""Training the ViT judge: cross-entropy over the five face kinds, balanced, made on the fly.

The judge also scores generated samples, which carry a little sampler noise that no drawn face
has. A judge trained on clean faces only called a quarter of noisy *valid* faces (pixel noise of
sigma 12/255) ``eye_shape``; so half of every batch gets Gaussian pixel noise of a random
strength up to :data:`NOISE_MAX`, and the judge learns to read the eyes, not the texture.

The third judge also learns the mistakes generated samples make that the second let through (an
audit called valid 48% of faces with one eye smaller, 97% with a third eye, 74% with one eye 80
grey levels lighter, 62% of blurred shape mismatches): the four late kinds of
:data:`~spatial_attn.data.faces.KINDS`, and a blur of random strength up to :data:`BLUR_MAX` on a
quarter of every batch, valid faces included, since samples are soft and a soft matching pair is
still valid. Valid faces are :data:`VALID_WEIGHT` times as frequent as each kind of broken one, so
that with eight kinds of negative the judge still sees a valid face in ~3 of 11 images.

The third judge still let 14% of eye-shape mismatches through (34% blurred), the mistake a
generator makes most: the fourth draws ``eye_shape`` :data:`SHAPE_WEIGHT` times as often as each
other broken kind, and trains 8,000 steps. (The third judge called only 25% of ``--layout wide``
valid faces valid; a judge trained on the wide layout learned far more slowly, 45% batch accuracy
at step 2,000 against 88% on the standard layout, and was stopped.)

The fifth recipe (issue 23, :class:`JudgeRecipe`, all off by default so the fourth's command
still makes the fourth judge) answers an audit of the fourth: it called 99% of mouthless faces
valid, 16-22% of valid faces whose head was moved 4 px and 62% of heads scaled 0.8x (it learnt where
a face is, not what it is), and 35-58% of blurred soft shape pairs (ring/vbar, disc/plus, plus/ring).
So: the whole head moved and scaled at random (position and scale augmentation), mouthless valid
faces as a tenth label ``no_mouth`` (the mouth term), some shape mismatches drawn as a soft pair and
their loss weighted up (the hard pairs); and it can start from a trained judge (``init_from``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data import KINDS, SHAPES, Edit, FaceBatch, blur, make_faces
from ...models.vit import ViT, ViTConfig
from ...models.weights import load_weights, save_weights
from ..protocol import SOFT_PAIRS
from .common import Settings, cosine_lr, recipe_from, set_lr, to_tensor

DEFAULTS = {"steps": 5000, "batch_size": 128, "lr": 1e-3}
NOISE_MAX = 24 / 127.5  # in the model's [-1, 1] units: 24 of 255 grey levels
BLUR_MAX = 1.4  # pixels (Gaussian sigma); the eval's blurred probe uses 1.2
VALID_WEIGHT = 3
SHAPE_WEIGHT = 2


NO_MOUTH = "no_mouth"  # the judge's tenth label when the recipe has a mouth term


@dataclass(frozen=True)
class JudgeRecipe:
    """The fifth recipe's switches (``spatial-attn train vit --set FIELD=VALUE``); the defaults
    leave the fourth recipe exactly as it was."""

    head_shift_px: float = 0.0  # every head moved by up to this, uniformly, in y and in x
    head_scale_min: float = 1.0  # every head scaled by a factor uniform in [min, max]
    head_scale_max: float = 1.0
    mouthless_share: float = 0.0  # of valid faces, drawn without a mouth and labelled no_mouth
    hard_pair_share: float = 0.0  # of eye_shape faces, drawn as one of the protocol's SOFT_PAIRS
    hard_pair_weight: float = 1.0  # loss weight of a face whose eyes are a soft pair, mismatched
    init_from: str = ""  # a vit-faces folder to start from (a new label's head row starts at 0)

    @classmethod
    def from_settings(cls, extra: dict) -> JudgeRecipe:
        """The recipe from ``--set`` values (strings), each converted to its field's type."""
        return recipe_from(cls, extra, "the judge's")

    @property
    def labels(self) -> tuple[str, ...]:
        return KINDS + ((NO_MOUTH,) if self.mouthless_share > 0 else ())

    @property
    def edits(self) -> bool:
        """Whether batches are redrawn with an edit (nothing is drawn for the fourth recipe)."""
        moves = self.head_shift_px > 0 or (self.head_scale_min, self.head_scale_max) != (1.0, 1.0)
        return moves or self.mouthless_share > 0 or self.hard_pair_share > 0


class ViTTrainer:
    """AdamW with warm-up and cosine decay; every batch holds all five kinds in equal measure."""

    name = "vit-faces"
    kind = "vit"  # the exported config's "kind"
    kinds = ("valid",) * VALID_WEIGHT + KINDS[1:] + ("eye_shape",) * (SHAPE_WEIGHT - 1)

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.recipe = JudgeRecipe.from_settings(s.extra)
        torch.manual_seed(s.seed)
        self.model = self.build(len(self.recipe.labels))
        if self.recipe.init_from:
            self.model.load_state_dict(
                widened(load_weights(Path(self.recipe.init_from)), self.cfg.num_classes)
            )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=0.05)

    def build(self, classes: int) -> nn.Module:
        """The classifier to train (the judge's CNN, :mod:`.judge`, builds its own)."""
        self.cfg = ViTConfig(num_classes=classes)
        return ViT(self.cfg)

    def augment(self, batch: FaceBatch, seed: int, layout: str) -> FaceBatch:
        """``batch`` redrawn from its ``seed`` with the recipe's edits, labels following them: the
        head moved and scaled, valid faces mouthless (``no_mouth``), mismatches drawn as soft pairs.
        Its own generator (``[seed, 29]``): the step's noise and blur draws stay as they were."""
        r = self.recipe
        if not r.edits:
            return batch
        rng, n = np.random.default_rng([seed, 29]), len(batch)
        mouthless = (batch.labels == 0) & (rng.uniform(0, 1, n) < r.mouthless_share)
        pairs = np.array([[SHAPES.index(a), SHAPES.index(b)] for a, b in SOFT_PAIRS])[rng.integers(0, 3, n)]
        pairs = np.where(rng.integers(0, 2, (n, 1)) == 1, pairs, pairs[:, ::-1])
        hard = (batch.labels == KINDS.index("eye_shape")) & (rng.uniform(0, 1, n) < r.hard_pair_share)
        edit = Edit(
            head_shift=rng.uniform(-r.head_shift_px, r.head_shift_px, (n, 2)),
            head_scale=rng.uniform(r.head_scale_min, r.head_scale_max, n),
            mouthless=mouthless,
            shapes=np.where(hard[:, None], pairs, -1),
        )
        out = make_faces(n, seed, self.kinds, edit, layout)
        labels = np.where(mouthless, len(KINDS), out.labels)  # no_mouth is the label after KINDS
        return dataclasses.replace(out, labels=labels)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def step(self, step: int, batch: FaceBatch, gen: torch.Generator) -> dict[str, float]:
        set_lr(self.opt, cosine_lr(step, self.s.steps, self.s.lr, warmup=300))
        x = to_tensor(blurred_quarter(batch.images, gen))  # (B, 3, 32, 32)
        logits = self.model(x + noisy_half(x, gen))  # (B, classes)
        labels = torch.from_numpy(batch.labels)
        if self.recipe.hard_pair_weight == 1.0:
            loss = F.cross_entropy(logits, labels)
        else:
            w = torch.from_numpy(np.where(soft_pair(batch), self.recipe.hard_pair_weight, 1.0)).float()
            loss = (F.cross_entropy(logits, labels, reduction="none") * w).sum() / w.sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        acc = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}

    def export(self, out_dir: Path) -> None:
        config = {"kind": self.kind, **self.cfg.to_dict(), "labels": list(self.recipe.labels)}
        save_weights(out_dir, config, self.model.state_dict())


def noisy_half(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pixel noise for every other image of ``x``, each with its own strength in [0, NOISE_MAX]."""
    sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * NOISE_MAX
    sigma[1::2] = 0  # the other half stays clean: the judge must still be exact on drawn faces
    return sigma * torch.randn(x.shape, generator=gen)


def blurred_quarter(images: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """Every fourth image of ``images`` (n, 32, 32, 3) blurred, each with sigma in [0, BLUR_MAX]."""
    sigma = torch.rand(len(images), generator=gen).numpy() * BLUR_MAX
    sigma[np.arange(len(images)) % 4 != 0] = 0
    return blur(images, sigma)


def soft_pair(batch: FaceBatch) -> np.ndarray:
    """(n,) bool: the faces labelled eye_shape whose two eyes are one of the protocol's SOFT_PAIRS."""
    pairs = {frozenset((SHAPES.index(a), SHAPES.index(b))) for a, b in SOFT_PAIRS}
    found = np.array([frozenset(p) in pairs for p in batch.eye_shape.tolist()])
    return found & (batch.labels == KINDS.index("eye_shape"))


def widened(state: dict[str, torch.Tensor], classes: int) -> dict[str, torch.Tensor]:
    """A trained judge's weights for a head of ``classes`` outputs: its rows kept, new labels'
    rows 0 (their logit starts at the bias, 0, so it begins by not claiming any face)."""
    out = dict(state)
    for key in ("head.weight", "head.bias"):
        old = state[key]
        out[key] = torch.cat([old, torch.zeros((classes - len(old), *old.shape[1:]), dtype=old.dtype)])
    return out
