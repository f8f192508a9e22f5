"""Issue 9, item 5: nothing invented. A softmax is an attention layer only when both of its last
two axes are tokens; Efficient Attention and linear attention have no such softmax."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa


class EfficientAttention(nn.Module):
    """Shen et al. 2021 as in its reference code: keys softmaxed over positions ``(B, dk, N)``, queries
    over channels, then ``(keys @ values^T)^T @ queries``: no N x N map exists."""

    def __init__(self, channels: int = 16, key_channels: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kc = heads, key_channels
        self.keys = nn.Conv2d(channels, key_channels, 1)
        self.queries = nn.Conv2d(channels, key_channels, 1)
        self.values = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        keys = self.keys(x).reshape(b, self.kc, h * w)  # (B, dk, N)
        queries = self.queries(x).reshape(b, self.kc, h * w)
        values = self.values(x).reshape(b, c, h * w)
        hk, hv = self.kc // self.heads, c // self.heads
        out = []
        for i in range(self.heads):
            key = keys[:, i * hk : (i + 1) * hk].softmax(dim=2)  # over the N positions
            query = queries[:, i * hk : (i + 1) * hk].softmax(dim=1)  # over channels
            context = key @ values[:, i * hv : (i + 1) * hv].transpose(1, 2)  # (B, dk, dv)
            out.append((context.transpose(1, 2) @ query).reshape(b, hv, h, w))
        return torch.cat(out, dim=1) + x


class EfficientTokens(nn.Module):
    """The token-major form: ``q.softmax(-1)`` over features, ``k.softmax(-2)`` over tokens."""

    def __init__(self, channels: int = 16, d: int = 8) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(channels, d) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k = self.q(t).softmax(-1), self.k(t).softmax(-2)  # (B, N, d): over features / over tokens
        return q @ (k.transpose(1, 2) @ self.v(t))  # (B, N, d)


class LinearAttention(nn.Module):
    """Katharopoulos et al.: ``elu + 1`` features instead of a softmax."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(channels, channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)
        q, k = nn.functional.elu(self.q(t)) + 1, nn.functional.elu(self.k(t)) + 1
        kv = k.transpose(1, 2) @ self.v(t)  # (B, C, C)
        return (q @ kv) / (q @ k.sum(1, keepdim=True).transpose(1, 2))


class RealAttention(nn.Module):
    """A plain softmax attention beside them: still found, so the rule is not simply 'ignore all'."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.q, self.k = nn.Conv2d(channels, 8, 1), nn.Conv2d(channels, 8, 1)
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.q(x).flatten(2).transpose(1, 2), self.k(x).flatten(2).transpose(1, 2)  # (B, N, 8)
        self.seen = (q.detach(), k.detach())
        return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("module", [EfficientAttention, EfficientTokens, LinearAttention])
@pytest.mark.parametrize("side", [(4, 4), (8, 8), (2, 2)])  # (2, 2): dk = 4 tokens, the old trap
def test_softmax_over_features_is_not_a_layer(module, side):
    net = module().eval()
    with torch.no_grad(), sa.capture(net) as cap:
        net(torch.randn(2, 16, *side))
    assert cap.layers.names() == [] and cap.problems == []


def test_real_attention_beside_efficient_attention_is_still_captured():
    net = nn.Sequential(EfficientAttention(), RealAttention(), EfficientTokens()).eval()
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad(), sa.capture(net) as cap:
        net(x)
    assert cap.layers.names() == ["1"]
    q, k = net[1].seen
    assert_rows_match(cap.layers[0], reference_probs(q.unsqueeze(1), k.unsqueeze(1), 1.0))


def test_attention_that_cannot_be_read_is_reported():
    """diffusers ``Attention`` with fused projections is attention, but its q and k never appear."""
    attention = pytest.importorskip("diffusers.models.attention_processor")
    attn = attention.Attention(32, heads=2, dim_head=16).eval()
    attn.fuse_projections()
    attn.set_processor(attention.FusedAttnProcessor2_0())
    with torch.no_grad(), sa.capture(attn) as cap, pytest.warns(UserWarning, match="unfuse_qkv"):
        attn(torch.randn(1, 16, 32))
    assert cap.layers.names() == []
    assert len(cap.problems) == 1 and "unfuse_qkv_projections()" in cap.problems[0]


def test_attention_rotated_inside_its_processor_is_reported_not_shown():
    """HunyuanDiT's processor applies rotary embeddings after ``to_q``/``to_k``: the projections
    the capture can see are not what was multiplied, so the layer must not be shown."""
    attention = pytest.importorskip("diffusers.models.attention_processor")
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    attn = attention.Attention(32, heads=2, dim_head=16, processor=attention.HunyuanAttnProcessor2_0())
    rope = embeddings.get_2d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4))
    with torch.no_grad(), sa.capture(attn.eval(), grid=(4, 4)) as cap, pytest.warns(UserWarning):
        attn(torch.randn(2, 16, 32), image_rotary_emb=rope)
    assert cap.layers.names() == []
    assert len(cap.problems) == 1 and "image_rotary_emb" in cap.problems[0]
