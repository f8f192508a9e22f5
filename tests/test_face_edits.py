"""The face edits the sealed eval's controls and judge probes are made of change what they say and
nothing else: a decoy eye, a mouthless face, a head moved or scaled, eye shapes chosen."""

from __future__ import annotations

import numpy as np

from spatial_attn.data import KINDS, SHAPES, Edit, make_faces
from spatial_attn.data.faces import EYE_COLORS, decoy_colour

N = 40
LUMA = np.array([0.299, 0.587, 0.114])


def _near(points: np.ndarray, radius: float) -> np.ndarray:
    """(n, 32, 32) bool: pixels within ``radius`` of each face's point (n, 2) (y, x)."""
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    return np.hypot(yy - points[:, 0, None, None], xx - points[:, 1, None, None]) < radius


def test_a_decoy_is_the_eye_as_a_skin_toned_disc_of_its_size_and_contrast():
    plain = make_faces(N, 11)
    on = np.zeros((N, 2), dtype=bool)
    on[:, 1] = True
    decoy = make_faces(N, 11, edit=Edit(decoy=on))
    changed = (decoy.images != plain.images).any(-1)
    assert changed.all(axis=(1, 2)).sum() == 0 and changed.any(axis=(1, 2)).all()
    assert not changed[~_near(plain.eyes[:, 1], 4.5)].any()  # only eye 1's place changes
    centre = np.floor(plain.eyes[:, 1]).astype(int)
    pixel = decoy.images[np.arange(N), centre[:, 0], centre[:, 1]].astype(float)  # a disc: no hole
    want = decoy_colour(plain.eye_color[:, 1].astype(np.float32), plain.skin.astype(np.float32))
    assert np.abs(pixel - want).max() <= 2
    unclipped = ((want > 0) & (want < 255)).all(1)
    contrast = (plain.eye_color[:, 1] - plain.skin.astype(float)) @ LUMA
    np.testing.assert_allclose(((want - plain.skin) @ LUMA)[unclipped], contrast[unclipped], atol=1.5)
    palette_gap = np.abs(want[:, None] - EYE_COLORS[None]).max(-1).min(-1)
    assert np.median(palette_gap) > 40  # not an eye colour


def test_a_mouthless_face_differs_only_where_its_mouth_was():
    plain = make_faces(N, 12)
    mouthless = make_faces(N, 12, edit=Edit(mouthless=np.ones(N, dtype=bool)))
    changed = (mouthless.images != plain.images).any(-1)
    assert changed.any(axis=(1, 2)).all()
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    cx = (plain.face_box[:, 1] + plain.face_box[:, 3]) / 2
    below = yy[None] > plain.eyes[:, :, 0].max(1)[:, None, None] + 3.5
    on_axis = np.abs(xx[None] - cx[:, None, None]) < 7.5  # half-width <= 5 px, its soft edge wider
    assert not changed[~(below & on_axis)].any()
    none = make_faces(N, 12, edit=Edit(mouthless=np.zeros(N, dtype=bool)))
    np.testing.assert_array_equal(none.images, plain.images)


def test_a_moved_head_carries_its_eyes_and_mouth_and_leaves_the_background():
    plain = make_faces(N, 13)
    step = np.tile([0.0, 4.0], (N, 1))
    moved = make_faces(N, 13, edit=Edit(head_shift=step))
    np.testing.assert_allclose(moved.eyes - plain.eyes, np.broadcast_to(step[:, None], (N, 2, 2)), atol=1e-5)
    np.testing.assert_allclose(moved.face_box - plain.face_box, np.tile([0, 4, 0, 4], (N, 1)), atol=1e-5)
    inner = _near(plain.eyes[:, 0], 2.0)  # the eye's inner pixels, moved 4 px right, are the same
    same = moved.images[:, :, 4:][inner[:, :, :-4]] - plain.images[:, :, :-4][inner[:, :, :-4]]
    assert np.abs(same.astype(int)).max() <= 1
    corner = moved.images[:, :2, :2] == plain.images[:, :2, :2]  # outside every head
    assert corner.mean() > 0.8


def test_a_scaled_head_has_smaller_eyes_closer_together():
    plain = make_faces(N, 14)
    scale = np.full(N, 0.85)
    small = make_faces(N, 14, edit=Edit(head_scale=scale))
    gap = lambda f: f.eyes[:, 1, 1] - f.eyes[:, 0, 1]  # noqa: E731
    np.testing.assert_allclose(gap(small), 0.85 * gap(plain), rtol=1e-5)
    np.testing.assert_allclose(small.eye_radius, 0.85 * plain.eye_radius, rtol=1e-5)
    height = lambda f: f.face_box[:, 2] - f.face_box[:, 0]  # noqa: E731
    np.testing.assert_allclose(height(small), 0.85 * height(plain), rtol=1e-5)


def test_eye_shapes_can_be_chosen_and_the_label_follows():
    ring, vbar = SHAPES.index("ring"), SHAPES.index("vbar")
    pair = np.tile([ring, vbar], (N, 1))
    faces = make_faces(N, 15, ("eye_shape",), edit=Edit(shapes=pair))
    assert (faces.eye_shape == pair).all() and (faces.labels == KINDS.index("eye_shape")).all()
    same = make_faces(N, 15, ("eye_shape",), edit=Edit(shapes=np.full((N, 2), ring)))
    assert (same.labels == KINDS.index("valid")).all()
    keep = make_faces(N, 15, ("eye_shape",), edit=Edit(shapes=np.full((N, 2), -1)))
    np.testing.assert_array_equal(keep.images, make_faces(N, 15, ("eye_shape",)).images)
