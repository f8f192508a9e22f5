"""Issue 9, item 3: joint attention (SD3 / MMDiT, AuraFlow, Flux), one softmax over image and text.

The references are written here from the definition: the test's own hooks take each projection's
output (or, for Flux, the arguments of the model's own SDPA call), concatenate image and text tokens,
and apply ``softmax(q k^T / sqrt(d))`` over the whole sequence. The captured layer must give, for
every image query and every text query, the image part on the grid and each text token's mass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference_probs

import spatial_attn as sa

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import Attention  # noqa: E402


def _sd3() -> torch.nn.Module:
    return diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,  # the last block is context_pre_only: its text half never reaches the output
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=8,
    ).eval()


def _auraflow() -> torch.nn.Module:
    return diffusers.AuraFlowTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=16,
    ).eval()


def _record_projections(
    model: torch.nn.Module, roles: tuple[str, ...] = ("to_q", "to_k", "add_q_proj", "add_k_proj")
) -> tuple[dict[str, dict[str, torch.Tensor]], list]:
    """The test's own hooks: the outputs of these projections of every Attention that has the last
    of them (joint attention: image and text queries and keys; added keys: ``add_k_proj``)."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, Attention) and getattr(module, roles[-1]) is not None:
            seen[name] = {}
            for role in roles:

                def hook(_m, _a, out, name=name, role=role):
                    seen[name][role] = out.detach()

                if getattr(module, role) is not None:  # only_cross_attention has no to_k
                    handles.append(getattr(module, role).register_forward_hook(hook))
    return seen, handles


