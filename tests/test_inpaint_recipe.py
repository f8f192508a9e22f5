"""The in-painter's second recipe (issue 23): decoy discs in the training faces, the kept eye moved
more often or further, a start from a trained in-painter; and the data option that draws the decoys.

The defaults must make the first recipe's batches byte for byte: the digests below were taken from
the code before the recipe existed (main at 4f0b72a), not from the code under test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from spatial_attn.data import Edit, make_faces
from spatial_attn.data.faces import decoy_colour
from spatial_attn.faces.train.common import Settings
from spatial_attn.faces.train.vit_inpaint import DECOY_GAP, InpaintTrainer, block_attention, masked_side
from spatial_attn.models.vit_inpaint import InpaintConfig, eye_mask

TINY = InpaintConfig(dim=16, depth=2, heads=2, mlp_ratio=2)
#: sha256 of the first recipe's augmented batch (64 faces, seed 11, wide), before the recipe existed.
FIRST_RECIPE_DIGEST = "c7670346c0ef99c8618c699fc70180f93fac8785e4651f3ce5943a1060b6a498"


def _trainer(**recipe: str) -> InpaintTrainer:
    return InpaintTrainer(Settings(steps=1, batch_size=64, lr=1e-3, extra=recipe), cfg=TINY)


def _augmented(seed: int = 11, n: int = 64, **recipe: str):
    trainer = _trainer(**recipe)
    return trainer.augment(make_faces(n, seed, trainer.kinds, layout="wide"), seed, "wide")


def _pixels_within(centres: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """(n, 32, 32) bool: pixel centres closer than ``reach`` (n,) to ``centres`` (n, 2)."""
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    return d2 < reach[:, None, None] ** 2


def test_the_default_recipe_makes_the_first_recipes_batches_byte_for_byte():
    faces = _augmented()
    assert hashlib.sha256(faces.images.tobytes()).hexdigest() == FIRST_RECIPE_DIGEST
    explicit = _augmented(decoy_share="0", shift_share="0.75", shift_y_px="5", shift_x_px="3")
    np.testing.assert_array_equal(explicit.images, faces.images)


def test_no_decoy_where_the_centre_is_nan_and_nothing_else_changes():
    plain = make_faces(32, 4, layout="wide")
    none = make_faces(32, 4, layout="wide", edit=Edit(decoys=np.full((32, 2), np.nan, np.float32)))
    np.testing.assert_array_equal(none.images, plain.images)
    np.testing.assert_array_equal(none.eyes, plain.eyes)


def test_a_decoy_is_a_skin_toned_disc_of_the_eyes_size_where_it_was_asked():
    n = 32
    bare = {"erase": np.ones((n, 2), bool), "mouthless": np.ones(n, bool)}  # nothing to paint over it
    plain = make_faces(n, 4, layout="wide", edit=Edit(**bare))
    top, left, bottom, right = plain.face_box.T
    centres = np.stack([(top + bottom) / 2, (left + right) / 2], -1).astype(np.float32)  # the head's centre
    centres[::2] = np.nan  # every other face: none
    faces = make_faces(n, 4, layout="wide", edit=Edit(decoys=centres, **bare))
    drawn = ~np.isnan(centres[:, 0])
    changed = (faces.images != plain.images).any(-1)  # (n, 32, 32)
    assert not changed[~drawn].any()
    r = plain.eye_radius[:, 0]
    inside = _pixels_within(np.nan_to_num(centres), r - 0.5)  # fully covered by the disc
    reach = _pixels_within(np.nan_to_num(centres), r + 0.5)  # touched by its anti-aliased edge
    assert not (changed & ~reach).any()  # nothing outside the disc changes
    assert (changed[drawn] | ~inside[drawn]).all()
    skin, eye = plain.skin.astype(float), plain.eye_color[:, 0].astype(float)
    luma = np.array([0.299, 0.587, 0.114])
    want = np.clip(skin + ((eye - skin) @ luma)[:, None], 0, 255)  # (n, 3) by hand, from rounded colours
    for i in np.flatnonzero(drawn):
        got = faces.images[i][inside[i]].astype(float)  # (pixels, 3)
        assert np.abs(got - want[i]).max() <= 2.0  # colours stored rounded: a level or two apart
    np.testing.assert_allclose(decoy_colour(eye[:1], skin[:1]), want[:1], atol=1e-4)


def test_the_trainer_draws_decoys_on_the_head_clear_of_the_eyes_and_the_mask():
    seed, n = 11, 256
    trainer = InpaintTrainer(Settings(steps=1, batch_size=n, lr=1e-3, extra={"decoy_share": "1"}), cfg=TINY)
    base = make_faces(n, seed, trainer.kinds, layout="wide")
    plain = InpaintTrainer(Settings(steps=1, batch_size=n, lr=1e-3), cfg=TINY).augment(base, seed, "wide")
    faces = trainer.augment(base, seed, "wide")
    np.testing.assert_array_equal(faces.eyes, plain.eyes)  # the eyes and their moves are as they were
    changed = (faces.images != plain.images).any(-1)  # (n, 32, 32): the decoys' pixels
    with_decoy = changed.any((1, 2))
    assert with_decoy.mean() > 0.25  # most faces have little room beside two eyes and a mouth
    rows, side = np.arange(n), masked_side(seed, n)
    masked = eye_mask(faces.eyes[rows, side], faces.eye_radius[rows, side], TINY).reshape(n, 8, 8)
    assert not (changed & masked.repeat(4, 1).repeat(4, 2)).any()  # never under the mask
    r = faces.eye_radius[:, 0]
    for e in (0, 1):  # DECOY_GAP of skin at least from either eye (bars reach 1.15 r)
        near = _pixels_within(faces.eyes[:, e], 1.15 * r + DECOY_GAP - 0.5)
        assert not (changed & near).any()
    top, left, bottom, right = faces.face_box.T
    cy, cx, ry, rx = (top + bottom) / 2, (left + right) / 2, (bottom - top) / 2, (right - left) / 2
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    on_head = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
        (xx - cx[:, None, None]) / rx[:, None, None]
    ) ** 2 < 1
    assert not (changed & ~on_head).any()
    half = _augmented(seed, n, decoy_share="0.5")
    share = (half.images != plain.images).any((1, 2, 3)).mean() / with_decoy.mean()
    assert 0.35 < share < 0.65


def test_the_kept_eye_moves_as_often_and_as_far_as_the_recipe_says():
    seed, n = 11, 256
    base = make_faces(n, seed, ("valid",), layout="wide")
    still = _trainer(shift_share="0").augment(base, seed, "wide")
    np.testing.assert_array_equal(still.eyes, base.eyes)
    far = _trainer(shift_share="1", shift_y_px="8", shift_x_px="0").augment(base, seed, "wide")
    step = far.eyes - base.eyes  # (n, 2, (dy, dx))
    assert (step[..., 1] == 0).all() and (np.abs(step[..., 0]) <= 8 + 1e-5).all()
    assert (np.abs(step[..., 0]).max(1) > 5).mean() > 0.25  # beyond the first recipe's 5 px (3 in 8)


def test_init_from_starts_from_a_trained_in_painter(tmp_path):
    first = _trainer()
    with torch.no_grad():
        first.model.mask_token.fill_(0.25)
    first.export(tmp_path / "vit-inpaint")
    again = _trainer(init_from=str(tmp_path / "vit-inpaint"))
    for name, value in first.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[name], value, rtol=0, atol=0)


def test_the_cli_passes_set_to_the_in_painter(tmp_path):
    from spatial_attn.cli import main

    with pytest.raises(SystemExit, match=r"unknown --set.*in-painter"):
        main(["train", "vit-inpaint", "--steps", "1", "--set", "nope=1", "--out", str(tmp_path)])


def _data_line(card: str) -> str:
    """The card's Data line alone (its notes, appended below, tell the recipe in their own words)."""
    return next(line for line in card.splitlines() if line.startswith("- **Data:**"))


