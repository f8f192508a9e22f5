"""Verification knows the dtype a layer ran in: correct bfloat16 and float16 layers pass, wrong ones fail.

A model in half precision rounds its attention output to 8 (bfloat16) or 11 (float16) bits of
mantissa, so it differs from the float32 rows recomputed from its own q, k and v by that rounding;
a tolerance fit for float32 flagged every bfloat16 layer of a ViT. The mutation that must still be
caught: a capture that keeps two heads swapped (every family with more than one head).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_gan_attention import SelfAttn
from torch import nn

import spatial_attn as sa
from spatial_attn.engine.layer import QKScores

HALF = (torch.bfloat16, torch.float16)


class SdpaBlock(nn.Module):
    """timm's fused attention block: one qkv linear, SDPA, output projection, residual."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, N, d)
        return x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class SoftmaxBlock(SdpaBlock):
    """The same block written out by hand: ``softmax(q @ k^T * scale) @ v``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, N, d)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5  # (B, h, N, N)
        out = attn.softmax(dim=-1) @ v  # (B, h, N, d)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, c))


class TokenViT(nn.Module):
    """Patch embedding then ``blocks`` (each takes and returns ``(B, N, C)`` tokens)."""

    def __init__(self, *blocks: nn.Module, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(x).flatten(2).transpose(1, 2))  # (B, 64, C) from a 32x32 image


def _ddpm() -> tuple[nn.Module, tuple]:
    module = sa.load_model("ddpm-faces", pretrained=False).module
    return module, (torch.randn(1, 3, 32, 32), torch.tensor([500]))


def _sagan() -> tuple[nn.Module, tuple]:
    net = nn.Sequential(nn.Conv2d(3, 16, 2, stride=2), SelfAttn(16))
    net[1].gamma.data.fill_(0.5)
    return net, (torch.randn(1, 3, 32, 32),)


def _encoder() -> tuple[nn.Module, tuple]:
    layers = [
        nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=first)
        for first in (True, False)
    ]
    for layer in layers:  # as peaked as a trained model's: at initialisation every head is ~uniform,
        with torch.no_grad():  # and two ~uniform heads swapped change a post-norm output by < 1 ulp
            layer.self_attn.in_proj_weight[:128] *= 3  # queries and keys: logits x 9
    return TokenViT(*layers), (torch.randn(1, 3, 32, 32),)


class _Mha(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


#: name -> a model (float32, eval to be) and its float32 inputs; one per attention family
FAMILIES: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "sdpa": lambda: (TokenViT(SdpaBlock(), SdpaBlock()), (torch.randn(1, 3, 32, 32),)),
    "softmax": lambda: (TokenViT(SoftmaxBlock(), SoftmaxBlock()), (torch.randn(1, 3, 32, 32),)),
    "mha": lambda: (TokenViT(_Mha()), (torch.randn(1, 3, 32, 32),)),
    "mha-encoder": _encoder,
    "diffusers": _ddpm,
    "sagan": _sagan,
}


def run_family(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, tuple]:
    """The family's model and inputs, seeded, in ``dtype``."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers on .to(dtype): "modules to keep in float32: []"
        model, inputs = FAMILIES[name]()
        model = model.eval().to(dtype)
    return model, tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)


def _captured(name: str, dtype: torch.dtype) -> list[sa.AttentionLayer]:
    model, inputs = run_family(name, dtype)
    with torch.no_grad(), sa.capture(model) as cap:
        model(*inputs)
    assert cap.layers and not cap.problems
    return list(cap.layers)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", FAMILIES)
def test_correct_half_precision_layers_are_verified(name: str, dtype: torch.dtype) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a false alarm warns
        layers = _captured(name, dtype)
        assert [layer.verified for layer in layers] == [True] * len(layers), [
            layer.verification.detail for layer in layers
        ]


class _SwappedHeads(QKScores):
    """A broken capture: the queries of heads 0 and 1 change places."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, *rest, **kwargs) -> None:
        heads = [1, 0, *range(2, q.shape[1])] if q.shape[1] > 1 else [0]
        super().__init__(q[:, heads], k, *rest, **kwargs)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "sagan"])  # SAGAN has one head
def test_swapped_heads_are_caught_in_half_precision(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules["spatial_attn.engine.capture"], "QKScores", _SwappedHeads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = [layer for layer in _captured(name, dtype) if layer.heads > 1]
        assert layers and [layer.verified for layer in layers] == [False] * len(layers)
