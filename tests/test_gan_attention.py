"""Families 3 and 4: SAGAN's ``Self_Attn`` and BigGAN's attention with max-pooled keys.

Both modules are written here from the papers' definitions; references recompute the energies from
the modules' own convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa


class SelfAttn(nn.Module):
    """SAGAN (Zhang et al. 2019): unscaled q^T k over C/8 channels, softmax over keys, gamma residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        query = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)  # (B, N, C/8)
        key = self.key_conv(x).view(b, -1, h * w)  # (B, C/8, N)
        attention = self.softmax(torch.bmm(query, key))  # (B, N, N)
        value = self.value_conv(x).view(b, -1, h * w)  # (B, C, N)
        out = torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x, attention


class BigGanAttention(nn.Module):
    """BigGAN (Brock et al. 2019): keys and values max-pooled 2x2, output conv o, gamma residual."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ch = ch
        self.theta = nn.Conv2d(ch, ch // 8, 1, bias=False)
        self.phi = nn.Conv2d(ch, ch // 8, 1, bias=False)
        self.g = nn.Conv2d(ch, ch // 2, 1, bias=False)
        self.o = nn.Conv2d(ch // 2, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).view(b, self.ch // 8, h * w)
        phi = F.max_pool2d(self.phi(x), [2, 2]).view(b, self.ch // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), [2, 2]).view(b, self.ch // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)  # (B, N, N/4)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, self.ch // 2, h, w))
        return self.gamma * o + x


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, N, C), token y*W + x."""
    return t.flatten(2).transpose(1, 2).unsqueeze(1)


def test_sagan_self_attn_rows_columns_and_name():
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), SelfAttn(64))
    net[1].gamma.data.fill_(0.8)
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        plain = net[1](net[0](x))[0]
        with sa.capture(net) as cap:
            features = net[0](x)
            out, attention = net[1](features)
        probs = reference_probs(_tokens(net[1].query_conv(features)), _tokens(net[1].key_conv(features)), 1.0)
    assert torch.equal(out, plain)
    assert cap.layers.names() == ["1"]  # the module owning the projections, not its nn.Softmax
    layer = cap.layers[0]
    assert (layer.family, layer.query_grid, layer.key_grid, layer.heads) == (
        "sagan",
        (12, 10),
        (12, 10),
        1,
    )
    assert layer.verified is True
    assert_rows_match(layer, probs)
    torch.testing.assert_close(
        torch.from_numpy(layer.column(4, 7, batch=1)), probs[1, 0, :, 4 * 10 + 7].reshape(12, 10)
    )
    # the model's own returned matrix agrees too: row i = y*W + x is pixel (y, x)
    torch.testing.assert_close(torch.from_numpy(layer.row(5, 2)), attention[0, 5 * 10 + 2].reshape(12, 10))


def test_sagan_untrained_gamma_is_reported_unverifiable():
    attn = SelfAttn(32)  # gamma = 0 at initialisation
    with torch.no_grad(), sa.capture(attn) as cap:
        attn(torch.randn(1, 32, 4, 4))
    assert cap.layers[0].verified is None and "gamma is 0" in cap.layers[0].verification.detail


def test_biggan_pooled_keys():
    attn = BigGanAttention(64)
    x = torch.randn(2, 64, 8, 12)
    with torch.no_grad():
        with sa.capture(attn) as cap:
            attn(x)
        probs = reference_probs(_tokens(attn.theta(x)), _tokens(F.max_pool2d(attn.phi(x), [2, 2])), 1.0)
    layer = cap.layers[0]
    assert (layer.family, layer.query_grid, layer.key_grid) == ("biggan", (8, 12), (4, 6))
    assert layer.verified is True
    assert_rows_match(layer, probs)
    torch.testing.assert_close(torch.from_numpy(layer.column(1, 5)), probs[0, 0, :, 1 * 6 + 5].reshape(8, 12))
