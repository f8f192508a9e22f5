"""Training loops for the bundled models (``spatial-attn train ddpm|sagan|vit|vit-inpaint|judge``)."""

from __future__ import annotations

from . import ddpm, judge, sagan, vit, vit_inpaint

#: model -> (trainer class, default steps / batch size / learning rate)
TRAINERS = {
    "ddpm": (ddpm.DDPMTrainer, ddpm.DEFAULTS),
    "sagan": (sagan.SAGANTrainer, sagan.DEFAULTS),
    "vit": (vit.ViTTrainer, vit.DEFAULTS),
    "vit-inpaint": (vit_inpaint.InpaintTrainer, vit_inpaint.DEFAULTS),
    "judge": (judge.JudgeTrainer, judge.DEFAULTS),
}
