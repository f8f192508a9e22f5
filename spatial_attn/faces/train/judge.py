"""Training the judge (``spatial-attn train judge``): the CNN of :mod:`spatial_attn.models.judge`.

The ViT judge's recipe and data (:mod:`.vit`: the nine face kinds, valid faces 3 times as often,
``eye_shape`` twice, noise on half of every batch, blur on a quarter) with the fifth recipe's
switches *on* by default, since they are what this judge is for (issue 23): every head moved by up
to :data:`RECIPE` ``head_shift_px`` and scaled, a quarter of valid faces drawn without a mouth
and labelled ``no_mouth``, half of the shape mismatches drawn as the protocol's soft pairs and
weighted up. A ``--set`` overrides any of them. The ViT learnt these far too slowly (45% batch
accuracy at step 1,900); a CNN has no position embedding to unlearn.
"""

from __future__ import annotations

from torch import nn

from ...models.judge import Judge, JudgeConfig
from .common import Settings
from .vit import ViTTrainer

DEFAULTS = {"steps": 6000, "batch_size": 128, "lr": 2e-3}
#: The recipe's switches (:class:`~.vit.JudgeRecipe`) this judge trains with unless ``--set`` says otherwise.
RECIPE = {
    "head_shift_px": "5",
    "head_scale_min": "0.75",
    "head_scale_max": "1.1",
    "mouthless_share": "0.25",
    "hard_pair_share": "0.5",
    "hard_pair_weight": "2",
}


class JudgeTrainer(ViTTrainer):
    """The ViT judge's trainer with the CNN in place of the ViT and the recipe on."""

    name = "judge-faces"
    kind = "judge"

    def __init__(self, s: Settings) -> None:
        if s.extra.get("init_from"):  # the inherited loader widens a ViT's head, not this CNN's
            raise SystemExit(
                "train judge: init_from is not supported (it starts a ViT judge); train from scratch"
            )
        s.extra = {**RECIPE, **s.extra}  # in place: the run's training.json then records the whole recipe
        super().__init__(s)

    def build(self, classes: int) -> nn.Module:
        self.cfg = JudgeConfig(num_classes=classes)
        return Judge(self.cfg)
