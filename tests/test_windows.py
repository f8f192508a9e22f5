"""Windowed attention (issue 9, item 1): rows and columns on the whole token grid of each image.

The references never use the library's window map: each block's own partition (its padding, its
cyclic shift, its ``window_partition``) is applied to a map of token ids, which says which absolute
token sits in each window slot, and the per-window probabilities recorded at the model's softmax
(or returned by transformers with ``output_attentions``) are placed with it into a dense
``(B, h, N, N + 1)`` matrix whose last column is the mass on padding.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference_probs
from torch import nn

import spatial_attn as sa


def dense_reference(window_probs: torch.Tensor, slots: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """``(B*nW, h, a, a)`` window probabilities -> ``(B, h, N, N + 1)``; ``slots`` ``(nW, a)`` is the
    absolute token of each window slot (-1: padding, whose mass goes to the last column)."""
    windows, heads = slots.shape[0], window_probs.shape[1]
    dense = torch.zeros(batch, heads, n, n + 1)
    for b in range(batch):
        for w in range(windows):
            p = window_probs[b * windows + w]  # (h, a, a)
            for i, qi in enumerate(slots[w].tolist()):
                if qi < 0:
                    continue
                for j, kj in enumerate(slots[w].tolist()):
                    dense[b, :, qi, kj if kj >= 0 else n] += p[:, i, j]
    return dense


def check_layer(layer, dense: torch.Tensor, grid: tuple[int, int], padded: bool) -> None:
    """Every row and column of every head and image equals the dense reference, to 1e-5."""
    h, w = grid
    assert layer.query_grid == layer.key_grid == grid
    assert layer.batch_size == dense.shape[0] and layer.heads == dense.shape[1]
    for b in range(dense.shape[0]):
        for i in range(h * w):
            y, x = divmod(i, w)
            for head in range(layer.heads):
                expected = dense[b, head, i, : h * w].reshape(h, w).numpy()
                np.testing.assert_allclose(layer.row(y, x, head=head, batch=b), expected, atol=1e-5)
                column = dense[b, head, :, i].reshape(h, w).numpy()
                np.testing.assert_allclose(layer.column(y, x, head=head, batch=b), column, atol=1e-5)
            stats = layer.attend(y, x, batch=b)
            total = float(stats.values.sum()) + sum(stats.special.values())
            assert total == pytest.approx(1.0, abs=1e-5)
            if padded:
                expected_pad = float(dense[b, :, i, -1].mean())
                assert stats.special["padding"] == pytest.approx(expected_pad, abs=1e-6)
            else:
                assert float(stats.values.sum()) == pytest.approx(1.0, abs=1e-5)
    assert layer.verification.ok is True, layer.verification.detail


# -- timm's Swin block, reproduced with torch only (timm 1.0: NHWC input, roll, then pad) -------------


def timm_window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0], window[1], c)


class TimmWindowAttention(nn.Module):
    """timm's ``WindowAttention``: qkv, a relative-position bias (here a free parameter of the same
    shape), the shift mask, and either SDPA (``fused_attn``) or ``q @ k`` and ``nn.Softmax``."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], fused: bool) -> None:
        super().__init__()
        area = window[0] * window[1]
        self.num_heads, self.scale, self.fused_attn = heads, (dim // heads) ** -0.5, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.randn(1, heads, area, area))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b_, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rel_bias
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.view(1, nw, 1, n, n)).expand(b_ // nw, -1, -1, -1, -1)
            bias = bias.reshape(b_, self.num_heads, n, n)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            attn = self.softmax((q * self.scale) @ k.transpose(-2, -1) + bias)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(b_, n, c))


