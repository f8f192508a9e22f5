"""Training the ViT judge: cross-entropy over the four face kinds, balanced, made on the fly."""

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


class ViTTrainer:
    """AdamW with warm-up and cosine decay; every batch holds all four kinds in equal measure."""

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
        logits = self.model(to_tensor(batch.images))  # (B, 4)
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
