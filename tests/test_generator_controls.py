"""The SAGAN generator's controls: eyes erased or moved in the features its attention receives.

A generator has no input image to edit, so the eval edits the layer's input feature map instead
(activation patching). These tests check the edits themselves against hand-made maps, that the rows
captured under an edit are what the layer computes from the edited map (reference math from the
module's own convolutions), that the hook is gone afterwards, and that the check on the generated
images tells an edit that shows from one that does not.
"""

from __future__ import annotations

import numpy as np
import torch

from spatial_attn.data import Edit, make_faces
from spatial_attn.models import load_model
from spatial_attn.sample_eval import (
    GEN_SHIFT,
    Located,
    _attention_input,
    _generate,
    _region,
    edit_drawn,
    erase,
    generator_figures,
    move,
)

EYES = Located(np.array([[[12.5, 10.0], [12.5, 22.0]]]), np.array([[3.0, 3.0]]))


def _map() -> torch.Tensor:
    """(1, 4, 16, 16): channel c of cell (y, x) holds 1000 c + 16 y + x, so every cell is unique."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    return torch.stack([1000 * c + 16 * yy + xx for c in range(4)])[None]


def test_an_erased_eye_is_its_region_filled_with_the_skin_around_it_and_nothing_else_changes():
    x = _map()
    out = erase(x, EYES, 1)
    region = torch.from_numpy(_region(x, EYES.eyes[0, 1], 3.0))
    assert 10 <= int(region.sum()) <= 40  # the eye's cells and a margin, at 2 px a cell
    assert torch.equal(out[0][:, ~region], x[0][:, ~region])  # eye 0 and the rest untouched
    fill = out[0][:, region]
    assert torch.equal(fill, fill[:, :1].expand_as(fill))  # one vector throughout
    outside = x[0][:, ~region]  # (C, cells)
    assert (outside == fill[:, :1]).all(0).any()  # a vector the map really holds, from outside the eye
    assert torch.equal(x, _map())  # the input map itself is not changed


def test_a_moved_eye_is_its_region_pasted_whole_cells_away_with_skin_where_it_was():
    x = _map()
    out = move(x, EYES, 0, np.array([[2.0 * GEN_SHIFT, 0.0]]))  # down, in pixels
    region = _region(x, EYES.eyes[0, 0], 3.0)
    ys, xs = np.nonzero(region)
    assert torch.equal(out[0][:, ys + GEN_SHIFT, xs], x[0][:, ys, xs])  # the eye, GEN_SHIFT rows down
    vacated = region.copy()
    vacated[ys + GEN_SHIFT, xs] = False
    assert vacated.any() and torch.equal(out[0][:, vacated], erase(x, EYES, 0)[0][:, vacated])
    untouched = ~(region | np.roll(region, GEN_SHIFT, 0))
    assert torch.equal(out[0][:, untouched], x[0][:, untouched])


def test_rows_under_an_edit_are_what_the_layer_computes_from_the_edited_features():
    sagan = load_model("sagan-faces")
    seeds = [0, 1]
    base = _generate(sagan, seeds)
    edited = erase(base.features, Located(np.repeat(EYES.eyes, 2, 0), np.repeat(EYES.eye_radius, 2, 0)), 1)
    run = _generate(sagan, seeds, edited)
    attn = sagan.module.generator.attn
    with torch.no_grad():  # SAGAN's Self_Attn written out: softmax over keys of q_i . k_j
        q = attn.query_conv(edited).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = attn.key_conv(edited).flatten(2)  # (B, C/8, N)
        reference = torch.softmax(q @ k, -1)  # (B, N, N)
    token = 6 * 16 + 5  # eye 0's cell (y 12.5 px -> 6, x 10 px -> 5)
    for b in range(2):
        np.testing.assert_allclose(run.layer.row(6, 5, batch=b).ravel(), reference[b, token], atol=1e-5)
    assert not np.allclose(run.layer.row(6, 5, batch=0), base.layer.row(6, 5, batch=0), atol=1e-3)
    assert torch.equal(run.features, base.features)  # what the layer was given before the edit
    assert not any(m._forward_pre_hooks for m in sagan.module.modules())  # every hook removed


def test_the_input_hook_is_removed_when_the_forward_fails():
    attn = load_model("sagan-faces").module.generator.attn
    try:
        with _attention_input(attn, torch.zeros(1, 64, 16, 16)):
            attn(torch.zeros(1, 64, 8, 8))  # replaced by the wrong width: fails inside
    except RuntimeError:
        pass
    assert not attn._forward_pre_hooks


def test_the_sample_check_sees_an_erased_and_a_moved_eye_and_not_an_edit_that_did_not_show():
    n, shift = 8, 6.0
    faces = make_faces(n, 3)
    erased = make_faces(n, 3, edit=Edit(erase=np.tile([True, False], (n, 1))))
    moved_by = np.zeros((n, 2, 2), dtype=np.float32)
    moved_by[:, 0, 0] = shift
    moved = make_faces(n, 3, edit=Edit(shift=moved_by))
    down, up = np.array([shift, 0.0]), np.array([-shift, 0.0])
    for i in range(n):
        before, eye = faces.images[i], faces.eyes[i, 0]
        assert edit_drawn(before, erased.images[i], moved.images[i], eye, down) == 1
        assert edit_drawn(before, before, before, eye, down) == 0  # nothing changed: neither shows
        assert edit_drawn(before, erased.images[i], moved.images[i], eye, up) == 0.5  # moved the other way


def test_generator_figures_cover_the_located_samples_and_count_collapse_over_all():
    figs = generator_figures(load_model("sagan-faces"), load_model("sagan-faces", False), list(range(16)))
    located = int(figs["located"].sum())
    assert 0 < located < 16 and len(figs["collapsed"]) == 16
    for key in ("valid", "erased", "follows", "stays", "chance", "drawn", "twin_valid", "twin_follows"):
        assert len(figs[key]) == located, key
    assert figs["drawn"].mean() > 0.8  # the edits show in the samples: they edit the eyes it draws
    assert 0 < figs["chance"].mean() < 0.2
