"""The wide face layout: position no longer predicts the other eye, and the standard layout keeps its bytes.

Issue 13 found the bundled models' eye-to-eye attention mostly positional. ``make_faces(...,
layout="wide")`` is the data to retrain them on; these tests pin what it must do (spread the eyes,
keep them on the canvas, on the head, apart and identical) and what it must not (change one byte
of the standard layout the shipped models were trained on), and that ``spatial-attn train
--layout`` reaches the data and the model card.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys

import numpy as np
import pytest
import test_data  # the standard layout's checks of kinds and metadata, run here on wide faces

import spatial_attn.data.faces as faces_module
import spatial_attn.faces.train.common as common
import spatial_attn.faces.train.sagan as sagan
from spatial_attn.cli import main
from spatial_attn.data import KINDS, Edit, FaceBatch, make_faces, shape_masks
from spatial_attn.faces.cards import write_card
from spatial_attn.faces.train import TRAINERS
from spatial_attn.faces.train.common import Settings, run

N = 2000
REACH = 1.15  # the widest eye shape (a bar) reaches 1.15 r from its centre


@pytest.fixture(scope="module")
def standard() -> FaceBatch:
    return make_faces(N, 0)


@pytest.fixture(scope="module")
def wide() -> FaceBatch:
    return make_faces(N, 0, layout="wide")


def _digest(batch: FaceBatch) -> str:
    h = hashlib.sha256()
    for f in dataclasses.fields(batch):
        h.update(getattr(batch, f.name).tobytes())
    return h.hexdigest()[:16]


def test_standard_layout_keeps_its_bytes():
    """Hashes computed from the code before ``layout`` existed: the shipped models' training data."""
    a, b = make_faces(64, 7), make_faces(64, 7, layout="standard")
    for f in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)
    images = hashlib.sha256(make_faces(16, 0).images.tobytes()).hexdigest()
    assert images == "0d3a08b58150ea34883d4b735a3cb5da5b8ca9a90e051e255605f6d245ca6851"
    assert _digest(make_faces(50, 0, KINDS)) == "8128eb2a5e45cbf5"  # every kind, every field
    with pytest.raises(ValueError, match="layout"):
        make_faces(4, 0, layout="narrow")


def test_wide_layout_spreads_the_eyes(standard, wide):
    """Eye 0's centre: std (y, x) 0.97 / 1.29 px standard, 3.06 / 3.13 px wide (seed 0)."""
    spread = wide.eyes[:, 0].std(0) / standard.eyes[:, 0].std(0)  # (y, x)
    assert (spread >= 2).all(), spread


def test_wide_eyes_are_on_the_canvas_apart_and_on_the_head(wide):
    eyes, r = wide.eyes, wide.eye_radius[..., None]  # (n, 2, 2), (n, 2, 1)
    assert (eyes - REACH * r >= 0).all() and (eyes + REACH * r <= 32).all()
    assert (np.linalg.norm(eyes[:, 1] - eyes[:, 0], axis=1) >= 8).all()
    top, left, bottom, right = wide.face_box.T
    cy, cx, ry, rx = (top + bottom) / 2, (left + right) / 2, (bottom - top) / 2, (right - left) / 2
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    for i in range(len(wide)):  # every pixel an eye covers at least half is inside the head ellipse
        head = ((yy - cy[i]) / ry[i]) ** 2 + ((xx - cx[i]) / rx[i]) ** 2 < 1
        for e in range(2):
            mask = shape_masks(eyes[i, e], float(r[i, e, 0]))[wide.eye_shape[i, e]]
            assert mask.any() and not (mask & ~head).any(), (i, e)


def _drawn(batch: FaceBatch, seed: int, e: int, layout: str, kinds=("valid",)) -> np.ndarray:
    """(n, 32, 32) how much of eye ``e``'s colour each pixel holds: the image against the same
    faces drawn with that eye erased, projected on the eye colour (1 = all eye, 0 = untouched)."""
    erase = np.zeros((len(batch), 2), dtype=bool)
    erase[:, e] = True
    base = make_faces(len(batch), seed, kinds, Edit(erase=erase), layout=layout).images.astype(float)
    towards = batch.eye_color[:, e, None, None, :].astype(float) - base
    moved = batch.images.astype(float) - base
    return (moved * towards).sum(-1) / np.maximum((towards**2).sum(-1), 1e-9)


