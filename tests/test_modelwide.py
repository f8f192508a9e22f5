"""Model-wide views against dense references: the whole softmax matrices are written out here, in the
test (transformers' eager ``output_attentions`` from a forward of its own, or ``softmax(q k^T)``), and
rollout, what every key receives, entropy and distance are computed from them by their definitions.
The code under test sees blocks of a few rows only (the block size is shrunk), so block edges fall
inside the grid and between the CLS token and the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import reference_probs

import spatial_attn as sa
from spatial_attn.analysis import modelwide
from spatial_attn.engine import layer as layer_module

IMAGE = 24  # px; 4 px patches: a 6x6 grid after the CLS token


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of a few rows, so that every sum crosses block edges (5 rows of 4 heads x 37 keys)."""
    monkeypatch.setattr(layer_module, "_BLOCK_BYTES", 4 * 4 * 37 * 5)


@pytest.fixture(scope="module")
def vit():
    """A 3-layer transformers ViT with a CLS token: its captured layers and, from a separate eager
    forward, every layer's full attention ``(h, N, N)``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=4,
    )
    config._attn_implementation = "eager"
    model = transformers.ViTModel(config).eval()
    image = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        dense = [a[0].double() for a in model(image, output_attentions=True).attentions]
        config._attn_implementation = "sdpa"
        with sa.capture(model) as cap:
            model(image)
    assert [la.queries.start for la in cap.layers] == [1, 1, 1] and cap.layers[0].query_grid == (6, 6)
    return cap.layers, dense


def _distances(query_grid, key_grid, hw=(IMAGE, IMAGE)) -> np.ndarray:
    """Every query cell centre to every key cell centre, in pixels: the dense (Nq, Nk) matrix."""
    (qh, qw), (kh, kw) = query_grid, key_grid
    q = np.array([((y + 0.5) * hw[0] / qh, (x + 0.5) * hw[1] / qw) for y in range(qh) for x in range(qw)])
    k = np.array([((y + 0.5) * hw[0] / kh, (x + 0.5) * hw[1] / kw) for y in range(kh) for x in range(kw)])
    return np.sqrt(((q[:, None] - k[None]) ** 2).sum(-1))


def _expected_stats(
    probs: torch.Tensor, start: int, grid: tuple[int, int], hw: tuple[int, int] = (IMAGE, IMAGE)
) -> dict[str, np.ndarray]:
    """By definition, from the full ``(h, N, N')`` matrix of a layer whose tokens start at ``start``."""
    p = probs.double().numpy()
    pixels = p[:, start : start + grid[0] * grid[1]]  # (h, Nq, N') the pixel queries
    mean = pixels.mean(0)
    entropy = lambda a: -(a * np.log2(np.where(a > 0, a, 1))).sum(-1)  # noqa: E731
    d = _distances(grid, grid, hw)
    on_grid = lambda a: a[..., start : start + grid[0] * grid[1]]  # noqa: E731
    distance = lambda a: (on_grid(a) * d).sum(-1) / on_grid(a).sum(-1)  # noqa: E731
    return {
        "received": p.mean(1),  # (h, N'): the mean over ALL queries, CLS included
        "entropy_heads": entropy(pixels).reshape(-1, *grid),
        "entropy": entropy(mean).reshape(grid),
        "distance_heads": distance(pixels).reshape(-1, *grid),
        "distance": distance(mean).reshape(grid),
    }


def _check_stats(stats: modelwide.LayerStats, expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(stats.received_heads, expected["received"], atol=1e-6)
    np.testing.assert_allclose(stats.entropy_heads, expected["entropy_heads"], atol=1e-4)
    np.testing.assert_allclose(stats.entropy, expected["entropy"], atol=1e-4)
    np.testing.assert_allclose(stats.distance_heads, expected["distance_heads"], atol=1e-4)
    np.testing.assert_allclose(stats.distance, expected["distance"], atol=1e-4)


def test_layer_statistics_equal_the_dense_matrix_with_a_cls_token(vit):
    layers, dense = vit
    stats = modelwide.model_stats(layers, (IMAGE, IMAGE))
    for s, probs in zip(stats, dense, strict=True):
        expected = _expected_stats(probs, 1, (6, 6))
        _check_stats(s, expected)
        mean = expected["received"].mean(0)
        assert s.special_share() == pytest.approx({"CLS": mean[0]}, abs=1e-6)
        np.testing.assert_allclose(s.received_map(), mean[1:].reshape(6, 6), atol=1e-6)
        assert s.received.sum() == pytest.approx(1.0, abs=1e-5)  # every query's weight, shared out
        np.testing.assert_allclose(s.mean_distance(), expected["distance_heads"].mean((1, 2)), atol=1e-4)
    depth = modelwide.distance_by_depth(stats)
    assert [(d, name) for d, name, _ in depth] == [(i, la.name) for i, la in enumerate(layers)]


def _dense_rollout(dense: list[torch.Tensor], token: int, mode: str, residual: bool) -> np.ndarray:
    """``e_i^T A_L ... A_1`` (row) or ``A_L ... A_1 e_i`` (column), the matrices head-averaged and,
    with the residual, ``0.5 (A + I)``: the whole N x N product, then one row or column of it."""
    n = dense[0].shape[-1]
    product = torch.eye(n, dtype=torch.float64)
    for probs in dense:  # first layer to last: product = A_l @ product
        a = probs.mean(0)
        a = 0.5 * (a + torch.eye(n, dtype=torch.float64)) if residual else a
        product = a @ product
    return (product[token] if mode == "row" else product[:, token]).numpy()


@pytest.mark.parametrize("mode", ["row", "column"])
def test_rollout_equals_the_product_of_the_dense_matrices(vit, mode):
    layers, dense = vit
    assert modelwide.rollout_groups(layers) == [[0, 1, 2]]
    cell = (2, 5)
    rolled = modelwide.rollout(layers, cell, mode=mode)
    token = 1 + 2 * 6 + 5
    assert rolled.token == token and rolled.layers == tuple(la.name for la in layers)
    np.testing.assert_allclose(rolled.rollout, _dense_rollout(dense, token, mode, True), atol=1e-6)
    np.testing.assert_allclose(rolled.plain, _dense_rollout(dense, token, mode, False), atol=1e-6)
    np.testing.assert_allclose(rolled.map("plain"), rolled.plain[1:].reshape(6, 6))
    assert rolled.special() == {"CLS": pytest.approx(float(rolled.rollout[0]))}
    if mode == "row":  # a row of a product of row-stochastic matrices is a distribution
        assert rolled.rollout.sum() == pytest.approx(1.0, abs=1e-5)


def test_rollout_refuses_layers_over_other_tokens(vit):
    layers, _ = vit
    other = sa.AttentionLayer("other", "test", layers[0].scores, layers[0].queries, layers[0].keys)
    object.__setattr__(other, "queries", sa.TokenLayout(37, (6, 6), 0, ("end",)))
    with pytest.raises(ValueError, match="not self-attention over the tokens"):
        modelwide.rollout([layers[0], other], (0, 0))


@pytest.fixture(scope="module")
def ddpm():
    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.app.blocks import default_image
    from spatial_attn.models import load_model

    return Exploration(load_model("ddpm-faces"), default_image()[0], timestep=250, seed=0)


def test_unet_groups_follow_its_resolutions_and_stats_equal_softmax_qk(ddpm):
    layers = ddpm.layers
    assert [la.query_grid for la in layers] == [(16, 16), (8, 8), (8, 8), (8, 8), (8, 8), (16, 16), (16, 16)]
    # the two 16x16 runs are not one: an 8x8 stretch lies between them
    assert modelwide.rollout_groups(layers) == [[0], [1, 2, 3, 4], [5, 6]]
    for layer in layers:
        probs = reference_probs(layer.q, layer.k, 1.0)[0]  # (h, N, N): the scale is folded into q
        _check_stats(
            modelwide.layer_stats(layer, (32, 32)), _expected_stats(probs, 0, layer.query_grid, (32, 32))
        )
    chain = [layers[i] for i in (1, 2, 3, 4)]
    dense = [reference_probs(la.q, la.k, 1.0)[0].double() for la in chain]
    rolled = modelwide.rollout(chain, (3, 6))
    np.testing.assert_allclose(rolled.rollout, _dense_rollout(dense, 3 * 8 + 6, "row", True), atol=1e-6)
    np.testing.assert_allclose(rolled.plain, _dense_rollout(dense, 3 * 8 + 6, "row", False), atol=1e-6)


def test_cross_attention_passes_a_run_by_and_has_no_distance(ddpm):
    """A layer whose queries are the run's tokens but whose keys are text mixes no two pixels: the run
    goes on past it; its distance is undefined, its received vector is over the text tokens."""
    layer = ddpm.layers[1]
    text = sa.TokenLayout(5, None, 0, tuple(f"t{i}" for i in range(5)))
    k = torch.randn(1, layer.heads, 5, layer.k.shape[-1])
    cross = sa.AttentionLayer("cross", "test", layer_module.QKScores(layer.q, k), layer.queries, text)
    layers = [ddpm.layers[0], layer, cross, ddpm.layers[2]]
    assert modelwide.rollout_groups(layers) == [[0], [1, 3]]
    stats = modelwide.layer_stats(cross, (32, 32))
    assert stats.distance is None and stats.mean_distance() is None
    probs = reference_probs(layer.q, k, 1.0)[0]
    np.testing.assert_allclose(stats.received_map(), probs.mean((0, 1)).numpy(), atol=1e-6)


def test_registers_stand_out_in_what_keys_receive():
    """Dinov2 with 4 registers: the special tokens' share is their column sums, each label its own."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=IMAGE, patch_size=4,
        mlp_ratio=2, num_register_tokens=4,
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = transformers.Dinov2WithRegistersModel(config).eval()
    image = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        dense = model(image, output_attentions=True).attentions[0][0].double()  # (h, 41, 41)
        with sa.capture(model) as cap:
            model(image)
    (layer,) = cap.layers
    stats = modelwide.layer_stats(layer, (IMAGE, IMAGE))
    received = dense.mean((0, 1)).numpy()
    share = stats.special_share()
    assert list(share) == list(layer.keys.labels) and len(share) == 5
    np.testing.assert_allclose(list(share.values()), received[:5], atol=1e-6)
    _check_stats(stats, _expected_stats(dense, 5, (6, 6)))


# -- the app's tab shows what the analysis computes ------------------------------------------------
@pytest.fixture(scope="module")
def vit_session():
    from types import SimpleNamespace

    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.app.blocks import default_image
    from spatial_attn.models import load_model

    return SimpleNamespace(
        exploration=Exploration(load_model("vit-faces"), default_image()[0]), point=(9, 20)
    )


def _no_progress(*args, **kwargs) -> None:
    pass


def test_the_tab_draws_each_view_and_says_the_analysis_numbers(vit_session):
    from spatial_attn.app.views import modelwide as tab

    ex = vit_session.exploration
    stats = modelwide.model_stats(ex.layers, ex.image_hw)
    image, note = tab.ModelWideView.show(vit_session, tab.DEPTH, None, _no_progress)
    assert image.width > 200
    for depth, name, distances in modelwide.distance_by_depth(stats):
        assert f"| {depth} | `{name}` | " + ", ".join(f"{d:.1f}" for d in distances) + " |" in note
    image, note = tab.ModelWideView.show(vit_session, tab.RECEIVED, None, _no_progress)
    for s in stats:
        assert f"`{s.name}`" in note and f"{s.special_share()['CLS']:.1%} |" in note
    assert len(modelwide.rollout_groups(ex.layers)) == 1
    label = tab._choices(ex.layers, tab.ROLLOUT_ROW)[0]
    assert label == "blocks.0.self_attn … blocks.3.self_attn (4 layers, 8×8)"
    image, note = tab.ModelWideView.show(vit_session, tab.ROLLOUT_ROW, label, _no_progress)
    assert "Pixel (y, x) = (9, 20), cell (2, 5) of 8×8" in note and image.width > 2 * 192
    image, note = tab.ModelWideView.show(vit_session, tab.MAPS, "blocks.2.self_attn", _no_progress)
    assert note.startswith("`blocks.2.self_attn`") and image.height > 2 * 192
    with pytest.raises(Exception, match="view must be one of"):
        tab.ModelWideView.show(vit_session, "everything", None, _no_progress)


@pytest.mark.browser
@pytest.mark.slow
def test_the_tab_in_the_page_computes_and_draws(app_url, chromium):
    """In the real app: the tab lists the DDPM's runs of layers, and compute draws the rollout of the
    pinned pixel, its note naming the run (the handler's own text, checked above)."""
    from browser import open_app

    with open_app(app_url, chromium) as page:
        page.get_by_role("tab", name="whole model").click()
        page.locator("#mw-run").click()
        note = page.locator("#mw-note")
        note.get_by_text("Rollout (Abnar & Zuidema 2020)").wait_for(timeout=60_000)
        text = note.inner_text()  # the markdown rendered: code spans without their backticks
        assert "through 2 layer(s) up_blocks.1.attentions.0 … up_blocks.1.attentions.1" in text
        assert page.locator("#mw-image img").count() == 1
        page.get_by_label("attention received (every layer)").check()
        page.locator("#mw-run").click()
        note.get_by_text("special tokens' share").wait_for(timeout=60_000)
