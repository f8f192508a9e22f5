"""Issue 20, items 2, 3 and 5: token order and grids from what the model states.

YOLOS appends detection tokens after its patches (special, not cells); MAE shuffles and subsets its
patches (declined, not drawn row-major); DETR's object queries are a query axis of their own, never a
guessed grid, and ``row_of_token("query i")`` is a query's map over the encoder's image grid; PVTv2's
overlapping patch embedding states its grid by its convolution's stride, not its ``patch_size``, and
its linear mode's keys are the 7x7 map its adaptive pooling makes. References are transformers' eager
``output_attentions`` from a separate forward; the captured forward runs SDPA where the model has it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_rows_match
from torch import nn

import spatial_attn as sa
from spatial_attn.analysis.explore import shown
from spatial_attn.engine.model_grids import stated_grids

transformers = pytest.importorskip("transformers")


def eager_then_capture(
    model: nn.Module, *args, implementation: str = "sdpa", **kwargs
) -> tuple[object, sa.Capture]:
    """The eager forward's outputs (attentions included), then a capture of a forward with the
    given attention ``implementation`` whose output must be bit-identical to the same forward run
    plainly."""
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        reference = model(*args, output_attentions=True, **kwargs)
        model.config._attn_implementation = implementation
        plain = model(*args, **kwargs)
        with sa.capture(model) as cap:
            again = model(*args, **kwargs)
    assert torch.equal(plain.last_hidden_state, again.last_hidden_state)
    return reference, cap


# -- YOLOS: CLS, the patches, then the detection tokens ------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("detections", [3, 20])
def test_yolos_detection_tokens_after_the_grid_are_special(batch: int, detections: int) -> None:
    torch.manual_seed(0)
    config = transformers.YolosConfig(
        image_size=[32, 48],
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_detection_tokens=detections,
    )
    model = transformers.YolosModel(config, add_pooling_layer=False).eval()
    reference, cap = eager_then_capture(model, torch.randn(batch, 3, 32, 48))
    (layer,) = cap.layers
    probs = reference.attentions[0]  # (B, h, 1 + 24 + detections, same)
    labels = ("CLS", *(f"detection {i}" for i in range(detections)))
    assert layer.query_grid == layer.key_grid == (4, 6)
    assert layer.queries.labels == layer.keys.labels == labels and not layer.queries.ambiguous
    assert_rows_match(layer, probs, q_offset=1, k_offset=1)
    for b in range(batch):
        stats = layer.attend(2, 3, batch=b)
        last = probs[b, :, 1 + 2 * 6 + 3, -1].mean()
        assert stats.special[f"detection {detections - 1}"] == pytest.approx(float(last), abs=1e-6)
        row = layer.row_of_token("detection 1", batch=b)
        np.testing.assert_allclose(row, probs[b, :, 26, 1:25].mean(0).reshape(4, 6), atol=1e-5)
    assert layer.verified is True


# -- MAE: a shuffled subset of the patches --------------------------------------------------------------


@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_mae_shuffled_tokens_are_declined_and_its_decoder_kept(mask_ratio: float) -> None:
    torch.manual_seed(1)
    config = transformers.ViTMAEConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        mask_ratio=mask_ratio,
    )
    model = transformers.ViTMAEForPreTraining(config).eval()
    image, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad(), pytest.warns(UserWarning, match="random_masking"), sa.capture(model) as cap:
        model(image, noise=noise)
    (problem,) = cap.problems
    assert problem.startswith("vit.layers.0.attention") and "shuffled order" in problem
    (decoder,) = cap.layers  # the decoder restores the order (ids_restore) and adds mask tokens
    assert decoder.name.startswith("decoder.decoder_layers.0")
    assert decoder.query_grid == (4, 4) and decoder.queries.labels == ("CLS",) and decoder.verified is True


# -- DETR: object queries over the encoder's map ---------------------------------------------------------


def tiny_detr(model_class: type, queries: int, **extra) -> nn.Module:
    """A DETR-family model of one encoder and one decoder layer over a two-stage ResNet (8 x 8 map
    of a 64 x 64 image), built from its config with no pretrained weights."""
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]
    )
    config = model_class.config_class(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=queries,
        **extra,
    )
    return model_class(config).eval()


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("queries", [9, 100])  # fewer and more queries than the 8 x 8 = 64 keys
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_detr_object_queries_are_a_query_axis_not_a_grid(
    batch: int, queries: int, implementation: str
) -> None:
    torch.manual_seed(2)
    model = tiny_detr(transformers.DetrModel, queries, d_model=16)
    image = torch.randn(batch, 3, 64, 64)
    reference, cap = eager_then_capture(model, image, implementation=implementation)
    encoder, self_attn, cross = (
        cap.layers[n]
        for n in ("encoder.layers.0.self_attn", "decoder.layers.0.self_attn", "decoder.layers.0.encoder_attn")
    )
    names = tuple(f"query {i}" for i in range(queries))
    assert encoder.query_grid == (8, 8)
    assert_rows_match(encoder, reference.encoder_attentions[0])
    for layer in (self_attn, cross):
        assert layer.query_grid is None and layer.queries.labels == names and layer.verified is True
    assert cross.key_grid == (8, 8) and self_attn.key_grid is None
    probs, mixing = (
        reference.cross_attentions[0],
        reference.decoder_attentions[0],
    )  # (B, h, Q, 64), (B, h, Q, Q)
    for b in range(batch):
        for q in (0, 7, queries - 1):
            for head in (0, 1, None):
                expected = probs[b, :, q].mean(0) if head is None else probs[b, head, q]
                got = cross.row_of_token(f"query {q}", head=head, batch=b)
                np.testing.assert_allclose(got, expected.reshape(8, 8), atol=1e-5)
            among = mixing[b, :, q].mean(0).numpy()
            np.testing.assert_allclose(self_attn.row_of_token(f"query {q}", batch=b), among, atol=1e-5)
        column = cross.column(3, 5, batch=b)  # who among the queries looks at pixel (3, 5)
        np.testing.assert_allclose(column, probs[b, :, :, 3 * 8 + 5].mean(0), atol=1e-5)
    drawn, lines = shown(cap.layers)  # the app: no panel for queries that are no pixels, and it says so
    assert drawn == [encoder] and [line.split(":")[0] for line in lines] == [self_attn.name, cross.name]


# -- PVTv2: overlapping patch embeddings and linear mode's pooled keys ---------------------------------


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("linear", [False, True], ids=["spatial-reduction", "linear"])
def test_pvt_v2_grids_from_strides_and_pooled_keys(batch: int, linear: bool) -> None:
    torch.manual_seed(3)
    config = transformers.PvtV2Config(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],  # kernels; the strides are 4 and 2
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        linear_attention=linear,
    )
    model = transformers.PvtV2Model(config).eval()
    reference, cap = eager_then_capture(model, torch.randn(batch, 3, 32, 40))
    grids = [(8, 10), (4, 5)]
    keys = [(7, 7)] * 2 if linear else [(4, 5), (4, 5)]
    attentions = [p for stage in reference.attentions for p in stage]  # per stage, per block
    for layer, probs, grid, key_grid in zip(cap.layers, attentions, grids, keys, strict=True):
        assert layer.query_grid == grid and layer.key_grid == key_grid and not layer.queries.ambiguous
        assert_rows_match(layer, probs)
    assert not cap.problems


def test_a_patch_size_that_is_a_kernel_states_no_grid() -> None:
    """PVTv2's overlapping embedding keeps ``patch_size`` 3 for a stride-2 convolution: the grid is
    the convolution's output (8 x 10 of a 16 x 20 map), never 16/3 x 20/3."""
    config = transformers.PvtV2Config(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2]
    )
    embed = transformers.PvtV2Model(config).encoder.layers[1].patch_embedding
    assert embed.patch_size == (3, 3)
    assert stated_grids("embed", embed, (16, 20), {}) == []
    (said,) = stated_grids("embed.proj", embed.proj, (16, 20), {})
    assert said.grid == tuple(embed.proj(torch.zeros(1, 16, 16, 20)).shape[-2:]) == (8, 10)


