"""Family 1: ``scaled_dot_product_attention`` called anywhere, with every argument honoured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa


class MapAttention(nn.Module):
    """A hand-written multi-head self-attention over a feature map that calls SDPA."""

    def __init__(self, channels: int = 32, heads: int = 4, kv_heads: int | None = None) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.d = channels // heads
        self.q = nn.Conv2d(channels, heads * self.d, 1)
        self.kv = nn.Conv2d(channels, 2 * self.kv_heads * self.d, 1)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        q = self.q(x).reshape(b, self.heads, self.d, h * w).transpose(-1, -2)  # (B, h, N, d)
        k, v = self.kv(x).reshape(b, 2, self.kv_heads, self.d, h * w).transpose(-1, -2).unbind(1)
        return q, k, v

    def forward(self, x: torch.Tensor, **sdpa_kwargs) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return F.scaled_dot_product_attention(q, k, v, **sdpa_kwargs)


def _capture(model: MapAttention, x: torch.Tensor, **kwargs):
    with torch.no_grad(), sa.capture(model) as cap:
        model(x, **kwargs)
    assert len(cap.layers) == 1 and not cap.problems
    return cap.layers[0]


def test_default_scale_rows_equal_softmax():
    model, x = MapAttention(), torch.randn(2, 32, 6, 5)
    layer = _capture(model, x)
    q, k, _ = model.qkv(x)
    assert layer.name == "sdpa" and layer.family == "sdpa"
    assert layer.query_grid == (6, 5) and layer.key_grid == (6, 5) and layer.heads == 4
    assert layer.verified is True
    assert_rows_match(layer, reference_probs(q, k, 8**-0.5))


def test_explicit_scale():
    model, x = MapAttention(), torch.randn(1, 32, 4, 4)
    layer = _capture(model, x, scale=0.05)
    q, k, _ = model.qkv(x)
    assert_rows_match(layer, reference_probs(q, k, 0.05))


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_attn_mask(kind):
    model, x = MapAttention(), torch.randn(1, 32, 4, 4)
    allowed = torch.rand(1, 4, 16, 16) > 0.3
    allowed[..., 0] = True  # every query keeps at least one key
    mask = allowed if kind == "bool" else torch.randn(1, 4, 16, 16)
    layer = _capture(model, x, attn_mask=mask)
    q, k, _ = model.qkv(x)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")) if kind == "bool" else mask
    assert layer.verified is True
    assert_rows_match(layer, reference_probs(q, k, 8**-0.5, additive))


def test_is_causal():
    model, x = MapAttention(), torch.randn(1, 32, 4, 4)
    layer = _capture(model, x, is_causal=True)
    q, k, _ = model.qkv(x)
    causal = torch.full((16, 16), float("-inf")).triu(1)
    assert_rows_match(layer, reference_probs(q, k, 8**-0.5, causal))
    assert layer.row(0, 0)[0, 1] == 0  # the first pixel sees only itself


def test_enable_gqa_repeats_key_heads():
    model, x = MapAttention(heads=4, kv_heads=2), torch.randn(1, 32, 4, 4)
    layer = _capture(model, x, enable_gqa=True)
    q, k, _ = model.qkv(x)
    assert layer.heads == 4 and layer.verified is True
    assert_rows_match(layer, reference_probs(q, k.repeat_interleave(2, dim=1), 8**-0.5))


def test_column_equals_reference_column():
    model, x = MapAttention(), torch.randn(1, 32, 5, 6)
    layer = _capture(model, x)
    q, k, _ = model.qkv(x)
    probs = reference_probs(q, k, 8**-0.5)
    j = 2 * 6 + 3
    for head in range(4):
        expected = probs[0, head, :, j].reshape(5, 6).numpy()
        torch.testing.assert_close(
            torch.from_numpy(layer.column(2, 3, head=head)), torch.from_numpy(expected)
        )
    torch.testing.assert_close(torch.from_numpy(layer.column(2, 3)), probs[0, :, :, j].mean(0).reshape(5, 6))


def test_sdpa_in_a_named_submodule_takes_its_name_and_repeats_are_numbered():
    block = nn.ModuleDict({"attn": MapAttention()})

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = block

        def forward(self, x):
            return self.block["attn"](self.block["attn"](x).transpose(-1, -2).reshape(x.shape))

    net, x = Net(), torch.randn(1, 32, 4, 4)
    with torch.no_grad(), sa.capture(net) as cap:
        net(x)
    assert cap.layers.names() == ["block.attn", "block.attn#2"]
    assert cap.layers["block.attn#2"].query_grid == (4, 4)


def test_logits_and_token_probs_show_how_a_row_is_made():
    model, x = MapAttention(), torch.randn(1, 32, 4, 4)
    mask = torch.randn(1, 4, 16, 16)
    layer = _capture(model, x, attn_mask=mask)
    q, k, _ = model.qkv(x)
    with torch.no_grad():
        expected = (q[0, 2, 9] @ k[0, 2].T) * 8**-0.5 + mask[0, 2, 9]  # query cell (2, 1) = token 9
    np.testing.assert_allclose(layer.logits(2, 1, head=2), expected.numpy(), atol=1e-5)
    probs = layer.token_probs(2, 1, head=2)
    np.testing.assert_allclose(probs, torch.softmax(expected, -1).numpy(), atol=1e-6)
    assert layer.keys.describe(9) == "cell (2, 1)"
    with pytest.raises(ValueError, match="per head"):
        layer.logits(2, 1, head=None)
