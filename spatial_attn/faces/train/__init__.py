"""Training loops for the bundled models (``spatial-attn train ddpm|sagan|vit``)."""

from __future__ import annotations

from . import ddpm, sagan, vit

#: model -> (trainer class, default steps / batch size / learning rate)
TRAINERS = {
    "ddpm": (ddpm.DDPMTrainer, ddpm.DEFAULTS),
    "sagan": (sagan.SAGANTrainer, sagan.DEFAULTS),
    "vit": (vit.ViTTrainer, vit.DEFAULTS),
}
