"""Issue 20, items 4 and 6: only softmax attention over tokens is a layer, and nothing is dropped
silently. Linear attention (Sana's ReLU kernel) and channel attention (XCiT's ``d x d``
cross-covariance softmax) are said in ``cap.problems`` as what they are; a layer whose verification
fails is never drawn as if it held. References come from the models' own projections, taken by the
tests' hooks in a separate forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference_probs
from torch import nn

import spatial_attn as sa
from spatial_attn.analysis.explore import shown


def capture_quietly(model: nn.Module, *args, **kwargs) -> tuple[object, sa.Capture]:
    """The model's output, and a capture of a second forward whose output must be bit-identical."""
    with torch.no_grad():
        plain = model(*args, **kwargs)
        with pytest.warns(UserWarning, match="not shown"), sa.capture(model) as cap:
            captured = model(*args, **kwargs)
    plain, captured = (getattr(o, "sample", o) for o in (plain, captured))
    assert torch.equal(plain, captured)
    return captured, cap


# -- Sana: ReLU linear self-attention beside softmax cross-attention --------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_sana_linear_attention_is_reported_and_its_cross_attention_kept(batch: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=8,
        patch_size=1,
    ).eval()
    x, text, t = torch.randn(batch, 4, 8, 8), torch.randn(batch, 5, 16), torch.full((batch,), 10)
    cross = model.transformer_blocks[0].attn2
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(cross, n).register_forward_hook(lambda _m, _a, out, n=n: seen.__setitem__(n, out))
        for n in ("to_q", "to_k")
    ]
    with torch.no_grad():
        model(x, text, t)
    for hook in hooks:
        hook.remove()
    _, cap = capture_quietly(model, x, text, t)
    assert cap.layers.names() == ["transformer_blocks.0.attn2"]
    (problem,) = cap.problems
    assert problem.startswith("transformer_blocks.0.attn1") and "linear attention" in problem
    q, k = (seen[n].reshape(batch, -1, 2, 8).transpose(1, 2) for n in ("to_q", "to_k"))
    probs = reference_probs(q, k, 8**-0.5)  # (B, 2, 64, 5)
    layer = cap.layers[0]
    assert layer.query_grid == (8, 8) and layer.key_grid is None and layer.verified is True
    for b in range(batch):
        for y, x_ in [(0, 0), (3, 5), (7, 7)]:
            np.testing.assert_allclose(layer.row(y, x_, batch=b), probs[b, :, y * 8 + x_].mean(0), atol=1e-5)


# -- XCiT: cross-covariance attention, a softmax over channels --------------------------------------


class XCA(nn.Module):
    """timm's ``XCA``: q and k ``(B, h, d, N)``, l2-normalised over the tokens, ``d x d`` scores scaled
    by a learned temperature, softmaxed over channels (``fused``: through SDPA with ``scale=1``)."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.fused_attn = heads, fused
        self.temperature = nn.Parameter(torch.rand(heads, 1, 1) + 0.5)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)  # (B, h, d, N)
        if self.fused_attn:
            q = F.normalize(q, dim=-1) * self.temperature
            k = F.normalize(k, dim=-1)
            x = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            attn = (q @ k.transpose(-2, -1)) * self.temperature  # (B, h, d, d)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.permute(0, 3, 1, 2).reshape(b, n, c))


class TokenAttention(nn.Module):
    """A plain softmax attention over the same tokens: still a layer beside the channel attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)


class TinyXCiT(nn.Module):
    """A strided patch embedding (4x4 tokens, head dim 8 < 16 tokens), an XCA block, then a token
    attention: XCiT's layout."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        self.xca = XCA(16, 2, fused)
        self.attn = TokenAttention(16, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # (B, N, C)
        x = x + self.xca(x)
        return x + self.attn(x)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
def test_xcit_channel_attention_is_reported_not_drawn(batch: int, fused: bool) -> None:
    torch.manual_seed(1)
    model = TinyXCiT(fused).eval()
    image = torch.randn(batch, 3, 16, 16)
    seen: list[torch.Tensor] = []
    hook = model.attn.qkv.register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.no_grad():
        model(image)
    hook.remove()
    _, cap = capture_quietly(model, image)
    assert cap.layers.names() == ["attn"]
    (problem,) = cap.problems
    assert problem.startswith("xca") and "channel attention" in problem
    q, k, _ = seen[0].reshape(batch, 16, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    probs = reference_probs(q, k, 8**-0.5)
    layer = cap.layers[0]
    assert layer.query_grid == (4, 4)
    for b in range(batch):
        np.testing.assert_allclose(layer.row(1, 2, batch=b), probs[b, :, 6].mean(0).reshape(4, 4), atol=1e-5)


# -- a layer whose verification fails is not drawn -----------------------------------------------------


def test_a_layer_that_does_not_reproduce_its_output_is_not_drawn() -> None:
    """A processor that scores with another temperature than the one the adapter reads: the rows
    the capture computes are not the model's, its verification says so, and no view draws it."""
    attention = pytest.importorskip("diffusers.models.attention_processor")

    class HotProcessor(attention.AttnProcessor2_0):
        def __call__(self, attn, hidden_states, *args, **kwargs):
            q, k, v = (attn.head_to_batch_dim(p(hidden_states)) for p in (attn.to_q, attn.to_k, attn.to_v))
            out = torch.softmax(4 * q @ k.transpose(1, 2), dim=-1) @ v
            return attn.to_out[0](attn.batch_to_head_dim(out))

    attn = attention.Attention(16, heads=2, dim_head=8, processor=HotProcessor()).eval()
    right = attention.Attention(16, heads=2, dim_head=8).eval()
    model = nn.Sequential(right, attn)
    with torch.no_grad(), sa.capture(model, grid=(4, 4)) as cap:
        model(torch.randn(2, 16, 16))
    with pytest.warns(UserWarning, match="does not reproduce"):
        drawn, refuted = shown(cap.layers)
    assert [layer.name for layer in drawn] == ["0"]
    assert len(refuted) == 1 and refuted[0].startswith("1 (diffusers): not shown")