def test_the_card_says_the_recipe_the_run_record_holds(tmp_path):
    import json
    import shutil

    from spatial_attn.faces.cards import write_card

    out = tmp_path / "vit-inpaint"
    shutil.copytree(Path(__file__).parents[1] / "checkpoints" / "vit-inpaint", out)
    record = json.loads((out / "training.json").read_text())
    for key in (
        "decoy_share",
        "decoy_near",
        "shift_share",
        "shift_y_px",
        "shift_x_px",
        "init_from",
        "visible_weight",
    ):
        record.pop(key, None)
    (out / "training.json").write_text(json.dumps(record))
    first = _data_line(write_card(tmp_path, "vit-inpaint", "| m |", []).read_text())
    assert "kept eye of 75% of the faces drawn moved, up to 5 px in y and 3 px in x" in first
    assert "decoy is asked" not in first and "fine-tune" not in first and "visible patches" not in first
    record |= {"decoy_share": "1.0", "shift_share": "0.9", "shift_y_px": "6", "init_from": "x/vit-inpaint"}
    record["visible_weight"] = "0.2"
    (out / "training.json").write_text(json.dumps(record))
    second = _data_line(write_card(tmp_path, "vit-inpaint", "| m |", []).read_text())
    assert "kept eye of 90% of the faces drawn moved, up to 6 px in y and 3 px in x" in second
    assert "in 100% of the faces a decoy is asked for" in second and "beside the kept eye" not in second
    record["decoy_near"] = "0.6"
    (out / "training.json").write_text(json.dumps(record))
    third = _data_line(write_card(tmp_path, "vit-inpaint", "| m |", []).read_text())
    assert "where one fits, 60% of them beside the kept eye" in third
    assert "started from the trained in-painter `x/vit-inpaint` (a fine-tune)" in second
    assert (
        "weighted 5x (and the visible patches' pixels, painted back from their own tokens, weighted 0.2x)"
        in second
    )