def _joint_reference(attn: Attention, proj: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, h, Ni + Nt, Ni + Nt)``, image tokens first then text: the softmax over both at once.

    Each projection is split into heads and normalised per head (``norm_q`` ..., a LayerNorm over
    the head's channels, where the model has one) before image and text are concatenated."""
    h = attn.heads

    def heads(t: torch.Tensor, norm: torch.nn.Module | None) -> torch.Tensor:
        b, n, c = t.shape
        t = t.reshape(b, n, h, c // h)  # (B, N, h, d)
        return (norm(t) if norm is not None else t).transpose(1, 2)  # (B, h, N, d)

    q = torch.cat([heads(proj["to_q"], attn.norm_q), heads(proj["add_q_proj"], attn.norm_added_q)], dim=2)
    k = torch.cat([heads(proj["to_k"], attn.norm_k), heads(proj["add_k_proj"], attn.norm_added_k)], dim=2)
    return reference_probs(q, k, q.shape[-1] ** -0.5)


def _assert_joint_rows(layer, probs: torch.Tensor, n_text: int, text_first: bool) -> None:
    """Every head and the head mean, every batch entry: image-query rows on the grid with each text
    token's mass, and text-query rows (``row_of_token("text j")``) likewise. ``probs`` is the
    reference with image tokens first."""
    gh, gw = layer.query_grid
    n_image = gh * gw
    assert layer.key_grid == (gh, gw)
    assert layer.queries.labels == layer.keys.labels == tuple(f"text {j}" for j in range(n_text))
    offset = n_text if text_first else 0  # where the image block starts in the layer's sequence
    assert layer.queries.start == layer.keys.start == offset
    image_queries = [(y, x) for y in range(gh) for x in range(gw)][:: max(1, n_image // 7)]
    for b in range(probs.shape[0]):
        for head in [*range(layer.heads), None]:
            ref = probs[b].mean(0) if head is None else probs[b, head]  # (N, N)
            for y, x in image_queries:
                i = y * gw + x
                row = layer.attend(y, x, head=head, batch=b)
                np.testing.assert_allclose(row.values, ref[i, :n_image].reshape(gh, gw), atol=1e-5)
                text_mass = [row.special[f"text {j}"] for j in range(n_text)]
                np.testing.assert_allclose(text_mass, ref[i, n_image:], atol=1e-5)
            for j in range(n_text):
                expected = ref[n_image + j]
                got = layer.row_of_token(f"text {j}", head=head, batch=b)
                np.testing.assert_allclose(got, expected[:n_image].reshape(gh, gw), atol=1e-5)
                special = layer.attend_token(offset + n_image + j if not text_first else j, head, b).special
                np.testing.assert_allclose(list(special.values()), expected[n_image:], atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_sd3_joint_attention_is_one_softmax_over_image_and_text(batch):
    model = _sd3()
    x, text = torch.randn(batch, 4, 8, 8), torch.randn(batch, 5, 16)
    seen, handles = _record_projections(model)
    kwargs = dict(encoder_hidden_states=text, pooled_projections=torch.randn(batch, 8))
    with torch.no_grad():
        plain = model(x, timestep=torch.arange(batch) + 1, **kwargs).sample
        with sa.capture(model) as cap:
            captured = model(x, timestep=torch.arange(batch) + 1, **kwargs).sample
    for h in handles:
        h.remove()
    assert torch.equal(plain, captured) and not cap.problems
    assert cap.layers.names() == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    modules = dict(model.named_modules())
    for layer in cap.layers:
        assert layer.verified is True, layer.verification  # the last block: image half checked only
        probs = _joint_reference(modules[layer.name], seen[layer.name])
        _assert_joint_rows(layer, probs, n_text=5, text_first=False)


@pytest.mark.parametrize("batch", [1, 2])
def test_auraflow_joint_attention_puts_text_first(batch):
    model = _auraflow()
    x, text = torch.randn(batch, 4, 8, 8), torch.randn(batch, 3, 16)
    seen, handles = _record_projections(model)
    with torch.no_grad(), sa.capture(model) as cap:
        model(x, encoder_hidden_states=text, timestep=torch.arange(batch) + 1.0)
    for h in handles:
        h.remove()
    assert not cap.problems
    joint = cap.layers["joint_transformer_blocks.0.attn"]
    assert joint.verified is True, joint.verification
    # AuraFlow's attention uses attn.scale, which is 1/sqrt(d) here as in the reference
    probs = _joint_reference(dict(model.named_modules())[joint.name], seen[joint.name])
    # AuraFlow puts its 8 register tokens before the 3 text tokens: 11 context tokens in the softmax
    _assert_joint_rows(joint, probs, n_text=8 + 3, text_first=True)


def test_text_first_with_only_the_image_half_observable_is_still_checked(monkeypatch):
    """Text first and no text output (a context_pre_only block, or a text half whose projection is
    not observed): only image queries can be checked, and sequence position i is the image
    output's i - (text tokens). AuraFlow with its text output's tap withheld."""
    from spatial_attn.engine.adapters.diffusers import DiffusersAdapter

    taps = DiffusersAdapter.taps
    monkeypatch.setattr(
        DiffusersAdapter,
        "taps",
        lambda self, module: {r: t for r, t in taps(self, module).items() if r != "text_attended"},
    )
    model = _auraflow()
    with torch.no_grad(), sa.capture(model) as cap:
        model(torch.randn(2, 4, 8, 8), encoder_hidden_states=torch.randn(2, 3, 16), timestep=torch.ones(2))
    joint = cap.layers["joint_transformer_blocks.0.attn"]
    assert joint.queries.start == 11 and joint.verified is True, joint.verification


@pytest.mark.parametrize("grid", [None, (4, 3)], ids=["from-ids", "given"])
@pytest.mark.parametrize("batch", [1, 2])
def test_flux_double_and_single_blocks_keep_text_tokens_in_the_softmax(batch, grid, monkeypatch):
    """Flux concatenates text before image tokens (double blocks inside the attention, single blocks
    before it) and applies rotary embeddings, so the reference is read from the arguments of the
    model's own SDPA calls, taken by the test's own wrapper. The grid comes from ``img_ids`` or from
    ``grid=``; the text tokens are named from the ids when the grid came from them."""
    model = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=8,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        axes_dims_rope=(2, 2, 4),
    ).eval()
    h, w, n_text = 4, 3, 5
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img_ids = torch.stack([torch.zeros(h * w), ys.flatten(), xs.flatten()], -1).float()
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    sdpa = F.scaled_dot_product_attention

    def recording(query, key, *args, **kwargs):
        calls.append((query.detach().clone(), key.detach().clone()))
        return sdpa(query, key, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    with torch.no_grad(), sa.capture(model, grid=grid) as cap:
        model(
            hidden_states=torch.randn(batch, h * w, 8),
            encoder_hidden_states=torch.randn(batch, n_text, 16),
            pooled_projections=torch.randn(batch, 8),
            timestep=torch.arange(batch) + 1.0,
            img_ids=img_ids,
            txt_ids=torch.zeros(n_text, 3),
        )
    assert not cap.problems
    assert cap.layers.names() == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
    for layer, (q, k) in zip(cap.layers, calls, strict=True):
        assert layer.verified is True, layer.verification
        assert layer.query_grid == layer.key_grid == (h, w) and layer.keys.start == n_text
        if grid is None:
            assert layer.queries.labels == layer.keys.labels == tuple(f"text {j}" for j in range(n_text))
        probs = reference_probs(q, k, q.shape[-1] ** -0.5)  # (B, h, Nt + Ni, Nt + Ni), text first
        image_first = torch.cat([probs[:, :, n_text:], probs[:, :, :n_text]], dim=2)
        image_first = torch.cat([image_first[..., n_text:], image_first[..., :n_text]], dim=3)
        for b in range(batch):
            for head in [*range(layer.heads), None]:
                ref = image_first[b].mean(0) if head is None else image_first[b, head]
                for y, x in ((0, 0), (2, 1), (3, 2)):
                    row = layer.attend(y, x, head=head, batch=b)
                    np.testing.assert_allclose(row.values, ref[y * w + x, : h * w].reshape(h, w), atol=1e-5)
                    np.testing.assert_allclose(list(row.special.values()), ref[y * w + x, h * w :], atol=1e-5)
                for j in range(n_text):  # text queries are rows too: the leading tokens
                    got = layer.attend_token(j, head, b)
                    np.testing.assert_allclose(got.values, ref[h * w + j, : h * w].reshape(h, w), atol=1e-5)


def test_row_of_token_names_the_missing_token():
    model = _sd3()
    with torch.no_grad(), sa.capture(model) as cap:
        model(
            torch.randn(1, 4, 8, 8),
            encoder_hidden_states=torch.randn(1, 2, 16),
            pooled_projections=torch.randn(1, 8),
            timestep=torch.tensor([1]),
        )
    layer = cap.layers[0]
    assert layer.row_of_token("text 1").shape == layer.key_grid
    np.testing.assert_allclose(layer.row_of_token("text 1"), layer.row_of_token(layer.queries.count - 1))
    with pytest.raises(ValueError, match="no query token 'text 7'"):
        layer.row_of_token("text 7")


@pytest.mark.parametrize("only_cross", [False, True], ids=["text-and-image-keys", "only-cross"])
@pytest.mark.parametrize("processor", ["AttnAddedKVProcessor", "AttnAddedKVProcessor2_0"])
@pytest.mark.parametrize("batch", [1, 2])
def test_added_keys_and_values_share_the_softmax_with_the_image_keys(batch, processor, only_cross):
    """UnCLIP / Kandinsky UNets (``SimpleCrossAttn`` blocks): the text's ``add_k_proj`` keys come
    before the image's own keys in one softmax (or replace them with ``only_cross_attention``)."""
    from diffusers.models import attention_processor

    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "SimpleCrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        only_cross_attention=only_cross,
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    unet.set_attn_processor(getattr(attention_processor, processor)())
    seen, handles = _record_projections(unet, ("to_q", "to_k", "add_k_proj"))
    with torch.no_grad(), sa.capture(unet) as cap:
        unet(torch.randn(batch, 4, 8, 8), 10, encoder_hidden_states=torch.randn(batch, 5, 16))
    for h in handles:
        h.remove()
    assert not cap.problems and len(cap.layers) == 4
    modules = dict(unet.named_modules())
    for layer in cap.layers:
        assert layer.verified is True, layer.verification
        attn, proj = modules[layer.name], seen[layer.name]

        def heads(t: torch.Tensor, attn: Attention = attn) -> torch.Tensor:
            b, n, c = t.shape
            return t.reshape(b, n, attn.heads, c // attn.heads).transpose(1, 2)  # (B, h, N, d)

        q, text_k = heads(proj["to_q"]), heads(proj["add_k_proj"])
        k = text_k if only_cross else torch.cat([text_k, heads(proj["to_k"])], dim=2)
        probs = reference_probs(q, k, attn.scale)  # (B, h, N, 5 [+ N])
        gh, gw = layer.query_grid
        for b in range(batch):
            for y, x in ((0, 0), (gh // 2, gw - 1), (gh - 1, 1)):
                ref = probs[b, :, y * gw + x]  # (h, 5 [+ N])
                for head in [*range(layer.heads), None]:
                    expected = ref.mean(0) if head is None else ref[head]
                    row = layer.attend(y, x, head=head, batch=b)
                    if only_cross:  # the keys are the text alone, not on the grid
                        assert layer.key_grid is None
                        np.testing.assert_allclose(row.values, expected, atol=1e-5)
                        continue
                    assert layer.key_grid == (gh, gw)
                    np.testing.assert_allclose(row.values, expected[5:].reshape(gh, gw), atol=1e-5)
                    np.testing.assert_allclose(list(row.special.values()), expected[:5], atol=1e-5)
