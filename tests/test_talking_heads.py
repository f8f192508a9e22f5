"""Issue 9, item 6: weights mixed after the softmax (CaiT's talking heads).

timm's ``TalkingHeadAttn`` mixes heads before the softmax (``proj_l``) and again after it
(``proj_w``); the weights that multiply V are the mixed ones. The structure is reproduced with torch
only (timm needs torchvision), and the reference is the tensor the module itself multiplies with V.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_rows_match
from torch import nn

import spatial_attn as sa


class TalkingHeadAttn(nn.Module):
    """timm ``cait.TalkingHeadAttn``, line for line, plus a record of the weights that multiply V."""

    def __init__(self, dim: int = 24, num_heads: int = 3) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # (B, h, N, d)
        attn = q @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = attn.softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.attn_drop(attn)
        self.weights = attn.detach().clone()
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class TinyCaiT(nn.Module):
    """Patch embedding to a 4 x 5 grid, then two talking-head blocks (CaiT's self-attention stage)."""

    def __init__(self, dim: int = 24) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.ModuleList([TalkingHeadAttn(dim), TalkingHeadAttn(dim)])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # (B, N, C), token y*W + x
        for block in self.blocks:
            x = x + block(x)
        return x


@pytest.mark.parametrize("batch", [1, 2])
def test_talking_heads_show_the_weights_that_multiply_v(batch):
    model = TinyCaiT().eval()
    with torch.no_grad(), sa.capture(model) as cap:
        model(torch.randn(batch, 3, 16, 20))
    assert cap.layers.names() == ["blocks.0", "blocks.1"] and not cap.problems
    for layer, block in zip(cap.layers, model.blocks, strict=True):
        assert layer.query_grid == layer.key_grid == (4, 5)
        assert layer.verified is True and "changed after the softmax" in layer.verification.detail
        assert_rows_match(layer, block.weights, cells=20)


def test_identity_after_the_softmax_changes_nothing():
    """No mixing (identities; dropout in eval returns its input): the softmax rows are the weights."""
    model = TinyCaiT().eval()
    for block in model.blocks:
        block.proj_w = nn.Identity()  # type: ignore[assignment]
        block.proj_l = nn.Identity()  # type: ignore[assignment]
    with torch.no_grad(), sa.capture(model) as cap:
        model(torch.randn(2, 3, 16, 20))
    for layer, block in zip(cap.layers, model.blocks, strict=True):
        assert "changed" not in layer.verification.detail
        assert_rows_match(layer, block.weights, cells=20)
