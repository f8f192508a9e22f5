"""Family 5: ``nn.MultiheadAttention`` (ViT with a CLS token), need_weights on and off, and inside
``nn.TransformerEncoderLayer`` whose eval fast path never calls ``self_attn.forward``."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa


class TinyViT(nn.Module):
    """Patch 4 on 32x32 -> 8x8 patches + CLS first, an encoder of nn.TransformerEncoderLayer."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, norm_first: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 64, dropout=0.1, batch_first=True, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, 64, D): token y*8 + x
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)  # (B, 65, D)
        return self.encoder(tokens)


def _projections(mha: nn.MultiheadAttention, x: torch.Tensor, y: torch.Tensor | None = None):
    """q and k per head from MHA's packed weights: (B, h, L, hd), (B, h, S, hd)."""
    y = x if y is None else y
    wq, wk, _ = mha.in_proj_weight.chunk(3)
    bq, bk, _ = mha.in_proj_bias.chunk(3)
    b, hd = x.shape[0], mha.head_dim
    q = (x @ wq.T + bq).reshape(b, -1, mha.num_heads, hd).transpose(1, 2)
    k = (y @ wk.T + bk).reshape(b, -1, mha.num_heads, hd).transpose(1, 2)
    return q, k


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_fast_path_with_cls(norm_first):
    vit = TinyViT(norm_first=norm_first).eval()
    x = torch.randn(2, 3, 32, 32)
    inputs = {}
    handles = [
        layer.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        for i, layer in enumerate(vit.encoder.layers)
    ]
    with torch.no_grad():
        plain = vit(x)
        with sa.capture(vit) as cap:
            captured = vit(x)
    for h in handles:
        h.remove()
    assert torch.equal(plain, captured)  # the fused fast path still ran, bit for bit
    assert cap.layers.names() == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    for i, layer in enumerate(cap.layers):
        enc = vit.encoder.layers[i]
        assert layer.query_grid == layer.key_grid == (8, 8) and layer.heads == 4
        assert layer.queries.labels == ("CLS",) and layer.verified is True, layer.verification
        with torch.no_grad():
            src = inputs[i]
            attn_in = enc.norm1(src) if norm_first else src
            probs = reference_probs(*_projections(enc.self_attn, attn_in), enc.self_attn.head_dim**-0.5)
        assert_rows_match(layer, probs, q_offset=1, k_offset=1)
        row = layer.attend(2, 3, head=1, batch=1)
        assert row.special["CLS"] == pytest.approx(float(probs[1, 1, 1 + 2 * 8 + 3, 0]), abs=1e-6)
        cls_row = layer.attend_token(0)  # the CLS query itself
        torch.testing.assert_close(torch.from_numpy(cls_row.values), probs[0, :, 0, 1:].mean(0).reshape(8, 8))


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_direct(need_weights):
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    tokens = torch.randn(2, 6 * 5, 32)

    class OnMap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x):  # x: (B, C, 6, 5)
            t = x.flatten(2).transpose(1, 2)
            return self.attn(t, t, t, need_weights=need_weights, average_attn_weights=False)

    net = OnMap()
    x = tokens.transpose(1, 2).reshape(2, 32, 6, 5)
    with torch.no_grad(), sa.capture(net) as cap:
        _, weights = net(x)
    layer = cap.layers["attn"]
    assert layer.query_grid == (6, 5) and layer.verified is True
    with torch.no_grad():
        probs = reference_probs(*_projections(mha, tokens), mha.head_dim**-0.5)
    assert_rows_match(layer, probs)
    if need_weights:  # MHA's own per-head probabilities agree as well
        torch.testing.assert_close(torch.from_numpy(layer.row(1, 2, head=3)), weights[0, 3, 7].reshape(6, 5))


def test_bias_k_zero_attn_and_padding_mask_are_special_keys():
    mha = nn.MultiheadAttention(16, 2, batch_first=True, add_bias_kv=True, add_zero_attn=True).eval()
    t = torch.randn(1, 16, 16)  # a 4x4 map
    padding = torch.zeros(1, 16, dtype=torch.bool)
    padding[0, 5] = True
    with torch.no_grad(), sa.capture(mha, grid=(4, 4)) as cap:
        _, weights = mha(t, t, t, key_padding_mask=padding, average_attn_weights=False)
    layer = cap.layers[0]
    assert layer.keys.labels == ("bias_k", "zero") and layer.verified is True
    with torch.no_grad():
        q, k = _projections(mha, t)
        k = torch.cat([k, mha.bias_k.reshape(1, 1, 2, 8).transpose(1, 2), torch.zeros(1, 2, 1, 8)], dim=2)
        mask = torch.zeros(1, 1, 1, 18)
        mask[..., 5] = float("-inf")
        probs = reference_probs(q, k, 8**-0.5, mask)
    assert_rows_match(layer, probs)
    row = layer.attend(1, 1, head=0)
    assert row.values[1, 1] == 0  # padded key
    assert row.special["bias_k"] == pytest.approx(float(probs[0, 0, 5, 16]), abs=1e-6)
    torch.testing.assert_close(
        torch.from_numpy(layer.row(3, 0, head=1)), weights[0, 1, 12, :16].reshape(4, 4)
    )


def test_training_mode_dropout_is_flagged_not_verified():
    vit = TinyViT().train()
    with sa.capture(vit) as cap:
        vit(torch.randn(1, 3, 32, 32))
    assert all(layer.verified is None and "dropout" in layer.verification.detail for layer in cap.layers)
