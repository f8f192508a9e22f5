"""Single-query attention (issue 9, item 7): one query over keys on their true grid.

CaiT's class attention and SigLIP's attention-pooling head ask one question of every patch; LeViT's
subsampling attention asks it from a coarser grid. The row is shown over the keys' grid (prefix
tokens apart); the one query is a 1x1 grid, so any click in the app shows its row. References are
computed here from tensors taken with the test's own hooks, or the model's own attention weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference_probs
from torch import nn

import spatial_attn as sa
from spatial_attn.analysis.explore import LayerClick


class ClassAttn(nn.Module):
    """timm's CaiT ``ClassAttn``: the query is the CLS token's alone, keys are CLS and every patch."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.scale, self.fused_attn = heads, (dim // heads) ** -0.5, fused
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x[:, 0]).unsqueeze(1).reshape(b, 1, self.num_heads, -1).permute(0, 2, 1, 3)  # (B, h, 1, d)
        k = self.k(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)  # (B, h, N, d)
        v = self.v(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        if self.fused_attn:
            x_cls = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x_cls = attn @ v
        return self.proj(x_cls.transpose(1, 2).reshape(b, 1, c))


class CaiTHead(nn.Module):
    """Patches from a strided convolution, then a class-attention block: ``cls += attn([cls, x])``."""

    def __init__(self, fused: bool, dim: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = ClassAttn(dim, 2, fused)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return cls + self.attn(torch.cat([cls, x], dim=1))


def _outputs(module: nn.Module, run) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
def test_cait_class_attention_row_over_the_patch_grid(batch: int, fused: bool) -> None:
    torch.manual_seed(0)
    model = CaiTHead(fused).eval()
    image = torch.randn(batch, 3, 16, 24)  # 4 x 6 patches
    (q,) = _outputs(model.attn.q, lambda: model(image))
    (k,) = _outputs(model.attn.k, lambda: model(image))
    q = q.reshape(batch, 1, 2, -1).transpose(1, 2)
    k = k.reshape(batch, 25, 2, -1).transpose(1, 2)
    probs = reference_probs(q, k, q.shape[-1] ** -0.5)  # (B, h, 1, 25): CLS, then 24 patches
    with torch.no_grad(), sa.capture(model) as cap:
        model(image)
    (layer,) = cap.layers
    assert layer.single_query and layer.query_grid == (1, 1) and layer.key_grid == (4, 6)
    assert layer.keys.labels == ("CLS",)
    for b in range(batch):
        for head in range(2):
            expected = probs[b, head, 0, 1:].reshape(4, 6).numpy()
            np.testing.assert_allclose(layer.row(0, 0, head=head, batch=b), expected, atol=1e-5)
        stats = layer.attend(0, 0, batch=b)
        assert stats.special["CLS"] == pytest.approx(float(probs[b, :, 0, 0].mean()), abs=1e-6)
        assert stats.distance is None  # the query is no pixel
    assert layer.verification.ok is True


def test_the_app_shows_a_single_query_layer_for_any_click() -> None:
    torch.manual_seed(0)
    model = CaiTHead(fused=True).eval()
    with torch.no_grad(), sa.capture(model) as cap:
        model(torch.randn(1, 3, 16, 24))
    (layer,) = cap.layers
    cells = {sa.cell_at(point, (16, 24), layer.query_grid) for point in [(0, 0), (15, 23), (8, 3)]}
    assert cells == {(0, 0)}
    caption = LayerClick(layer, (0, 0), 0, layer.row(0, 0)).caption()
    assert "1×1 queries → 4×6 keys" in caption and "every click shows its row" in caption


@pytest.mark.parametrize("batch", [1, 2])
def test_siglip_attention_pooling_head(batch: int) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=24,
        patch_size=4,
    )
    model = transformers.SiglipVisionModel(config).eval()
    image = torch.randn(batch, 3, 24, 24)
    head = model.head.attention  # nn.MultiheadAttention(probe, hidden, hidden)
    inputs: list[tuple] = []
    hook = head.register_forward_pre_hook(
        lambda _m, args, kwargs: inputs.append((args, kwargs)), with_kwargs=True
    )
    with torch.no_grad():
        model(image)
        hook.remove()
        ((args, _),) = inputs
        _, weights = head(*args, need_weights=True, average_attn_weights=False)  # (B, h, 1, 36)
        with sa.capture(model) as cap:
            model(image)
    layer = cap.layers["head.attention"]
    assert layer.single_query and layer.key_grid == (6, 6) and layer.keys.labels == ()
    for b in range(batch):
        for h in range(4):
            expected = weights[b, h, 0].reshape(6, 6).numpy()
            np.testing.assert_allclose(layer.row(0, 0, head=h, batch=b), expected, atol=1e-5)
        assert float(layer.row(0, 0, batch=b).sum()) == pytest.approx(1.0, abs=1e-5)
    assert layer.verification.ok is True


class SubsampleAttention(nn.Module):
    """timm's LeViT ``AttentionSubsample``: queries from every other cell of the 7x7 map (4x4),
    keys from all of it, scores plus a learned bias, then a softmax."""

    def __init__(self, dim: int = 16, heads: int = 2, resolution: int = 7) -> None:
        super().__init__()
        self.num_heads, self.scale, self.resolution = heads, (dim // heads) ** -0.5, resolution
        self.kv = nn.Linear(dim, 2 * dim)
        self.q = nn.Linear(dim, dim)
        out = (resolution + 1) // 2
        self.attention_biases = nn.Parameter(torch.randn(heads, out * out, resolution * resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        k, v = self.kv(x).view(b, n, self.num_heads, -1).permute(0, 2, 1, 3).chunk(2, dim=-1)
        sub = x.view(b, self.resolution, self.resolution, c)[:, ::2, ::2].reshape(b, -1, c)
        q = self.q(sub).view(b, -1, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases
        attn = attn.softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, -1, c)  # (B, 16, C)


class LeViTStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, kernel_size=4, stride=4)  # 28 x 28 -> 7 x 7
        self.attn = SubsampleAttention()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.attn(self.stem(image).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("batch", [1, 2])
def test_levit_subsampling_attention_keys_on_the_finer_grid(batch: int) -> None:
    torch.manual_seed(0)
    model = LeViTStage().eval()
    image = torch.randn(batch, 3, 28, 28)
    seen: list[torch.Tensor] = []
    hooks = [
        model.attn.q.register_forward_hook(lambda _m, _a, out: seen.append(out)),
        model.attn.kv.register_forward_hook(lambda _m, _a, out: seen.append(out)),
    ]
    with torch.no_grad():
        model(image)
        for hook in hooks:
            hook.remove()
        kv, q = seen  # kv runs first
        k = kv.view(batch, 49, 2, -1).permute(0, 2, 1, 3).chunk(2, dim=-1)[0]  # (B, h, 49, d)
        q = q.view(batch, 16, 2, -1).permute(0, 2, 1, 3)  # (B, h, 16, d)
        probs = reference_probs(q, k, model.attn.scale, model.attn.attention_biases[None])  # (B, h, 16, 49)
        with sa.capture(model) as cap:
            model(image)
    (layer,) = cap.layers
    assert layer.query_grid == (4, 4) and layer.key_grid == (7, 7)
    for b in range(batch):
        for i in range(16):
            for h in range(2):
                expected = probs[b, h, i].reshape(7, 7).numpy()
                np.testing.assert_allclose(layer.row(i // 4, i % 4, head=h, batch=b), expected, atol=1e-5)


def test_fewer_keys_than_queries_stay_text_even_when_they_would_fit_a_grid() -> None:
    """Cross-attention from a 6x6 map to 16 text tokens: 16 = 4x4 on a square image, yet only keys
    that outnumber the queries are looked for on a grid of their own."""
    torch.manual_seed(0)

    class CrossAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 8, kernel_size=4, stride=4)
            self.text = nn.Parameter(torch.randn(1, 1, 16, 8))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(image).flatten(2).transpose(1, 2)[:, None]  # (B, 1, 36, 8)
            text = self.text.expand(x.shape[0], -1, -1, -1)
            return F.scaled_dot_product_attention(x, text, text)

    model = CrossAttention().eval()
    with torch.no_grad(), sa.capture(model) as cap:
        model(torch.randn(1, 3, 24, 24))
    (layer,) = cap.layers
    assert layer.query_grid == (6, 6) and layer.key_grid is None
