"""Family 2: diffusers ``Attention`` in UNet2DModel and in the Transformer2DModel blocks of a
UNet2DConditionModel, under every processor. References recompute q and k from each attention
module's own input with its own projections."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_rows_match, reference_probs

import spatial_attn as sa

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import (  # noqa: E402
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
)


def _unet() -> diffusers.UNet2DModel:
    return diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def _record_inputs(model: torch.nn.Module) -> tuple[dict, list]:
    """The test's own hooks: each Attention module's (hidden_states, encoder_hidden_states)."""
    seen: dict[str, tuple] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen[names[module]] = (hidden, kwargs.get("encoder_hidden_states"))

    handles = [
        m.register_forward_pre_hook(hook, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    return seen, handles


def _reference(attn: Attention, hidden: torch.Tensor, encoder: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) from the attention module's input, as Ho et al. / SD define it."""
    if hidden.ndim == 4:
        b, c, h, w = hidden.shape
        hidden = hidden.reshape(b, c, h * w).transpose(1, 2)  # (B, N, C): token y*W + x
    if attn.group_norm is not None:
        hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
    q = attn.to_q(hidden)
    k = attn.to_k(hidden if encoder is None else encoder)
    b, n, inner = q.shape
    d = inner // attn.heads
    q = q.reshape(b, n, attn.heads, d).transpose(1, 2)
    k = k.reshape(b, -1, attn.heads, d).transpose(1, 2)
    return reference_probs(q, k, d**-0.5)


@pytest.mark.parametrize(
    "processor",
    [AttnProcessor2_0(), AttnProcessor(), SlicedAttnProcessor(slice_size=1)],
    ids=["sdpa", "classic", "sliced"],
)
def test_unet2d_attention_blocks(processor):
    unet = _unet()
    for module in unet.modules():  # UNet2DModel has no set_attn_processor of its own
        if isinstance(module, Attention):
            module.set_processor(processor)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    seen, handles = _record_inputs(unet)
    with torch.no_grad():
        plain = unet(x, t).sample
        with sa.capture(unet) as cap:
            captured = unet(x, t).sample
    for h in handles:
        h.remove()
    assert torch.equal(plain, captured)
    assert not cap.problems
    assert cap.layers.names() == [
        "down_blocks.1.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
    ]
    for layer in cap.layers:
        assert layer.family == "diffusers" and layer.verified is True, layer.verification
        assert layer.query_grid == layer.key_grid == (8, 8) and layer.heads == 8
        modules = dict(unet.named_modules())
        with torch.no_grad():
            assert_rows_match(layer, _reference(modules[layer.name], *seen[layer.name]))


def test_transformer2d_self_and_cross_attention_with_cfg_batch():
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    x = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1)  # classifier-free guidance: same latent twice
    text = torch.randn(2, 7, 16)  # unconditional and conditional prompts differ
    seen, handles = _record_inputs(unet)
    with torch.no_grad(), sa.capture(unet) as cap:
        unet(x, 10, encoder_hidden_states=text)
    for h in handles:
        h.remove()
    assert not cap.problems
    self_attn = cap.layers["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
    cross = cap.layers["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert self_attn.query_grid == self_attn.key_grid == (8, 8)
    assert cross.query_grid == (8, 8) and cross.key_grid is None
    assert all(layer.verified for layer in cap.layers)
    modules = dict(unet.named_modules())
    with torch.no_grad():
        assert_rows_match(self_attn, _reference(modules[self_attn.name], *seen[self_attn.name]))
        probs = _reference(modules[cross.name], *seen[cross.name])
    for b in range(2):
        torch.testing.assert_close(torch.from_numpy(cross.row(3, 5, batch=b)), probs[b, :, 3 * 8 + 5].mean(0))
    assert not torch.allclose(
        torch.from_numpy(cross.row(3, 5, batch=0)), torch.from_numpy(cross.row(3, 5, batch=1))
    )