@pytest.mark.parametrize("batch", [1, 2])
def test_deformable_detr_sampling_weights_are_not_a_map_and_its_queries_are_labelled(batch: int) -> None:
    """Deformable attention softmaxes learned weights over sampling points, ``(B, Q, heads, points)``:
    no product of queries and keys, no map over tokens; the decoder's self-attention over its 30
    object queries is exact."""
    torch.manual_seed(4)
    model = tiny_detr(  # d_model 32: its GroupNorm has 32 groups
        transformers.DeformableDetrModel,
        30,
        d_model=32,
        num_feature_levels=1,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    with pytest.warns(UserWarning, match="not made by a product"):
        reference, cap = eager_then_capture(model, torch.randn(batch, 3, 64, 64), implementation="eager")
    assert [p.split(" ")[0] for p in cap.problems] == [
        "encoder.layers.0.self_attn",
        "decoder.layers.0.encoder_attn",
    ]
    (layer,) = cap.layers
    assert layer.query_grid is None and layer.queries.labels == tuple(f"query {i}" for i in range(30))
    for b in range(batch):
        for q in (0, 29):
            expected = reference.decoder_attentions[0][b, :, q].mean(0).numpy()
            np.testing.assert_allclose(layer.row_of_token(f"query {q}", batch=b), expected, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_perceiver_latents_are_labelled_queries(batch: int) -> None:
    """Perceiver's latents are learned queries: its cross-attention (latents over the inputs) and its
    latent self-attention are read through the softmax and labelled ``query i``, rows exact."""
    torch.manual_seed(5)
    config = transformers.PerceiverConfig(
        num_latents=8,
        d_latents=16,
        d_model=16,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
    )
    model = transformers.PerceiverModel(config).eval()
    inputs = torch.randn(batch, 12, 16)
    with torch.no_grad():
        reference = model(inputs=inputs, output_attentions=True)
        with sa.capture(model) as cap:
            model(inputs=inputs)
    cross, latent = cap.layers
    names = tuple(f"query {i}" for i in range(8))
    assert cross.queries.labels == latent.queries.labels == names and not cap.problems
    for layer, probs in ((cross, reference.cross_attentions[0]), (latent, reference.attentions[0])):
        for b in range(batch):
            for q in (0, 5):
                expected = probs[b, :, q].mean(0).numpy()
                np.testing.assert_allclose(layer.row_of_token(f"query {q}", batch=b), expected, atol=1e-5)
