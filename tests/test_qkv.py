"""Family 6: guided-diffusion's ``QKVAttention`` / ``QKVAttentionLegacy`` (scale c^-1/4 on q and k)
inside an ``AttentionBlock``, and GLIDE's encoder keys. The classes are written here after the
published layouts."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa


class QKVAttentionLegacy(nn.Module):
    """Heads outermost: qkv reshaped to (B*h, 3*c, T), then split."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor, encoder_kv: torch.Tensor | None = None) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        if encoder_kv is not None:  # GLIDE: text keys first
            ek, ev = encoder_kv.reshape(bs * self.n_heads, ch * 2, -1).split(ch, dim=1)
            k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """q, k, v outermost: qkv chunked in three, then heads."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum(
            "bct,bcs->bts",
            (q * scale).view(bs * self.n_heads, ch, length),
            (k * scale).view(bs * self.n_heads, ch, length),
        )
        weight = torch.softmax(weight, dim=-1)
        return torch.einsum("bts,bcs->bct", weight, v.reshape(bs * self.n_heads, ch, length)).reshape(
            bs, -1, length
        )


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int, legacy: bool) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.attention = (QKVAttentionLegacy if legacy else QKVAttention)(heads)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x.reshape(b, c, -1)))  # (B, 3C, T): token y*W + x
        h = self.attention(qkv) if encoder_kv is None else self.attention(qkv, encoder_kv)
        return (x.reshape(b, c, -1) + self.proj_out(h)).reshape(b, c, *spatial)


def _reference(block: AttentionBlock, x: torch.Tensor, legacy: bool, encoder_kv=None) -> torch.Tensor:
    b, c = x.shape[:2]
    heads, ch = block.attention.n_heads, c // block.attention.n_heads
    qkv = block.qkv(block.norm(x.reshape(b, c, -1)))
    if legacy:
        q, k, _ = qkv.reshape(b, heads, 3, ch, -1).unbind(2)  # (B, h, c, T)
    else:
        q, k, _ = (t.reshape(b, heads, ch, -1) for t in qkv.chunk(3, dim=1))
    if encoder_kv is not None:
        ek = encoder_kv.reshape(b, heads, 2, ch, -1)[:, :, 0]
        k = torch.cat([ek, k], dim=-1)
    return reference_probs(q.transpose(-1, -2), k.transpose(-1, -2), ch**-0.5)


@pytest.mark.parametrize("legacy", [True, False])
def test_qkv_attention_block(legacy):
    block = AttentionBlock(32, 4, legacy).eval()
    x = torch.randn(2, 32, 6, 8)
    with torch.no_grad():
        plain = block(x)
        with sa.capture(block) as cap:
            out = block(x)
        probs = _reference(block, x, legacy)
    assert torch.equal(plain, out)
    assert cap.layers.names() == ["attention"]
    layer = cap.layers[0]
    assert (layer.family, layer.query_grid, layer.key_grid, layer.heads) == (
        "qkv",
        (6, 8),
        (6, 8),
        4,
    )
    assert layer.verified is True, layer.verification
    assert_rows_match(layer, probs)


def test_glide_encoder_keys_come_first_and_are_special():
    block = AttentionBlock(32, 4, legacy=True).eval()
    x, encoder_kv = torch.randn(1, 32, 4, 4), torch.randn(1, 2 * 32, 5)
    with torch.no_grad():
        with sa.capture(block) as cap:
            block(x, encoder_kv)
        probs = _reference(block, x, True, encoder_kv)
    layer = cap.layers[0]
    assert layer.keys.labels == tuple(f"text {i}" for i in range(5)) and layer.verified is True
    assert_rows_match(layer, probs, k_offset=5)
    row = layer.attend(2, 1, head=2)
    assert row.special["text 3"] == pytest.approx(float(probs[0, 2, 2 * 4 + 1, 3]), abs=1e-6)