@pytest.mark.parametrize("layout", ["standard", "wide"])
def test_valid_eyes_are_drawn_identical(layout):
    """Both eyes of a valid face share shape, colour and radius, and each one's pixels are exactly
    that shape at its centre: wherever the drawn eye and the template disagree, the pixel is an
    anti-aliased edge half covered (uint8 rounding decides)."""
    n, seed = 400, 3
    f = make_faces(n, seed, layout=layout)
    assert (f.eye_shape[:, 0] == f.eye_shape[:, 1]).all() and (f.eye_radius[:, 0] == f.eye_radius[:, 1]).all()
    assert (f.eye_color[:, 0] == f.eye_color[:, 1]).all() and (f.eyes[:, 0, 0] == f.eyes[:, 1, 0]).all()
    for e in range(2):
        cover = _drawn(f, seed, e, layout)
        for i in range(n):
            template = shape_masks(f.eyes[i, e], float(f.eye_radius[i, e]))[f.eye_shape[i, e]]
            wrong = template != (cover[i] >= 0.5)
            assert (np.abs(cover[i][wrong] - 0.5) < 0.05).all(), (i, e)


def test_position_alone_no_longer_predicts_the_other_eye(standard, wide):
    """Least squares predicting eye 1's x from eye 0's (y, x) and a constant (2,000 faces, seed 0):
    residual std 0.96 px in the standard layout, 2.04 px in the wide one."""

    def residual(f: FaceBatch) -> float:
        design = np.c_[f.eyes[:, 0].astype(float), np.ones(len(f))]
        target = f.eyes[:, 1, 1].astype(float)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        return float((target - design @ coef).std())

    std, wid = residual(standard), residual(wide)
    assert std < 1.2 and wid > 1.8 and wid > 1.6 * std, (std, wid)


def test_every_kind_works_in_the_wide_layout():
    faces = make_faces(N, 123, KINDS, layout="wide")
    test_data.test_each_kind_breaks_exactly_one_thing(faces)
    test_data.test_no_face_images_hold_no_eyes(faces)
    test_data.test_metadata_matches_the_pixels(faces)
    drawn = ~faces.eye_missing[..., None]  # every drawn eye, moved or shrunk ones included
    r = faces.eye_radius[..., None]
    assert ((faces.eyes - REACH * r >= 0) | ~drawn).all() and ((faces.eyes + REACH * r <= 32) | ~drawn).all()
    standard = make_faces(N, 123, KINDS)  # the same faces, laid out otherwise
    for field in ("labels", "eye_shape", "eye_color", "eye_missing", "skin"):
        np.testing.assert_array_equal(getattr(faces, field), getattr(standard, field), err_msg=field)
    offset = faces.labels == KINDS.index("eye_offset")
    dy = np.abs(faces.eyes[offset, 0, 0] - faces.eyes[offset, 1, 0])
    assert ((dy >= 2.5) & (dy <= 4.5)).all()


@pytest.mark.parametrize("layout", ["standard", "wide"])
def test_a_third_eye_is_on_the_canvas_and_apart(layout, monkeypatch):
    """The third eye of ``extra_eye`` faces is in no metadata: its centres are taken from the
    function that places it. Wide: whole on the canvas; both: >= 4.4 px from either eye."""
    placed = []

    def spy(*args, **kwargs):
        third = late_kinds(*args, **kwargs)
        placed.append((third, args[4][:, 0].copy()))  # centres (n, 2), radius of the third eye (n,)
        return third

    late_kinds = faces_module._late_kinds
    monkeypatch.setattr(faces_module, "_late_kinds", spy)
    f = make_faces(N, 4, ("extra_eye",), layout=layout)
    ((third, r),) = placed
    assert not np.isnan(third).any()
    gap = np.linalg.norm(third[:, None] - f.eyes, axis=-1).min(1)
    assert gap.min() >= 4.4 - 1e-4, gap.min()
    if layout == "wide":
        assert (third - REACH * r[:, None] >= 0).all() and (third + REACH * r[:, None] <= 32).all()


