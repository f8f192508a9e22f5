"""Any number of prefix tokens (issue 9, item 2): the grid comes from what the model says.

53 tokens on a square image fit 7x7 + 4 as well as 6x6 + 17 (CLS and 16 registers); only the model
knows, and its patch embedding says it. References are computed here from queries and keys taken
from the model with the test's own hooks, or from transformers' eager ``output_attentions``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa
from spatial_attn.analysis.explore import LayerClick
from spatial_attn.engine.model_grids import stated_grids


class FusedAttention(nn.Module):
    """timm's ``Attention``: one ``qkv`` Linear, heads split, ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class PatchEmbed(nn.Module):
    """timm's ``PatchEmbed``: a strided convolution, flattened row-major."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch_size = (patch, patch)
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class LinearPatches(nn.Module):
    """RADIO's patch generator: the image cut into patches, each flattened through a Linear."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch_size = patch
        self.embedder = nn.Linear(3 * patch * patch, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)  # (B, N, 3p^2)
        return self.embedder(patches)


class RegisterViT(nn.Module):
    """A ViT with ``prefix`` tokens (CLS and registers) before its patches, as timm and RADIO lay out."""

    def __init__(self, embed: nn.Module, prefix: int, dim: int = 16) -> None:
        super().__init__()
        self.patch_embed = embed
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim))
        self.blocks = nn.ModuleList([FusedAttention(dim, 2), FusedAttention(dim, 2)])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image)
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = x + block(x)
        return x


def qk_reference(model: RegisterViT, image: torch.Tensor) -> list[torch.Tensor]:
    """``softmax(q k^T / sqrt(d))`` of every block, from its ``qkv`` output taken by a hook here."""
    seen: list[torch.Tensor] = []
    hooks = [b.qkv.register_forward_hook(lambda _m, _a, out: seen.append(out)) for b in model.blocks]
    with torch.no_grad():
        model(image)
    for hook in hooks:
        hook.remove()
    probs = []
    for qkv in seen:
        b, n, _ = qkv.shape
        q, k, _ = qkv.reshape(b, n, 3, 2, -1).permute(2, 0, 3, 1, 4).unbind(0)
        probs.append(reference_probs(q, k, q.shape[-1] ** -0.5))
    return probs


def captured(model: nn.Module, image: torch.Tensor, **options) -> sa.Capture:
    with torch.no_grad(), sa.capture(model, **options) as cap:
        model(image)
    return cap


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    ("embed", "prefix", "source"),
    [
        (PatchEmbed(16, 4), 17, "patch_embed.proj"),  # CLS + 16 registers (timm's reg ViTs)
        (LinearPatches(16, 4), 10, "patch_embed"),  # CLS + 9 registers (RADIO), no convolution
    ],
    ids=["cls+16-registers", "radio-cls+9-registers"],
)
def test_many_prefix_tokens_take_the_grid_the_patch_embedding_made(
    batch: int, embed: nn.Module, prefix: int, source: str
) -> None:
    torch.manual_seed(0)
    model = RegisterViT(embed, prefix).eval()
    image = torch.randn(batch, 3, 24, 32)  # 6 x 8 patches
    cap = captured(model, image)
    for layer, probs in zip(cap.layers, qk_reference(model, image), strict=True):
        assert layer.query_grid == layer.key_grid == (6, 8)
        assert layer.queries.start == prefix and not layer.queries.ambiguous
        assert f"`{source}`" in layer.queries.note
        assert layer.keys.labels[0] == "CLS" and len(layer.keys.labels) == prefix
        assert_rows_match(layer, probs, q_offset=prefix, k_offset=prefix)
        stats = layer.attend(3, 5, batch=batch - 1)
        expected = probs[batch - 1, :, prefix + 3 * 8 + 5, :prefix].mean(0)
        assert list(stats.special.values()) == pytest.approx(expected.tolist(), abs=1e-6)


