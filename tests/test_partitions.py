"""Issue 20, item 1: one rule for what is a head and what is a window.

A call's leading axes are read against what the running block states (its heads, its window or
partition size, the map it received). Windows folded into the head axis are placed where the block
states its partition (transformers' ViTDet, whose blocks receive NCHW maps; Twins' locally-grouped
attention) and declined where it does not (NesT, Hiera), never averaged as heads; MaxViT's block and
grid attention land on the image grid. References are the probabilities the models' own softmax
returned (eager ``output_attentions``, or a recording of the softmax in a separate forward), placed by
each block's own partition function applied to a map of token ids.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_rows_match, reference_probs
from test_windows import check_layer, dense_reference, slots_of, softmax_outputs
from torch import nn

import spatial_attn as sa


def captured(model: nn.Module, *args, **kwargs) -> sa.Capture:
    """A capture of one forward, whose output must be bit-identical to the plain forward's."""
    with torch.no_grad():
        plain = model(*args, **kwargs)
        with sa.capture(model) as cap:
            again = model(*args, **kwargs)
    plain, again = (getattr(o, "last_hidden_state", o) for o in (plain, again))
    assert torch.equal(plain, again)
    return cap


# -- transformers' ViTDet: NCHW maps into its blocks, windows and heads folded together ---------------


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)], ids=["8x8", "6x10-padded"])
def test_transformers_vitdet_windows_on_the_grid(batch: int, size: tuple[int, int]) -> None:
    transformers = pytest.importorskip("transformers")
    partition = importlib.import_module(transformers.VitDetModel.__module__).window_partition
    torch.manual_seed(0)
    config = transformers.VitDetConfig(
        image_size=32,
        pretrain_image_size=32,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        window_size=4,
        window_block_indices=[0],
        use_relative_position_embeddings=True,
    )
    model = transformers.VitDetModel(config).eval()
    image = torch.randn(batch, 3, *size)
    eager: list[torch.Tensor] = []
    hooks = [
        layer.attention.register_forward_hook(lambda _m, _a, out: eager.append(out[1]))
        for layer in model.encoder.layer
    ]
    with torch.no_grad():
        model(image, output_attentions=True)
    for hook in hooks:
        hook.remove()
    cap = captured(model, image)
    grid = (size[0] // 4, size[1] // 4)
    n = grid[0] * grid[1]
    assert cap.layers.names() == [f"encoder.layer.{i}.attention" for i in (0, 1)] and not cap.problems
    slots = slots_of(lambda ids: partition(ids, 4)[0].reshape(-1, 16, 1), grid)
    windowed, global_ = cap.layers
    assert "in 4x4 windows" in windowed.queries.note
    padded = grid != (8, 8)
    check_layer(windowed, dense_reference(eager[0], slots, batch, n), grid, padded)
    assert global_.query_grid == grid and global_.heads == 2
    check_layer(global_, torch.cat([eager[1], torch.zeros(batch, 2, n, 1)], -1), grid, padded=False)


# -- MaxViT: block and grid partitions (timm's PartitionAttentionCl, reproduced with torch) ----------


def window_partition(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // size[0], size[0], w // size[1], size[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, size[0], size[1], c)


def window_reverse(windows: torch.Tensor, size: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    (h, w), c = hw, windows.shape[-1]
    x = windows.view(-1, h // size[0], w // size[1], size[0], size[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def grid_partition(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, size[0], h // size[0], size[1], w // size[1], c)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, size[0], size[1], c)


def grid_reverse(windows: torch.Tensor, size: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    (h, w), c = hw, windows.shape[-1]
    x = windows.view(-1, h // size[0], w // size[1], size[0], size[1], c)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(-1, h, w, c)


class AttentionCl(nn.Module):
    """timm's ``AttentionCl``: channels-last tokens of any leading shape, heads split after ``qkv``."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.dim_head, self.fused_attn = heads, dim // heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, restore = x.shape[0], x.shape[:-1]
        q, k, v = self.qkv(x).view(b, -1, self.num_heads, self.dim_head * 3).transpose(1, 2).chunk(3, dim=3)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)  # (B*nW, h, a, d)
        else:
            x = ((q * self.dim_head**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(*restore, -1))


class PartitionAttentionCl(nn.Module):
    """timm's MaxViT ``PartitionAttentionCl``: block (window) or grid partition, attention, reverse."""

    def __init__(self, dim: int, heads: int, partition: str, size: int, fused: bool) -> None:
        super().__init__()
        self.partition_block = partition == "block"
        self.partition_size = (size, size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = AttentionCl(dim, heads, fused)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        split = window_partition if self.partition_block else grid_partition
        return split(x, self.partition_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[1:3]
        reverse = window_reverse if self.partition_block else grid_reverse
        return x + reverse(self.attn(self.partition(self.norm1(x))), self.partition_size, hw)


class TinyMaxViT(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, kernel_size=2, stride=2)
        self.blocks = nn.Sequential(
            PartitionAttentionCl(16, 2, "block", 4, fused), PartitionAttentionCl(16, 2, "grid", 4, fused)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(image).permute(0, 2, 3, 1))  # (B, H, W, C)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
def test_maxvit_block_and_grid_attention_on_the_image_grid(batch: int, fused: bool) -> None:
    torch.manual_seed(1)
    model = TinyMaxViT(fused).eval()
    image = torch.randn(batch, 3, 16, 24)  # an 8 x 12 grid: 2 x 3 blocks of 4 x 4, or a 4 x 4 grid
    for block in model.blocks:
        block.attn.fused_attn = False
    probs = softmax_outputs(model, lambda: model(image))  # (B*nW, h, 16, 16) per block
    for block in model.blocks:
        block.attn.fused_attn = fused
    cap = captured(model, image)
    assert cap.layers.names() == ["blocks.0.attn", "blocks.1.attn"] and not cap.problems
    for layer, block, p in zip(cap.layers, model.blocks, probs, strict=True):
        slots = slots_of(lambda ids, block=block: block.partition(ids).reshape(-1, 16, 1), (8, 12))
        check_layer(layer, dense_reference(p, slots, batch, 96), (8, 12), padded=False)
    assert "grid attention" in cap.layers[1].queries.note


# -- Twins' locally-grouped attention: (B, windows, heads, a, d), windows stated by `ws` --------------


class LocallyGroupedAttn(nn.Module):
    """timm's Twins ``LocallyGroupedAttn``: pad to a multiple of ``ws``, windows before heads."""

    def __init__(self, dim: int, heads: int, ws: int, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.ws, self.fused_attn = heads, ws, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B*nW, ws*ws, C)`` as the forward cuts it."""
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, (-w) % self.ws, 0, (-h) % self.ws))
        hp, wp = x.shape[1:3]
        x = x.reshape(b, hp // self.ws, self.ws, wp // self.ws, self.ws, c).transpose(2, 3)
        return x.reshape(-1, self.ws * self.ws, c)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = size
        windows = self.partition(x.view(b, h, w, c)).reshape(b, -1, self.ws * self.ws, c)  # (B, nW, a, C)
        qkv = self.qkv(windows).reshape(b, windows.shape[1], -1, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, h, a, d)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * (c // self.num_heads) ** -0.5).softmax(dim=-1) @ v
        hp, wp = -(-h // self.ws) * self.ws, -(-w // self.ws) * self.ws
        out = out.transpose(2, 3).reshape(b, hp // self.ws, wp // self.ws, self.ws, self.ws, c)
        out = out.transpose(2, 3).reshape(b, hp, wp, c)[:, :h, :w]
        return self.proj(out.reshape(b, n, c))


class TinyTwins(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        self.attn = LocallyGroupedAttn(16, 2, 4, fused)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image)
        size = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        return x + self.attn(x, size)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
def test_twins_windows_folded_before_heads_on_the_grid(batch: int, fused: bool) -> None:
    torch.manual_seed(2)
    model = TinyTwins(fused).eval()
    image = torch.randn(batch, 3, 24, 36)  # a 6 x 9 grid in 4 x 4 windows: padded to 8 x 12
    model.attn.fused_attn = False
    (p,) = softmax_outputs(model, lambda: model(image))  # (B, nW, h, a, a)
    model.attn.fused_attn = fused
    cap = captured(model, image)
    (layer,) = cap.layers
    slots = slots_of(lambda ids: model.attn.partition(ids), (6, 9))
    check_layer(layer, dense_reference(p.reshape(-1, 2, 16, 16), slots, batch, 54), (6, 9), padded=True)


# -- NesT: heads before windows, (B, heads, T, N, d), no partition stated: declined ------------------


class NestAttention(nn.Module):
    """timm's NesT ``Attention`` on blockified ``(B, T, N, C)`` tokens: heads come before the blocks."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        qkv = self.qkv(x).reshape(b, t, n, 3, self.num_heads, c // self.num_heads).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv.unbind(0)  # (B, h, T, N, d)
        attn = ((q * (c // self.num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return (attn @ v).permute(0, 2, 3, 4, 1).reshape(b, t, n, c)


class TinyNest(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, kernel_size=2, stride=2)
        self.attn = NestAttention(16, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).permute(0, 2, 3, 1)  # (B, 8, 8, C)
        b, h, w, c = x.shape
        blocks = x.reshape(b, 2, h // 2, 2, w // 2, c).transpose(2, 3).reshape(b, 4, -1, c)  # blockify
        return blocks + self.attn(blocks)


@pytest.mark.parametrize("batch", [1, 2])
def test_nest_windows_on_the_head_axis_are_declined_not_averaged(batch: int) -> None:
    model = TinyNest().eval()
    with pytest.warns(UserWarning, match="head axis"):
        cap = captured(model, torch.randn(batch, 3, 16, 16))
    assert cap.layers.names() == []
    (problem,) = cap.problems
    assert problem.startswith("attn (softmax): not shown") and "8 = 4 x 2 heads" in problem


# -- Hiera and MAE: tokens the model reorders are not drawn row-major ---------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_hiera_unrolled_tokens_are_declined(batch: int) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.HieraConfig(
        image_size=[32, 32],
        patch_size=[3, 3],
        patch_stride=[2, 2],
        patch_padding=[1, 1],
        embed_dim=8,
        num_heads=[1, 2],
        depths=[1, 1],
        query_stride=[2, 2],
        masked_unit_size=[4, 4],
        masked_unit_attention=[True, False],
        embed_dim_multiplier=2.0,
        num_query_pool=1,
    )
    model = transformers.HieraModel(config).eval()
    with pytest.warns(UserWarning, match="unrolled"):
        cap = captured(model, torch.randn(batch, 3, 32, 32))
    assert cap.layers.names() == [] and len(cap.problems) == 2
    assert all("unrolled order" in p for p in cap.problems)


# -- nothing dropped silently --------------------------------------------------------------------


class Unplaceable(nn.Module):
    """Softmax attention over 10 tokens of a 3 x 7 image: no grid the model states, none of the
    image's aspect fits, so the call has no place; it is reported, not dropped."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = image.flatten(1).reshape(image.shape[0], 10, -1)  # (B, 10, 6): no grid
        return torch.softmax(tokens @ tokens.transpose(1, 2), dim=-1) @ tokens


def test_an_attention_call_that_fits_no_grid_is_reported() -> None:
    with pytest.warns(UserWarning, match="fit no grid"):
        cap = captured(Unplaceable(), torch.randn(2, 3, 4, 5))
    assert cap.layers.names() == []
    assert len(cap.problems) == 1 and "its 10 tokens fit no grid" in cap.problems[0]


# -- MobileViT: unfolded patches on the batch axis, said where the user looks ----------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_mobilevit_unfolded_patches_are_drawn_per_sequence_and_say_so(batch: int) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.MobileViTConfig(
        image_size=32,
        hidden_sizes=[16, 20, 24],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32],
        num_attention_heads=2,
    )
    model = transformers.MobileViTModel(config).eval()
    attention = model.encoder.layer[2].transformer.layer[0].attention.attention
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(attention, n).register_forward_hook(lambda _m, _a, out, n=n: seen.__setitem__(n, out))
        for n in ("query", "key")
    ]
    image = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        model(image)
    for hook in hooks:
        hook.remove()
    cap = captured(model, image)
    layer = cap.layers["encoder.layer.2.transformer.layer.0.attention.attention"]
    q, k = (seen[n].reshape(batch * 4, 4, 2, -1).transpose(1, 2) for n in ("query", "key"))  # (B*4, h, 4, d)
    assert layer.batch_size == batch * 4 and layer.query_grid == (2, 2)
    assert layer.queries.ambiguous and "4 sequences per image" in layer.queries.note
    assert_rows_match(layer, reference_probs(q, k, q.shape[-1] ** -0.5))


class FrameAttention(nn.Module):
    """A video model's spatial attention: frames fold into the batch as whole images (UNet3D-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, kernel_size=2, stride=2)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, C, H, W)
        x = self.patch_embed(frames).flatten(2).transpose(1, 2).unsqueeze(1)  # (B*F, 1, N, 8)
        return F.scaled_dot_product_attention(x, x, x)


def test_video_frames_on_the_batch_axis_are_whole_images_not_flagged() -> None:
    cap = captured(FrameAttention(), torch.randn(2, 3, 4, 8, 8))
    (layer,) = cap.layers
    assert layer.batch_size == 8 and layer.query_grid == (4, 4) and not layer.queries.ambiguous
