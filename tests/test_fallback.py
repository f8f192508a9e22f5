"""Family 7: hand-written attention with no adapter, found by watching softmax while modules run."""

from __future__ import annotations

import torch
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa


class EinsumAttention(nn.Module):
    """A user's own multi-head attention: einsum scores divided by sqrt(d), softmax over keys."""

    def __init__(self, channels: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        q, k, v = self.to_qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)  # (B, h, d, N)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qk(x)
        scores = torch.einsum("bhdi,bhdj->bhij", q, k) / q.shape[2] ** 0.5
        attn = scores.softmax(dim=-1)
        return torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(x.shape)


class BiasedAttention(nn.Module):
    """Scores plus a learned relative bias: no longer a plain product, so probabilities are kept."""

    def __init__(self, channels: int = 16, n: int = 16) -> None:
        super().__init__()
        self.q, self.k = nn.Conv2d(channels, 8, 1), nn.Conv2d(channels, 8, 1)
        self.bias = nn.Parameter(torch.randn(n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.q(x).flatten(2), self.k(x).flatten(2)  # (B, 8, N)
        return torch.softmax(q.transpose(1, 2) @ k + self.bias, dim=-1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([EinsumAttention(), EinsumAttention()])
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return torch.softmax(self.head(x.mean((2, 3))), dim=-1)  # a classifier softmax: not attention


def test_hand_written_attention_is_traced_to_queries_and_keys():
    net, x = Net().eval(), torch.randn(2, 32, 6, 4)
    with torch.no_grad():
        with sa.capture(net) as cap:
            net(x)
        inner = net.blocks[0].qk(x)
    assert cap.layers.names() == ["blocks.0", "blocks.1"]  # the classifier softmax is not a layer
    layer = cap.layers[0]
    assert (layer.family, layer.query_grid, layer.key_grid, layer.heads) == (
        "softmax",
        (6, 4),
        (6, 4),
        2,
    )
    assert layer.q is not None and layer.verified is True  # stored as q and k, never N x N
    q, k, _ = inner
    assert_rows_match(layer, reference_probs(q.transpose(-1, -2), k.transpose(-1, -2), 16**-0.5))


def test_untraceable_scores_keep_the_probabilities():
    attn, x = BiasedAttention(), torch.randn(1, 16, 4, 4)
    with torch.no_grad(), sa.capture(attn) as cap:
        probs = attn(x)
    layer = cap.layers[0]
    assert layer.q is None and layer.query_grid == (4, 4)
    assert_rows_match(layer, probs.unsqueeze(1))


def test_sagan_like_module_without_adapter_names_the_owner_not_its_softmax():
    class Owner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.g = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 2, 1)
            self.softmax = nn.Softmax(dim=-1)

        def forward(self, x):
            return self.softmax(torch.bmm(self.f(x).flatten(2).transpose(1, 2), self.g(x).flatten(2)))

    net = nn.Sequential(Owner())
    x = torch.randn(1, 8, 3, 5)
    with torch.no_grad(), sa.capture(net) as cap:
        probs = net(x)
    assert cap.layers.names() == ["0"] and cap.layers[0].q is not None
    assert_rows_match(cap.layers[0], probs.unsqueeze(1))