class TimmSwinBlock(nn.Module):
    """timm's ``SwinTransformerBlock._attn``: cyclic shift, pad, partition, attend, reverse."""

    def __init__(
        self, dim: int, heads: int, resolution: tuple[int, int], window: int, shift: int, fused: bool
    ):
        super().__init__()
        self.input_resolution = resolution
        self.window_size, self.shift_size = (window, window), (shift, shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmWindowAttention(dim, heads, self.window_size, fused)
        self.register_buffer("attn_mask", self.get_attn_mask(), persistent=False)

    def get_attn_mask(self) -> torch.Tensor | None:
        if not any(self.shift_size):
            return None
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        h = -(-self.input_resolution[0] // wh) * wh
        w = -(-self.input_resolution[1] // ww) * ww
        img = torch.zeros(1, h, w, 1)
        cnt = 0
        for hs in ((0, -wh), (-wh, -sh), (-sh, None)):
            for ws in ((0, -ww), (-ww, -sw), (-sw, None)):
                img[:, hs[0] : hs[1], ws[0] : ws[1], :] = cnt
                cnt += 1
        windows = timm_window_partition(img, self.window_size).view(-1, wh * ww)
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """The block's own way from a ``(B, H, W, C)`` map to ``(B*nW, a, C)`` window tokens."""
        if any(self.shift_size):
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        _, h, w, _ = x.shape
        pad_h = (self.window_size[0] - h % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - w % self.window_size[1]) % self.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        windows = timm_window_partition(x, self.window_size)
        return windows.view(-1, self.window_size[0] * self.window_size[1], x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        windows = self.attn(self.partition(self.norm1(x)), mask=self.attn_mask)
        hp, wp = (
            -(-h // self.window_size[0]) * self.window_size[0],
            -(-w // self.window_size[1]) * self.window_size[1],
        )
        wh, ww = self.window_size
        y = windows.view(b, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        y = y[:, :h, :w]
        if any(self.shift_size):
            y = torch.roll(y, shifts=self.shift_size, dims=(1, 2))
        return x + y


class TimmSwinStage(nn.Module):
    """A patch embedding and two blocks (the second shifted), as a timm Swin stage runs them."""

    def __init__(self, fused: bool, grid: tuple[int, int] = (10, 10), window: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, kernel_size=2, stride=2)
        self.blocks = nn.Sequential(
            TimmSwinBlock(16, 2, grid, window, 0, fused),
            TimmSwinBlock(16, 2, grid, window, window // 2, fused),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch_embed(image).permute(0, 2, 3, 1))  # (B, H, W, C)


def slots_of(partition, grid: tuple[int, int]) -> torch.Tensor:
    """``(nW, a)`` absolute token of each window slot, by the model's own ``partition`` of token ids
    (ids start at 1 so that the zeros padding adds read as -1)."""
    h, w = grid
    ids = torch.arange(1, h * w + 1, dtype=torch.float64).reshape(1, h, w, 1)
    windows = partition(ids)  # (nW, a, 1)
    return windows.reshape(windows.shape[0], -1).round().long() - 1


def softmax_then_capture(
    model: nn.Module, image: torch.Tensor, fused: bool, record
) -> tuple[list[torch.Tensor], sa.Capture]:
    """The probabilities the model's own softmax returns (every block unfused, recorded by
    ``record(model, run)``), then a capture of the same forward with the blocks ``fused`` or not."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.fused_attn = False
        probs = record(model, lambda: model(image))
        for block in model.blocks:
            block.attn.fused_attn = fused
        with sa.capture(model) as cap:
            model(image)
    return probs, cap


def recorded_softmax(model: nn.Module, run) -> list[torch.Tensor]:
    """The probabilities every ``nn.Softmax`` of ``model`` returned during ``run()``."""
    seen: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
        for m in model.modules()
        if isinstance(m, nn.Softmax)
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
def test_timm_swin_shifted_padded_windows(batch: int, fused: bool) -> None:
    torch.manual_seed(0)
    model = TimmSwinStage(fused).eval()
    image = torch.randn(batch, 3, 20, 20)  # a 10 x 10 grid in 4 x 4 windows: padded to 12 x 12
    probs, cap = softmax_then_capture(model, image, fused, recorded_softmax)  # per block
    assert cap.layers.names() == ["blocks.0.attn", "blocks.1.attn"]
    for layer, block, p in zip(cap.layers, model.blocks, probs, strict=True):
        slots = slots_of(block.partition, (10, 10))
        assert "padded to 12x12" in layer.queries.note
        check_layer(layer, dense_reference(p, slots, batch, 100), (10, 10), padded=True)
    assert "shifted by 2x2" in cap.layers[1].queries.note


# -- ViTDet / SAM: window_size and padding, no shift; heads folded into the batch axis ---------------


class SamAttention(nn.Module):
    """timm's ``vision_transformer_sam.Attention``: ``(B*heads, N, d)`` into SDPA or a softmax, with
    an additive ``(B*heads, N, N)`` bias (here a free parameter; SAM's decomposed relative positions)."""

    def __init__(self, dim: int, heads: int, tokens: int, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.scale, self.fused_attn = heads, (dim // heads) ** -0.5, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.randn(heads, tokens, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x.reshape(b, n, -1)).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
        bias = self.rel_bias.repeat(b, 1, 1)  # (B*heads, N, N)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            x = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1) @ v
        x = x.view(b, self.num_heads, n, -1).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x).view(b, h, w, -1)


def sam_window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """timm's / segment-anything's: pad to a multiple of the window, then partition."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


class SamBlock(nn.Module):
    """``window_size > 0``: windowed (padded); ``0``: global attention over the whole map."""

    def __init__(self, dim: int, heads: int, window_size: int, fused: bool, tokens: int = 42) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SamAttention(dim, heads, window_size**2 or tokens, fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.window_size > 0:
            y, (hp, wp) = sam_window_partition(y, self.window_size)
        y = self.attn(y)
        if self.window_size > 0:
            s = self.window_size
            y = y.view(b, hp // s, wp // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
            y = y[:, :h, :w]
        return x + y


class SamEncoder(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        self.blocks = nn.Sequential(SamBlock(16, 2, 4, fused), SamBlock(16, 2, 0, fused))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch_embed(image).permute(0, 2, 3, 1))


def softmax_outputs(_model: nn.Module, run) -> list[torch.Tensor]:
    """Every ``Tensor.softmax`` result of ``run()``, recorded by a patch that the test undoes."""
    seen: list[torch.Tensor] = []
    original = torch.Tensor.softmax

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out.detach().clone())
        return out

    torch.Tensor.softmax = recording
    try:
        run()
    finally:
        torch.Tensor.softmax = original
    return seen


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
def test_vitdet_sam_padded_windows_and_global_block(batch: int, fused: bool) -> None:
    torch.manual_seed(1)
    model = SamEncoder(fused).eval()
    image = torch.randn(batch, 3, 24, 28)  # a 6 x 7 grid in 4 x 4 windows: padded to 8 x 8
    (windowed, global_), cap = softmax_then_capture(
        model, image, fused, softmax_outputs
    )  # (B*nW*h, a, a), (B*h, N, N)
    heads = 2
    slots = slots_of(lambda ids: sam_window_partition(ids, 4)[0].reshape(-1, 16, 1), (6, 7))
    window_probs = windowed.reshape(-1, heads, 16, 16)  # (B*nW, h, a, a): SAM folds heads last
    check_layer(cap.layers["blocks.0.attn"], dense_reference(window_probs, slots, batch, 42), (6, 7), True)
    whole = global_.reshape(batch, heads, 42, 42)
    glob = cap.layers["blocks.1.attn"]
    assert glob.query_grid == (6, 7) and "padding" not in glob.keys.labels
    check_layer(glob, torch.cat([whole, torch.zeros(batch, heads, 42, 1)], -1), (6, 7), padded=False)


def test_windows_folded_into_heads_are_regrouped_without_copying_during_the_forward(monkeypatch) -> None:
    """SAM runs (B*nW*h, a, d): regrouping it per window keeps q and k as the model made them until
    a row is asked for (the float32 copies cost the forward a fifth of its time in a ViT)."""
    from spatial_attn.engine.layer import QKScores

    copied = []
    read = QKScores._fresh_sources  # every copy of the model's q and k reads them through this

    def spy(self: QKScores) -> tuple | None:
        copied.append(self._sources is not None)
        return read(self)

    monkeypatch.setattr(QKScores, "_fresh_sources", spy)
    torch.manual_seed(1)
    model = SamEncoder(fused=True).eval()
    with torch.no_grad(), sa.capture(model) as cap:
        model(torch.randn(2, 3, 24, 28))
    assert not any(copied)  # nothing copied during the forward
    layer = cap.layers["blocks.0.attn"]
    assert layer.scores.inner.shape[0] == 2 * 4  # (B*nW, h, a, a)
    layer.row(3, 5)
    assert any(copied)  # the first row makes the copies


# -- transformers' Swin: pads first, then shifts; input_dimensions passed to each layer -------------


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("version", ["swin", "swinv2"])
def test_transformers_swin_every_stage(batch: int, version: str) -> None:
    transformers = pytest.importorskip("transformers")
    config_class, model_class = {
        "swin": (transformers.SwinConfig, transformers.SwinModel),
        "swinv2": (transformers.Swinv2Config, transformers.Swinv2Model),  # eager only, cosine scores
    }[version]
    partition_windows = importlib.import_module(model_class.__module__).window_partition

    torch.manual_seed(2)
    config = config_class(  # built for 32 px: each layer's input_resolution is stale at 36
        image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4
    )
    config._attn_implementation = "eager"
    model = model_class(config).eval()
    image = torch.randn(batch, 3, 36, 36)  # stage 1: 18 x 18 (padded to 20), stage 2: 9 x 9 (to 12)
    layers = [blk for stage in model.encoder.layers for blk in stage.blocks]
    eager: list[torch.Tensor] = []  # each attention returns (output, weights) when eager
    hooks = [b.attention.register_forward_hook(lambda _m, _a, out: eager.append(out[1])) for b in layers]
    with torch.no_grad():
        model(image, output_attentions=True)
        for hook in hooks:
            hook.remove()
        config._attn_implementation = "sdpa" if version == "swin" else "eager"
        with sa.capture(model) as cap:
            model(image)
    assert len(cap.layers) == len(layers) == len(eager) == 4
    for layer, block, p in zip(cap.layers, layers, eager, strict=True):
        grid = (18, 18) if layer.name.startswith("encoder.layers.0") else (9, 9)

        def partition(ids: torch.Tensor, block=block, grid=grid) -> torch.Tensor:
            padded, _ = block.maybe_pad(ids, *grid)  # the block's own padding, then its shift
            shifted = torch.roll(padded, shifts=(-block.shift_size, -block.shift_size), dims=(1, 2))
            windows = partition_windows(shifted, block.window_size)
            return windows.reshape(windows.shape[0], -1, 1)

        dense = dense_reference(p, slots_of(partition, grid), batch, grid[0] * grid[1])
        check_layer(layer, dense, grid, True)
    assert "shifted by 2x2" in cap.layers[1].queries.note


def test_click_in_the_app_lands_on_the_absolute_token() -> None:
    """A click maps to the stage grid's cell, and the row it shows peaks inside that cell's window."""
    torch.manual_seed(3)
    model = TimmSwinStage(fused=True).eval()
    with torch.no_grad(), sa.capture(model) as cap:
        model(torch.randn(1, 3, 20, 20))
    layer = cap.layers["blocks.0.attn"]  # unshifted: windows are the 4 x 4 blocks of the grid
    cell = sa.cell_at((13, 2), (20, 20), layer.query_grid)
    assert cell == (6, 1)
    row = layer.row(*cell)
    outside = row.copy()
    outside[4:8, 0:4] = 0  # the window of cell (6, 1)
    assert float(row[4:8, 0:4].sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(outside.sum()) == 0.0


class GlobalInsideWindowedBlock(SamBlock):
    """A block that holds a ``window_size`` but also attends over the whole map: that call is no
    window, and keeps the grid the patch embedding stated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        tokens = x.reshape(b, 1, h * w, c)  # one head over every token
        return x + F.scaled_dot_product_attention(tokens, tokens, tokens).reshape(b, h, w, c)


def test_attention_in_a_windowed_block_that_is_not_windowed() -> None:
    torch.manual_seed(4)
    model = SamEncoder(fused=True)
    model.blocks = nn.Sequential(GlobalInsideWindowedBlock(16, 2, 4, fused=True))
    image = torch.randn(2, 3, 24, 28)
    with torch.no_grad(), sa.capture(model.eval()) as cap:
        model(image)
    (layer,) = cap.layers
    assert layer.query_grid == (6, 7) and "patch_embed" in layer.queries.note
    tokens = model.patch_embed(image).permute(0, 2, 3, 1).reshape(2, 1, 42, 16)
    expected = reference_probs(tokens, tokens, 16**-0.5)
    np.testing.assert_allclose(layer.row(2, 3, batch=1), expected[1, 0, 2 * 7 + 3].reshape(6, 7), atol=1e-5)


def test_a_block_whose_sizes_are_not_plain_ints_is_not_read_as_windows() -> None:
    """Sizes held as tensors (transformers' Swin under tracing) or a mask where a size may be passed
    (SwinV2's attention module) say nothing the map can trust."""
    from spatial_attn.engine.windows import read_window

    tokens = torch.zeros(2, 64, 8)
    block = nn.Identity()
    block.window_size, block.shift_size, block.input_resolution = 4, 2, (8, 8)
    assert read_window(block, (tokens, (8, 8)), {}, "b").grid == (8, 8)
    for attribute, value in [("window_size", torch.tensor(4)), ("shift_size", torch.tensor(2))]:
        odd = nn.Identity()
        odd.__dict__.update(vars(block))
        setattr(odd, attribute, value)
        assert read_window(odd, (tokens, (8, 8)), {}, "b") is None, attribute
    del block.input_resolution
    assert read_window(block, (tokens, torch.zeros(4, 16, 16)), {}, "b") is None
