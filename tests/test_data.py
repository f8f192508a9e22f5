"""The procedural faces: reproducible from the seed, and their metadata says where the pixels are."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spatial_attn.data import EYE_COLORS, KINDS, SHAPES, FaceBatch, make_faces


@pytest.fixture(scope="module")
def faces():
    return make_faces(2000, seed=123, kinds=KINDS)


def _pixel(images: np.ndarray, points: np.ndarray) -> np.ndarray:
    """RGB of the pixel containing each (y, x) point; images (n, H, W, 3), points (n, 2) -> (n, 3)."""
    y, x = np.floor(points).astype(int).T
    return images[np.arange(len(images)), y, x].astype(int)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a, b, c = make_faces(64, 7, KINDS), make_faces(64, 7, KINDS), make_faces(64, 8, KINDS)
    for field in ("images", "labels", "eyes", "eye_radius", "eye_missing", "face_box"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images)


def test_shapes_dtypes_and_kinds(faces):
    n = len(faces)
    assert faces.images.shape == (n, 32, 32, 3) and faces.images.dtype == np.uint8
    assert faces.labels.dtype == np.int64 and faces.eyes.shape == (n, 2, 2)
    assert faces.eyes.dtype == np.float32 and faces.eye_radius.shape == (n, 2)
    assert faces.face_box.shape == (n, 4)
    counts = np.bincount(faces.labels, minlength=len(KINDS))
    assert (counts > n / len(KINDS) * 0.8).all()  # drawn uniformly
    assert set(make_faces(50, 0).labels) == {0}  # default: valid faces only
    with pytest.raises(ValueError, match="kinds"):
        make_faces(4, 0, ["smiling"])


def test_eyes_are_a_mirrored_pair_inside_the_face(faces):
    top, left, bottom, right = faces.face_box.T
    (y0, x0), (y1, x1) = faces.eyes[:, 0].T, faces.eyes[:, 1].T
    np.testing.assert_allclose(y0, y1)
    np.testing.assert_allclose((x0 + x1) / 2, (left + right) / 2, atol=1e-4)  # the face axis
    assert (x1 - x0 >= 10).all()
    assert ((top < y0) & (y0 < bottom) & (left < x0) & (x1 < right)).all()


def test_each_kind_breaks_exactly_one_thing(faces):
    same_shape = faces.eye_shape[:, 0] == faces.eye_shape[:, 1]
    same_color = (faces.eye_color[:, 0] == faces.eye_color[:, 1]).all(-1)
    missing = faces.eye_missing.any(-1)
    expect = {
        "valid": (True, True, False),
        "eye_color": (True, False, False),
        "eye_shape": (False, True, False),
        "missing_eye": (True, True, True),
        "no_face": (True, True, True),  # no eye drawn at all: both are missing
    }
    for kind, (shape_ok, color_ok, gone) in expect.items():
        rows = faces.labels == KINDS.index(kind)
        assert (same_shape[rows] == shape_ok).all(), kind
        assert (same_color[rows] == color_ok).all(), kind
        assert (missing[rows] == gone).all(), kind
    assert faces.eye_missing[faces.labels == KINDS.index("no_face")].all()


def test_no_face_images_hold_no_eyes(faces):
    """Where the eyes would have been, a no_face image does not show the eye colour it would have had."""
    junk = faces.labels == KINDS.index("no_face")
    for e in range(2):
        centre = _pixel(faces.images[junk], faces.eyes[junk, e])
        err = np.abs(centre - faces.eye_color[junk, e].astype(int)).max(-1)
        assert (err > 20).mean() > 0.95  # a background may match an eye colour by chance, rarely


def test_metadata_matches_the_pixels(faces):
    """An eye's centre pixel has the eye's colour, unless it is a ring (hollow) or missing."""
    ring = SHAPES.index("ring")
    faces = _with_a_face(faces)
    for e in range(2):
        centre = _pixel(faces.images, faces.eyes[:, e])
        drawn = ~faces.eye_missing[:, e] & (faces.eye_shape[:, e] != ring)
        err = np.abs(centre - faces.eye_color[:, e].astype(int)).max(-1)
        assert (err[drawn] <= 2).all()
        # where the eye is missing, its centre shows skin: far from every eye colour
        gone = faces.eye_missing[:, e]
        dist = np.abs(centre[gone, None, :] - EYE_COLORS[None].astype(int)).max(-1).min(-1)
        assert gone.any() and (dist > 20).all()


def test_face_box_is_the_head(faces):
    """Just inside each side of the box (clear of eyes and mouth), the pixel is the skin colour."""
    faces = _with_a_face(faces)
    top, left, bottom, right = faces.face_box.T
    cy, cx = (top + bottom) / 2 + 3, (left + right) / 2
    for point in ((top + 1.5, cx), (bottom - 1.5, cx), (cy, left + 2.5), (cy, right - 2.5)):
        got = _pixel(faces.images, np.stack(point, -1))
        assert (np.abs(got - faces.skin.astype(int)).max(-1) <= 2).all()


def _with_a_face(faces: FaceBatch) -> FaceBatch:
    """The faces that were drawn (no_face images keep their would-be metadata but no face)."""
    keep = faces.labels != KINDS.index("no_face")
    return FaceBatch(**{f.name: getattr(faces, f.name)[keep] for f in dataclasses.fields(faces)})
