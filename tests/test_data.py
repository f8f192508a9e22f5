"""The procedural faces: reproducible from the seed, and their metadata says where the pixels are."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from spatial_attn.data import EYE_COLORS, KINDS, SHAPES, FaceBatch, blur, make_faces


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


def test_kinds_made_before_the_late_ones_keep_their_bytes():
    """The DDPM and SAGAN were trained on these batches: adding kinds must not change them."""
    expect = {
        ("valid",): "3cbaf3f8b9f1a5a9",
        KINDS[:5]: "249dfdcff4ddad57",
        ("eye_color", "eye_shape", "missing_eye"): "cff4a39bece0fa1e",
    }
    for kinds, digest in expect.items():
        f = make_faces(64, 11, kinds)
        got = hashlib.sha256(f.images.tobytes() + f.labels.tobytes() + f.eyes.tobytes()).hexdigest()[:16]
        assert got == digest, kinds


def test_late_kinds_break_the_eye_they_say():
    rows = {k: make_faces(200, 9, (k,)) for k in ("valid", "eye_size", "eye_offset", "extra_eye", "eye_tint")}
    r = rows["eye_size"].eye_radius
    assert ((r.min(1) / r.max(1) >= 0.5 - 1e-6) & (r.min(1) / r.max(1) <= 0.7 + 1e-6)).all()
    dy = np.abs(np.diff(rows["eye_offset"].eyes[:, :, 0], axis=1))[:, 0]
    assert ((dy >= 2.5) & (dy <= 4.5)).all()
    gap = np.abs(np.diff(rows["eye_tint"].eye_color.astype(int), axis=1)).max(-1)[:, 0]
    assert (gap >= 45).all()  # 60+ levels apart, less the shared jitter and clipping

    def eye_pixels(f: FaceBatch) -> float:
        near = np.abs(f.images.astype(int) - f.eye_color[:, None, None, 0].astype(int)).max(-1)  # (n, 32, 32)
        return float((near < 12).sum((1, 2)).mean())

    assert eye_pixels(rows["extra_eye"]) > 1.3 * eye_pixels(rows["valid"])  # a third eye's worth
    for kind, f in rows.items():  # everything else is a valid face's
        assert not f.eye_missing.any() and (f.eye_shape[:, 0] == f.eye_shape[:, 1]).all(), kind


def test_blur_keeps_sigma_zero_and_softens_the_rest():
    images = make_faces(4, 1).images
    out = blur(images, np.array([0.0, 0.0, 1.2, 1.2]))
    np.testing.assert_array_equal(out[:2], images[:2])
    edges = [np.abs(np.diff(x.astype(int), axis=1)).mean() for x in (images[2:], out[2:])]
    assert edges[1] < 0.8 * edges[0]  # the backgrounds are smooth already: the edges soften
    assert abs(out[2:].astype(float).mean() - images[2:].astype(float).mean()) < 1


def test_eyes_are_a_mirrored_pair_inside_the_face(faces):
    faces = _kinds_other_than(faces, "no_face", "eye_offset")
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
        "eye_size": (True, True, False),
        "eye_offset": (True, True, False),
        "extra_eye": (True, True, False),
        "eye_tint": (True, False, False),
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
        full = faces.eye_radius[:, e] >= 2.6  # a shrunk bar (eye_size) is ~1 px thick: its centre is blended
        drawn = ~faces.eye_missing[:, e] & (faces.eye_shape[:, e] != ring) & full
        err = np.abs(centre - faces.eye_color[:, e].astype(int)).max(-1)
        assert (err[drawn] <= 2).all()
        # where the eye is missing, its centre shows skin: far from every eye colour
        gone = faces.eye_missing[:, e]
        dist = np.abs(centre[gone, None, :] - EYE_COLORS[None].astype(int)).max(-1).min(-1)
        assert gone.any() and (dist > 20).all()


def test_face_box_is_the_head(faces):
    """Just inside each side of the box (clear of eyes and mouth), the pixel is the skin colour."""
    faces = _kinds_other_than(faces, "no_face", "extra_eye", "eye_offset")  # eyes where the probes are
    top, left, bottom, right = faces.face_box.T
    cy, cx = (top + bottom) / 2 + 3, (left + right) / 2
    for point in ((top + 1.5, cx), (bottom - 1.5, cx), (cy, left + 2.5), (cy, right - 2.5)):
        got = _pixel(faces.images, np.stack(point, -1))
        assert (np.abs(got - faces.skin.astype(int)).max(-1) <= 2).all()


def _with_a_face(faces: FaceBatch) -> FaceBatch:
    """The faces that were drawn (no_face images keep their would-be metadata but no face)."""
    return _kinds_other_than(faces, "no_face")


def _kinds_other_than(faces: FaceBatch, *kinds: str) -> FaceBatch:
    keep = ~np.isin(faces.labels, [KINDS.index(k) for k in kinds])
    return FaceBatch(**{f.name: getattr(faces, f.name)[keep] for f in dataclasses.fields(faces)})
