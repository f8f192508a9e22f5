"""How a row is made, checked against the definition written out here: logits q_i . k_j, softmax at
a temperature, the whole matrix's block means, SAGAN's residual branch and the UNet's stages."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spatial_attn.analysis import mechanics
from spatial_attn.analysis.explore import Exploration
from spatial_attn.models import load_model


@pytest.fixture(scope="module")
def ddpm() -> Exploration:
    from spatial_attn.app.blocks import default_image

    return Exploration(load_model("ddpm-faces"), default_image()[0], timestep=250, seed=0)


def _reference(layer, head: int) -> torch.Tensor:
    """softmax(q k^T) of one head from the stored q and k, in float64: (N, N')."""
    q, k = layer.q[0, head].double(), layer.k[0, head].double()
    return torch.softmax(q @ k.T, -1)


@pytest.mark.parametrize("temperature", [1.0, 0.25, 4.0])
def test_row_steps_are_the_softmax_of_q_dot_k_at_a_temperature(ddpm, temperature):
    layer = ddpm.layers[1]  # 8 x 8, two heads
    steps = mechanics.row_steps(layer, (3, 2), head=1, temperature=temperature)
    assert steps.token == 3 * 8 + 2
    q, k = layer.q[0, 1].double(), layer.k[0, 1].double()
    logits = (q[steps.token] @ k.T).numpy()
    np.testing.assert_allclose(steps.logits, logits, atol=1e-5)
    np.testing.assert_allclose(
        steps.probs, torch.softmax(torch.from_numpy(logits) / temperature, 0), atol=1e-6
    )
    np.testing.assert_allclose(steps.row_map, steps.probs.reshape(8, 8))
    np.testing.assert_array_equal(steps.query, layer.q[0, 1, steps.token].numpy())
    p = steps.probs
    assert steps.entropy == pytest.approx(-(p * np.log2(p)).sum())
    if temperature == 1.0:  # what the model computed
        np.testing.assert_allclose(steps.row_map, layer.row(3, 2, head=1), atol=1e-6)


def test_row_steps_refuse_what_they_cannot_show(ddpm):
    layer = ddpm.layers[1]
    with pytest.raises(ValueError, match="temperature"):
        mechanics.row_steps(layer, (0, 0), head=0, temperature=0)
    with pytest.raises(ValueError, match=r"heads 0\.\.1"):
        mechanics.row_steps(layer, (0, 0), head=2)


@pytest.mark.parametrize(
    ("size", "block_bytes"), [(64, 16 * 2**20), (100, 16 * 2**20), (64, 4096), (7, 3000)]
)
def test_matrix_thumbnail_is_the_block_means_of_the_full_matrix(ddpm, monkeypatch, size, block_bytes):
    monkeypatch.setattr(mechanics, "_BLOCK_BYTES", block_bytes)  # small: many blocks of query rows
    layer = ddpm.layers[0]  # 16 x 16: N = N' = 256
    full = _reference(layer, 0).numpy()
    group = -(-256 // size)
    expected = np.array(
        [
            [full[r : r + group, c : c + group].mean() for c in range(0, 256, group)]
            for r in range(0, 256, group)
        ]
    )
    got = mechanics.matrix_thumbnail(layer, head=0, size=size)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert mechanics.thumbnail_row(100, 256, size) == 100 // group


def test_residual_share_of_a_sagan_is_gamma_times_the_branch_over_the_input():
    sagan = load_model("sagan-faces")
    prepared = sagan.prepare(seed=3)  # the generator
    share = mechanics.residual_share(sagan, mechanics.module_io(sagan, prepared, "generator.attn"), (5, 6))
    attn = sagan.module.generator.attn
    assert share.gamma == pytest.approx(float(attn.gamma.detach()))
    seen = {}
    handle = attn.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    with torch.no_grad():
        sagan.run(prepared)
    handle.remove()
    branch, x = (seen["out"] - seen["x"])[0].double(), seen["x"][0].double()
    assert share.overall == pytest.approx(float(branch.norm() / x.norm()), rel=1e-5)
    assert share.at_cell == pytest.approx(float(branch[:, 5, 6].norm() / x[:, 5, 6].norm()), rel=1e-5)
    with pytest.raises(ValueError, match="gamma"):
        mechanics.residual_share(sagan, mechanics.module_io(sagan, prepared, "generator.block3"), (0, 0))


def test_unet_levels_place_each_attention_layer(ddpm):
    levels = mechanics.unet_levels(ddpm.model.config)
    assert [(lv.name, lv.resolution, lv.attention) for lv in levels] == [
        ("down_blocks.0", 32, False),
        ("down_blocks.1", 16, True),
        ("down_blocks.2", 8, True),
        ("mid_block", 8, True),
        ("up_blocks.0", 8, True),
        ("up_blocks.1", 16, True),
        ("up_blocks.2", 32, False),
    ]
    for layer in ddpm.layers:  # every captured layer sits in a stage with attention, at its grid
        level = mechanics.level_of(levels, layer.name)
        assert level.attention and (level.resolution,) * 2 == layer.query_grid


def _session(ex: Exploration, point: tuple[int, int]) -> SimpleNamespace:
    return SimpleNamespace(exploration=ex, point=point)


def test_the_tab_shows_every_step_for_the_pinned_pixel_and_follows_the_temperature(ddpm):
    from spatial_attn.app.views.mechanics import MechanicsView

    layer_choice, head_choice, body = MechanicsView.show(_session(ddpm, (13, 9)), None, None, 1.0)
    assert layer_choice.value == ddpm.layers[0].name and head_choice.choices == [("0", "0")]
    assert body.count('class="sa-step"') == 8 and "token i = 6·16 + 4 = <b>100</b>" in body
    assert "one head: head 0</b> of down_blocks.1.attentions.0 (1 head)" in body  # beside the panels'
    assert "6 · values V" in body and "7 · output o_100 = Σ_j p_j v_j" in body
    assert "moves the feature vector by" in body  # the residual: a UNet block adds its input back
    assert body.count("data-pixels=") == 1 and 'class="sa-pick"' in body  # the matrix picks rows
    assert "C = 48 channels on the 16×16 grid" in body  # the layer's input, flattened
    assert 'class="sa-here">down_blocks.1' in body  # the UNet stage holding the layer
    _, head_choice, cooler = MechanicsView.show(
        _session(ddpm, (13, 9)), ddpm.layers[1].name, "1", 0.5, "mean"
    )
    assert "one head: head 1</b>" in cooler and "the panels show the mean of its 2 heads" in cooler
    assert head_choice.value == "1" and "softmax(logits / 0.5)" in cooler and "token i = 3·8 + 2" in cooler


def test_a_click_with_the_tab_open_does_not_recompute_the_matrix_thumbnail(ddpm, monkeypatch):
    """The thumbnail takes every row of the layer: once per run, layer and head, not per click."""
    import weakref

    from spatial_attn.app.views import mechanics as tab
    from spatial_attn.app.views.mechanics import MechanicsView

    made = []
    thumbnail = mechanics.matrix_thumbnail

    def counted(layer, head):
        made.append((head,))
        return thumbnail(layer, head)

    monkeypatch.setattr(mechanics, "matrix_thumbnail", counted)
    monkeypatch.setattr(tab, "_KEPT", weakref.WeakKeyDictionary())  # other tests drew this run
    session = _session(ddpm, (13, 9))
    first = MechanicsView.show(session, None, None, 1.0)[2]
    session.point = (4, 20)
    moved = MechanicsView.show(session, None, None, 1.0)[2]
    assert made == [(0,)] and first != moved  # the same picture, its outlined row moved
    MechanicsView.show(session, ddpm.layers[1].name, "1", 1.0)  # another layer and head: its own
    assert made == [(0,), (1,)]


def test_the_tab_gives_a_sagan_its_gate_and_a_vit_its_cls_key():
    from spatial_attn.app.views.mechanics import MechanicsView

    sagan = Exploration(load_model("sagan-faces"), None, seed=3)
    _, _, body = MechanicsView.show(_session(sagan, (10, 10)), None, None, 1.0)
    gamma = float(sagan.model.module.generator.attn.gamma.detach())
    assert f"γ = {gamma:.3f}" in body and "at your cell" in body
    from spatial_attn.app.blocks import default_image

    vit = Exploration(load_model("vit-faces"), default_image()[0])
    _, _, body = MechanicsView.show(_session(vit, (13, 9)), None, None, 1.0)
    assert "the 65 keys" in body and "UNet" not in body
    assert "6 · values V and the output A·V</b>Not shown" in body  # fused projections: said why


def test_the_flattened_input_is_the_feature_map_row_by_row(ddpm):
    name = "up_blocks.1.attentions.0"
    seen = {}
    module = ddpm.model.module.get_submodule(name)
    handle = module.register_forward_hook(lambda m, a, out: seen.update(x=a[0][0]))
    with torch.no_grad():
        ddpm.model.run(ddpm.prepared)
    handle.remove()
    hooks = sum(len(m._forward_hooks) for m in ddpm.model.module.modules())
    features = mechanics.flattened_input(mechanics.module_io(ddpm.model, ddpm.prepared, name))
    assert sum(len(m._forward_hooks) for m in ddpm.model.module.modules()) == hooks  # a private copy
    c, h, w = seen["x"].shape
    assert features.shape == (h * w, c)
    for y, x in ((0, 0), (6, 4), (15, 15)):  # token i = y*W + x is the pixel's channel vector
        np.testing.assert_allclose(features[y * w + x], seen["x"][:, y, x].numpy(), atol=1e-5)


def test_the_flattened_input_of_a_vit_block_keeps_its_cls_token():
    from spatial_attn.app.blocks import default_image

    vit = load_model("vit-faces")
    prepared = vit.prepare(default_image()[0])
    features = mechanics.flattened_input(mechanics.module_io(vit, prepared, "blocks.0.self_attn"))
    layer = Exploration(vit, default_image()[0]).layers[0]
    assert features.shape == (layer.queries.count, vit.module.blocks[0].self_attn.embed_dim)


def _unet_attention_reference(module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A diffusers UNet attention block written out from its definition, in float64, on its input x
    (B, C, H, W): group norm, tokens y*W + x, q k v per head, softmax(q k^T / sqrt(d)), A.V, the
    output projection, the residual and the rescale."""
    b, c, h, w = x.shape
    m = {k: v.double() for k, v in module.state_dict().items()}
    normed = torch.nn.functional.group_norm(
        x.double(),
        module.group_norm.num_groups,
        m["group_norm.weight"],
        m["group_norm.bias"],
        module.group_norm.eps,
    )
    tokens = normed.reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)

    def project(name: str) -> torch.Tensor:
        t = tokens @ m[f"{name}.weight"].T + m[f"{name}.bias"]
        return t.reshape(b, h * w, module.heads, -1).transpose(1, 2)  # (B, heads, N, d)

    q, k, v = project("to_q"), project("to_k"), project("to_v")
    p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
    o = p @ v  # (B, heads, N, d)
    merged = o.transpose(1, 2).reshape(b, h * w, -1) @ m["to_out.0.weight"].T + m["to_out.0.bias"]
    out = (merged.transpose(1, 2).reshape(b, c, h, w) + x.double()) / module.rescale_output_factor
    return {"v": v, "o": o, "out": out}


@pytest.mark.parametrize(("index", "cell", "head"), [(0, (6, 4), 0), (1, (3, 2), 1), (3, (7, 0), 0)])
def test_output_steps_are_a_v_and_the_residual_written_out(ddpm, index, cell, head):
    layer = ddpm.layers[index]
    module = ddpm.model.module.get_submodule(layer.name)
    seen = {}
    handle = module.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    with torch.no_grad():
        ddpm.model.run(ddpm.prepared)  # a separate forward, no capture
    handle.remove()
    ref = _unet_attention_reference(module, seen["x"])
    steps = mechanics.output_steps(
        layer, mechanics.module_io(ddpm.model, ddpm.prepared, layer.name), cell, head
    )
    token = cell[0] * layer.query_grid[1] + cell[1]
    np.testing.assert_allclose(steps.values, ref["v"][0, head].numpy(), atol=1e-5)
    np.testing.assert_allclose(steps.attended, ref["o"][0, head, token].numpy(), atol=1e-5)
    np.testing.assert_allclose(steps.out, ref["out"][0, :, cell[0], cell[1]].numpy(), atol=1e-4)
    np.testing.assert_allclose(steps.x, seen["x"][0, :, cell[0], cell[1]].numpy(), atol=1e-5)
    assert steps.residual
    x, out = seen["x"][0, :, cell[0], cell[1]].double(), ref["out"][0, :, cell[0], cell[1]]
    assert steps.change == pytest.approx(float((out - x).norm() / x.norm()), rel=1e-4)


def test_output_steps_of_a_fused_projection_are_not_made_up():
    from spatial_attn.app.blocks import default_image

    vit = Exploration(load_model("vit-faces"), default_image()[0])  # one in_proj for q, k and v
    io = mechanics.module_io(vit.model, vit.prepared, vit.layers[0].name)
    assert io.v is None and mechanics.output_steps(vit.layers[0], io, (2, 2), 0) is None


@pytest.mark.parametrize("size", [64, 100, 7])
def test_each_thumbnail_row_pins_a_pixel_whose_query_is_in_that_row(ddpm, size):
    from spatial_attn.app.blocks import default_image
    from spatial_attn.engine.grid import cell_at

    vit = Exploration(load_model("vit-faces"), default_image()[0])  # a CLS token before the grid
    for layer, image_hw in (
        (ddpm.layers[0], (32, 32)),
        (ddpm.layers[1], (32, 32)),
        (vit.layers[0], (32, 32)),
    ):
        pixels = mechanics.thumbnail_pixels(layer, image_hw, size)
        n = layer.queries.count
        group = -(-n // min(size, n))
        assert len(pixels) == mechanics.matrix_thumbnail(layer, 0, size).shape[0]
        for row, pixel in enumerate(pixels):
            if pixel is None:  # only special tokens in this row: the CLS alone
                assert layer.queries.start > 0 and (row + 1) * group <= layer.queries.start
                continue
            token = layer.queries.token(*cell_at(pixel, image_hw, layer.query_grid))
            assert mechanics.thumbnail_row(token, n, size) == row, (row, pixel)


def test_only_a_residual_layer_says_how_much_it_moves_its_input(ddpm):
    from dataclasses import replace

    layer = ddpm.layers[0]
    io = mechanics.module_io(ddpm.model, ddpm.prepared, layer.name)
    assert io.residual == ddpm.model.module.get_submodule(layer.name).residual_connection is True
    plain = mechanics.output_steps(layer, replace(io, residual=False), (6, 4), 0)  # out = projected A.V
    assert not plain.residual and plain.change is None and plain.x is not None