@pytest.mark.parametrize("visible", ["0", "0.2"])
def test_the_loss_weighs_visible_patches_only_when_the_recipe_says(visible):
    trainer = _trainer(visible_weight=visible)
    faces = make_faces(8, 3, layout="wide")
    side = np.arange(8) % 2
    rows = np.arange(8)
    centres, radii = faces.eyes[rows, side], faces.eye_radius[rows, side]
    mask = torch.from_numpy(eye_mask(centres, radii, TINY))  # (8, 64)
    x = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (8, 3, 32, 32)
    with torch.no_grad():
        err = (trainer.model(x, mask) - x).abs().numpy()  # (8, 3, 32, 32)
        got = trainer.loss(faces, side).item()
    hidden = mask.numpy().reshape(8, 8, 8).repeat(4, 1).repeat(4, 2)[:, None]  # (8, 1, 32, 32) by patch
    near = _pixels_within(centres, 1.22 * radii + 0.5)[:, None]  # the eye's reach (EYE_REACH)
    weight = hidden * (1 + 4.0 * near) + float(visible) * ~hidden  # an eye pixel 5x, visible ones as set
    assert got == pytest.approx((err * weight).sum() / (3 * weight.sum()), rel=1e-5)


def test_decoys_beside_the_kept_eye_lie_on_a_ring_around_it_and_anywhere_decoys_keep_their_places():
    seed, n = 11, 256
    anywhere = _augmented(seed, n, decoy_share="1", shift_share="0.9")
    np.testing.assert_array_equal(
        _augmented(seed, n, decoy_share="1", shift_share="0.9", decoy_near="0").images, anywhere.images
    )
    trainer = _trainer(decoy_share="1", shift_share="0.9", decoy_near="1")
    base = make_faces(n, seed, trainer.kinds, layout="wide")
    faces = trainer.augment(base, seed, "wide")
    plain = _trainer(shift_share="0.9").augment(base, seed, "wide")
    changed = (faces.images != plain.images).any(-1)  # (n, 32, 32): the decoys' pixels
    drawn = changed.any((1, 2))
    assert drawn.mean() > 0.35
    rows, side = np.arange(n), masked_side(seed, n)
    kept, r = faces.eyes[rows, 1 - side], faces.eye_radius[:, 0]
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    far = np.hypot(yy - kept[:, :1, None], xx - kept[:, 1:, None])  # (n, 32, 32) px from the kept eye
    # a decoy's pixels lie within its radius of a centre at most 1.15 x (2.15 r + gap) from the eye
    reach = 1.15 * (2.15 * r + DECOY_GAP) + r + 0.5
    assert (np.where(changed, far, 0).max((1, 2)) <= reach).all()
    assert (np.where(changed, far, 99).min((1, 2))[drawn] >= 1.15 * r[drawn] + DECOY_GAP - 0.5).all()
    elsewhere = (anywhere.images != plain.images).any(-1)  # the same measure can fail: of the decoys
    outside = np.where(elsewhere, far, 0).max((1, 2)) > reach  # drawn anywhere, 45% lie beyond the ring
    assert outside[elsewhere.any((1, 2))].mean() > 0.3


