"""The judge of the faces: a small convolutional classifier that scores the generators' samples.

Why a CNN and not the ViT (:mod:`.vit`, which judged until issue 23): the ViT learnt *where* a face
usually is. An audit found it called valid only 16-22% of valid faces whose head was moved 4 px,
and 62% of heads scaled 0.8x, and retrained with the head moved and scaled at random it learnt far
too slowly. Convolutions are translation equivariant and the features are pooled over the whole
image at the end, so where the head sits cannot be read off a position embedding: there is none.
What it must do is compare the two eyes (10 to 14 px apart, further on a scaled head), so the
stages downsample until one unit's receptive field covers the whole 32 x 32 face (47 px here).

It has no attention: the app does not show it (there is nothing to click); ``spatial-attn eval``
uses it for the judge probes and to score samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class JudgeConfig:
    image_size: int = 32
    widths: tuple[int, ...] = (16, 32, 64, 128)  # one stage each; every stage after the first halves H, W
    convs: int = 2  # 3x3 conv-norm-act layers per stage
    num_classes: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))  # config.json holds a list

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def receptive_field(self) -> int:
        """Pixels of input one unit of the last stage sees (3x3 convs, stride 2 opening each later stage)."""
        field, jump = 1, 1
        for i in range(len(self.widths)):
            for j in range(self.convs):
                field += 2 * jump
                if i > 0 and j == 0:
                    jump *= 2
        return field


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias: the norm has one), batch norm, GELU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()
    )


class Judge(nn.Module):
    """Conv stages, global average and max pooling side by side, a linear head."""

    def __init__(self, cfg: JudgeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stages, c_in = [], 3
        for i, width in enumerate(cfg.widths):
            first = conv_block(c_in, width, stride=2 if i > 0 else 1)  # each later stage halves H, W
            stages.append(nn.Sequential(first, *(conv_block(width, width, 1) for _ in range(cfg.convs - 1))))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(2 * c_in, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 32, 32) in [-1, 1] -> logits (B, num_classes)."""
        h = self.stages(x)  # (B, C, 4, 4): each unit sees the whole face
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)  # (B, 2C): what, and where strongest
        return self.head(pooled)  # (B, num_classes)
