"""Training the ViT judge: cross-entropy over the five face kinds, balanced, made on the fly.

The judge also scores generated samples, which carry a little sampler noise that no drawn face
has. A judge trained on clean faces only called a quarter of noisy *valid* faces (pixel noise of
sigma 12/255) ``eye_shape``; so half of every batch gets Gaussian pixel noise of a random
strength up to :data:`NOISE_MAX`, and the judge learns to read the eyes, not the texture.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import KINDS, FaceBatch
from ..models.vit import ViT, ViTConfig
from ..models.weights import save_weights
from .common import Settings, cosine_lr, set_lr, to_tensor

DEFAULTS = {"steps": 5000, "batch_size": 128, "lr": 1e-3}
NOISE_MAX = 24 / 127.5  # in the model's [-1, 1] units: 24 of 255 grey levels


class ViTTrainer:
    """AdamW with warm-up and cosine decay; every batch holds all five kinds in equal measure."""

    name = "vit-faces"
    kinds = KINDS

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.cfg = ViTConfig()
        torch.manual_seed(s.seed)
        self.model = ViT(self.cfg)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=0.05)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def step(self, step: int, batch: FaceBatch, gen: torch.Generator) -> dict[str, float]:
        set_lr(self.opt, cosine_lr(step, self.s.steps, self.s.lr, warmup=300))
        x = to_tensor(batch.images)  # (B, 3, 32, 32)
        logits = self.model(x + noisy_half(x, gen))  # (B, 5)
        labels = torch.from_numpy(batch.labels)
        loss = F.cross_entropy(logits, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        acc = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}

    def export(self, out_dir: Path) -> None:
        config = {"kind": "vit", **self.cfg.to_dict(), "labels": list(KINDS)}
        save_weights(out_dir, config, self.model.state_dict())


def noisy_half(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pixel noise for every other image of ``x``, each with its own strength in [0, NOISE_MAX]."""
    sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * NOISE_MAX
    sigma[1::2] = 0  # the other half stays clean: the judge must still be exact on drawn faces
    return sigma * torch.randn(x.shape, generator=gen)