def test_edits_work_in_the_wide_layout():
    n, seed = 64, 5
    plain = make_faces(n, seed, KINDS, layout="wide")
    shift = np.random.default_rng(0).normal(0, 2, (n, 2, 2)).astype(np.float32)
    moved = make_faces(n, seed, KINDS, Edit(shift=shift), layout="wide")
    np.testing.assert_allclose(moved.eyes, plain.eyes + shift, atol=1e-5)
    assert not np.array_equal(moved.images, plain.images)
    blank = make_faces(n, seed, KINDS, Edit(blank=True), layout="wide")
    np.testing.assert_array_equal(blank.images, make_faces(n, seed, KINDS, Edit(blank=True)).images)
    assert blank.eye_missing.all()


def test_wide_face_box_is_the_head():
    """With the eyes erased, the upper half of the head (no mouth there) is skin wherever it is on
    the canvas and 1.5 px inside the box's ellipse; 1.5 px outside it, it is not."""
    n, seed = 300, 6
    f = make_faces(n, seed, edit=Edit(erase=np.ones((n, 2), dtype=bool)), layout="wide")
    top, left, bottom, right = f.face_box.T
    cy, cx, ry, rx = (top + bottom) / 2, (left + right) / 2, (bottom - top) / 2, (right - left) / 2
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    norm = np.sqrt(
        ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2
        + ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2
    )
    edge = 1.5 / np.minimum(ry, rx)[:, None, None]
    upper = yy < cy[:, None, None]
    skin = np.abs(f.images.astype(int) - f.skin[:, None, None, :].astype(int)).max(-1) <= 2
    inside = upper & (norm <= 1 - edge)
    assert inside.sum((1, 2)).min() > 20 and skin[inside].all()
    outside = upper & (norm >= 1 + edge)
    assert skin[outside].mean() < 0.05


def _spy(monkeypatch, module) -> list[str]:
    """Record the layout of every ``make_faces`` call that ``module`` makes."""
    layouts: list[str] = []

    def spy(*args, layout="standard", **kwargs):
        layouts.append(layout)
        return make_faces(*args, layout=layout, **kwargs)

    monkeypatch.setattr(module, "make_faces", spy)
    return layouts


def test_train_layout_reaches_the_data_and_the_card(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["train", "ddpm", "--steps", "2", "--batch-size", "2", "--layout", "wide"]
    argv += ["--out", str(out), "--run-dir", str(runs)]
    monkeypatch.setattr(sys, "argv", ["spatial-attn", *argv])
    layouts = _spy(monkeypatch, common)
    assert main(argv) == 0
    assert layouts == ["wide", "wide"]  # both steps' batches
    record = json.loads((out / "ddpm-faces" / "training.json").read_text())
    assert record["layout"] == "wide" and "--layout wide" in record["command"]
    card = write_card(out, "ddpm-faces", "| metrics |", []).read_text()
    assert 'layout="wide"' in card and "Wide layout" in card

    cards = []  # a standard run's card is the one written before layouts existed (no "layout" key)
    for layout in ("standard", None):
        record.pop("layout")
        if layout:
            record["layout"] = layout
        (out / "ddpm-faces" / "training.json").write_text(json.dumps(record))
        cards.append(write_card(out, "ddpm-faces", "| metrics |", []).read_text())
    assert cards[0] == cards[1] and "Wide layout" not in cards[0] and 'layout="wide"' not in cards[0]

    with pytest.raises(SystemExit, match="layout"):  # resuming must not switch the data mid-run
        main(
            [
                "train",
                "ddpm",
                "--steps",
                "3",
                "--batch-size",
                "2",
                "--out",
                str(out),
                "--run-dir",
                str(runs),
                "--resume",
            ]
        )


def test_sagan_negatives_follow_the_layout(tmp_path, monkeypatch):
    trainer_cls, defaults = TRAINERS["sagan"]
    s = Settings(steps=1, batch_size=2, lr=defaults["lr"], out=tmp_path / "out", layout="wide")
    negatives = _spy(monkeypatch, sagan)
    batches = _spy(monkeypatch, common)
    run(trainer_cls(s), s, tmp_path / "run")
    assert batches == ["wide"] and negatives == ["wide"]