class UnfoldedViT(RegisterViT):
    """The same ViT patchified by hand in its own forward: nothing states the grid."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(48, 16), prefix=17)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(image, 4, stride=4).transpose(1, 2)  # (B, 36, 48)
        x = torch.cat([self.prefix.expand(image.shape[0], -1, -1), self.patch_embed(patches)], dim=1)
        return x + self.blocks[0](x)


def test_a_grid_nothing_stated_is_a_guess_and_says_so() -> None:
    torch.manual_seed(0)
    model = UnfoldedViT().eval()
    image = torch.randn(1, 3, 24, 24)
    layer = captured(model, image).layers[0]
    assert layer.query_grid == (7, 7)  # 53 = 49 + 4 is all the count can say: wrong, and flagged
    assert layer.queries.ambiguous and "a guess" in layer.queries.note
    caption = LayerClick(layer, (0, 0), layer.queries.token(0, 0), layer.row(0, 0)).caption()
    assert "grid uncertain" in caption
    settled = captured(model, image, grid=(6, 6)).layers[0]
    assert settled.query_grid == (6, 6) and settled.queries.start == 17 and not settled.queries.ambiguous
    assert_rows_match(settled, qk_reference(model, image)[0], q_offset=17, k_offset=17)


def test_a_stated_grid_never_claims_a_sequence_mostly_of_other_tokens() -> None:
    """A 2x2 map stated early must not make 36 unrelated tokens "2x2 + 32 specials"."""
    torch.manual_seed(0)

    class Stated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.Conv2d(3, 3, kernel_size=12, stride=12)  # states a 2 x 2 grid
            self.attn = FusedAttention(16, 2)
            self.embed = nn.Linear(48, 16)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            self.pool(image)
            return self.attn(self.embed(F.unfold(image, 4, stride=4).transpose(1, 2)))  # 36 tokens

    layer = captured(Stated().eval(), torch.randn(1, 3, 24, 24)).layers[0]
    assert layer.query_grid == (6, 6) and layer.queries.start == 0


# -- transformers: ViT, DINOv2 with registers, CLIP vision (eager attentions as the reference) --------


def _tiny(name: str, **extra):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config_class, model_class = {
        "vit": (transformers.ViTConfig, transformers.ViTModel),
        "dinov2-registers": (transformers.Dinov2WithRegistersConfig, transformers.Dinov2WithRegistersModel),
        "clip": (transformers.CLIPVisionConfig, transformers.CLIPVisionModel),
    }[name]
    config = config_class(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=24, patch_size=4, **extra
    )
    config._attn_implementation = "eager"
    return config, model_class(config).eval()


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    ("name", "extra", "prefix"),
    [
        ("vit", {"intermediate_size": 64}, 1),
        ("dinov2-registers", {"mlp_ratio": 2, "num_register_tokens": 16}, 17),
        ("clip", {"intermediate_size": 64}, 1),
    ],
)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_transformers_vision_models(
    batch: int, name: str, extra: dict, prefix: int, implementation: str
) -> None:
    config, model = _tiny(name, **extra)
    image = torch.randn(batch, 3, 24, 24)
    with torch.no_grad():
        eager = model(image, output_attentions=True).attentions  # (B, h, N, N) per layer
        config._attn_implementation = implementation
        with sa.capture(model) as cap:
            model(image)
    assert len(cap.layers) == len(eager) == 2
    for layer, probs in zip(cap.layers, eager, strict=True):
        assert layer.query_grid == layer.key_grid == (6, 6), layer.queries.note
        assert layer.queries.start == prefix and not layer.queries.ambiguous
        assert_rows_match(layer, probs, q_offset=prefix, k_offset=prefix)
        assert layer.verification.ok is True


def test_what_a_module_states_and_what_it_does_not() -> None:
    """Statements are read from every module on entry; none may raise inside the user's forward."""
    image = (24, 32)  # a 24 x 32 input (the capture passes the shape of a 4D first argument)
    valid = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding="valid")
    assert [s.grid for s in stated_grids("c", valid, image, {})] == [(11, 15)]
    assert stated_grids("c", valid, None, {}) == []  # no 4D input: nothing to read
    assert stated_grids("c", nn.Conv2d(3, 8, 3, padding=1), image, {}) == []  # stride 1: no patches
    for patch in (0, (4, 4, 4), (4.5, 4.5), "4", None):
        odd = nn.Identity()
        odd.patch_size = patch
        assert stated_grids("m", odd, image, {}) == [], patch
    ids = torch.zeros(2, 6, 3)
    ids[..., 1], ids[..., 2] = torch.arange(6) // 3, torch.arange(6) % 3
    (said,) = stated_grids("flux", nn.Identity(), None, {"img_ids": ids})  # (B, L, 3): older diffusers
    assert said.grid == (2, 3) and said.special == "text"
