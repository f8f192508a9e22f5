"""Issue 9, item 4: scores edited in place between ``q @ k`` and the softmax.

``attn += bias``, ``masked_fill_`` and slice assignment leave the scores tensor the same object, so a
capture that traced it to ``q @ k`` would recompute rows without the edit. The rows must be the
probabilities the model used: the reference here is what the model's own softmax returned, recorded
by the module itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_rows_match
from torch import nn

import spatial_attn as sa

H, W, HEADS, D = 8, 8, 2, 8


class EditedScores(nn.Module):
    """Hand-written multi-head attention over a feature map whose scores are edited in place."""

    def __init__(self, edit: str, channels: int = 16) -> None:
        super().__init__()
        self.edit = edit
        self.qkv = nn.Conv2d(channels, 3 * HEADS * D, 1)
        self.bias = nn.Parameter(torch.randn(HEADS, H * W, H * W))
        self.probs: torch.Tensor | None = None  # what the softmax returned, kept by the module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = self.qkv(x).reshape(b, 3, HEADS, D, H * W).transpose(-1, -2).unbind(1)  # (B, h, N, d)
        attn = q @ k.transpose(-1, -2) * D**-0.5  # (B, h, N, N)
        if self.edit == "add":
            attn += self.bias
        elif self.edit == "masked_fill":  # one query row only, and not one verification samples
            mask = torch.zeros_like(attn, dtype=torch.bool)
            mask[:, :, 1, 5:] = True
            attn.masked_fill_(mask, float("-inf"))
        elif self.edit == "slice":
            attn[:, 1, 9, :7] = 3.0
        attn = attn.softmax(dim=-1)
        self.probs = attn.detach().clone()
        return attn @ v


@pytest.mark.parametrize("edit", ["add", "masked_fill", "slice"])
@pytest.mark.parametrize("batch", [1, 2])
def test_rows_are_the_probabilities_after_an_in_place_edit(edit, batch):
    module, x = EditedScores(edit).eval(), torch.randn(batch, 16, H, W)
    with torch.no_grad(), sa.capture(module) as cap:
        module(x)
    (layer,) = cap.layers
    assert layer.query_grid == layer.key_grid == (H, W)
    assert layer.q is None, "the edited scores are not q k^T: the probabilities must be kept"
    assert layer.verified is True and "edited" in layer.verification.detail
    assert_rows_match(layer, module.probs, cells=H * W)  # every row, so an edit anywhere is caught


@pytest.mark.parametrize("batch", [1, 2])
def test_unedited_scores_still_keep_only_queries_and_keys(batch):
    module, x = EditedScores("none").eval(), torch.randn(batch, 16, H, W)
    with torch.no_grad(), sa.capture(module) as cap:
        module(x)
    (layer,) = cap.layers
    assert layer.q is not None and layer.verified is True
    assert_rows_match(layer, module.probs, cells=H * W)


@pytest.mark.parametrize("edit", ["masked_fill", "none"])
def test_inference_mode_compares_the_whole_scores(edit):
    """Inference tensors have no version counter: the edit is found by comparing values."""
    module, x = EditedScores(edit).eval(), torch.randn(2, 16, H, W)
    with torch.inference_mode(), sa.capture(module) as cap:
        module(x)
    (layer,) = cap.layers
    assert (layer.q is None) == (edit != "none")
    assert layer.verified is True
    assert_rows_match(layer, module.probs, cells=H * W)


def test_queries_edited_after_the_product_are_not_trusted():
    """q edited in place after ``q @ k`` (before the softmax) would make stored q wrong."""

    class LateEdit(EditedScores):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).reshape(x.shape[0], 3, HEADS, D, H * W).transpose(-1, -2).unbind(1)
            q = q.contiguous()
            attn = q @ k.transpose(-1, -2)
            q.mul_(2.0)  # the scores are what they are; the q tensor no longer is what made them
            attn = attn.softmax(dim=-1)
            self.probs = attn.detach().clone()
            return attn @ v

    module = LateEdit("none").eval()
    with torch.no_grad(), sa.capture(module) as cap:
        module(torch.randn(1, 16, H, W))
    assert_rows_match(cap.layers[0], module.probs, cells=H * W)


class CrossEdited(nn.Module):
    """Cross-attention to 5 text tokens whose scores are edited out of place before the softmax:
    not square, so only their descent from ``q @ k`` says they are attention scores."""

    def __init__(self, edit: str) -> None:
        super().__init__()
        self.edit = edit
        self.q, self.k = nn.Conv2d(16, HEADS * D, 1), nn.Linear(6, HEADS * D)
        self.probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self.q(x).reshape(b, HEADS, D, H * W).transpose(-1, -2)  # (B, h, N, d)
        k = self.k(text).reshape(b, -1, HEADS, D).transpose(1, 2)  # (B, h, 5, d)
        attn = q @ k.transpose(-1, -2)  # (B, h, N, 5)
        padding = torch.zeros_like(attn, dtype=torch.bool)
        padding[..., -2:] = True  # the last two text tokens are padding
        if self.edit == "masked_fill":
            attn = attn.masked_fill(padding, float("-inf"))
        elif self.edit == "where":
            attn = torch.where(padding, float("-inf"), attn)
        elif self.edit == "sub":
            attn = attn - padding.float() * 1e4
        elif self.edit == "view":
            attn = attn.reshape(b * HEADS, H * W, -1).view(b, HEADS, H * W, -1) * 2.0
        attn = attn.softmax(dim=-1)
        self.probs = attn.detach().clone()
        return attn


@pytest.mark.parametrize("edit", ["masked_fill", "where", "sub", "view"])
@pytest.mark.parametrize("batch", [1, 2])
def test_scores_edited_out_of_place_stay_a_layer_whatever_their_shape(edit, batch):
    module = CrossEdited(edit).eval()
    with torch.no_grad(), sa.capture(module) as cap:
        module(torch.randn(batch, 16, H, W), torch.randn(batch, 5, 6))
    (layer,) = cap.layers
    assert layer.query_grid == (H, W) and layer.key_grid is None and layer.verified is True
    for b in range(batch):
        for y, x in ((0, 0), (3, 5), (H - 1, W - 1)):
            for head in range(HEADS):
                expected = module.probs[b, head, y * W + x].numpy()
                np.testing.assert_allclose(layer.row(y, x, head=head, batch=b), expected, atol=1e-5)