def test_the_supervised_attention_is_the_blocks_own_softmax_heads_averaged():
    """Round 4's ``block_attention`` against torch's own weights (``need_weights=True``, heads
    averaged) on the block's normed input, and the block's output left as it was."""
    torch.manual_seed(0)
    trainer = _trainer(attn_weight="1", attn_block="1")
    model = trainer.model.eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    mask = torch.from_numpy(eye_mask(np.array([[12.0, 10.0]] * 3), np.full(3, 3.0), TINY))
    h = model.embed(x, mask)
    h = model.blocks[0](h)
    block = model.blocks[1]
    normed = block.norm1(h)
    _, reference = block.self_attn(normed, normed, normed, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(block_attention(block, h), reference, rtol=1e-5, atol=1e-6)
    painted, attention = trainer.forward(x, mask)
    torch.testing.assert_close(painted, model(x, mask))
    torch.testing.assert_close(attention, reference, rtol=1e-5, atol=1e-6)
    assert _trainer().forward(x, mask)[1] is None  # off by default: the model's own forward


@pytest.mark.parametrize("target", ["kept", "masked"])
def test_the_supervision_reads_the_masked_eyes_row_onto_the_kept_eye(monkeypatch, target):
    """A crafted attention whose masked-eye row lies on the kept eye's cells costs nothing; on the
    masked eye's own cells it costs -log(1e-6)-ish. Query token and cells by hand: patch 4, 8 x 8."""
    n = 8
    trainer = _trainer(attn_weight="1")
    faces = _augmented(n=n, decoy_share="1", attn_weight="1")
    side = masked_side(5, n)
    attention = torch.zeros(n, 64, 64)
    yy, xx = np.mgrid[0:8, 0:8]
    for b in range(n):
        qy, qx = (int(v) // 4 for v in np.floor(faces.eyes[b, side[b]]))
        eye = faces.eyes[b, 1 - side[b] if target == "kept" else side[b]]
        near_y = np.clip(eye[0], yy * 4, yy * 4 + 4) - eye[0]  # nearest point of each 4 x 4 patch
        near_x = np.clip(eye[1], xx * 4, xx * 4 + 4) - eye[1]
        cells = (near_y**2 + near_x**2 < faces.eye_radius[b, 1 - side[b]] ** 2).reshape(-1)
        attention[b, qy * 8 + qx, torch.from_numpy(cells)] = 1 / cells.sum()
    monkeypatch.setattr(trainer, "forward", lambda images, mask: (images, attention))
    loss = trainer.loss(faces, side)
    assert trainer.logs["paint"] == 0
    if target == "kept":
        assert loss.item() == pytest.approx(0, abs=1e-5)
    else:
        assert loss.item() > 10
