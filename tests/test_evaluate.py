"""The evaluation's own pieces: targets read right, eye cells and located eyes where the faces put them."""

from __future__ import annotations

import numpy as np

from spatial_attn.data import make_faces
from spatial_attn.evaluate import Result, eye_cells, format_table, locate_eyes


def test_targets_are_read_and_shown():
    hit = Result("m", "accuracy", ">= 98%", 0.987, 0.2, percent=True)
    miss = Result("m", "lift", ">= 3", 1.93, 1.02)
    none = Result("m", "generator lift", "-", 0.74, 1.0)
    assert (hit.met, miss.met, none.met) == (True, False, None)
    table = format_table([hit, miss, none]).splitlines()
    assert table[0] == "| model | metric | target | trained | met | random twin |"
    assert table[2:] == [
        "| m | accuracy | >= 98% | 98.7% | yes | 20.0% |",
        "| m | lift | >= 3 | 1.93 | **no** | 1.02 |",
        "| m | generator lift | - | 0.74 | - | 1.00 |",
    ]


def test_eye_cells_are_the_cells_the_disc_touches():
    cells = eye_cells(np.array([10.0, 10.0]), 3.0, (8, 8))  # 4 px cells; the disc spans 7..13 px
    assert cells.shape == (8, 8)
    assert sorted(zip(*np.nonzero(cells), strict=True)) == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
        (2, 3),
        (3, 1),
        (3, 2),
        (3, 3),
    ]
    one = eye_cells(np.array([10.0, 10.0]), 1.0, (8, 8))  # inside cell (2, 2), 2 px from every edge
    assert one.sum() == 1 and one[2, 2]


def test_located_eyes_are_where_the_faces_drew_them():
    faces = make_faces(100, 5)
    found = [(i, locate_eyes(img)) for i, img in enumerate(faces.images)]
    found = [(i, f) for i, f in found if f is not None]
    assert len(found) >= 50  # 56 of these 100: a background near an eye colour makes it give up
    error = np.array([np.abs(eyes - faces.eyes[i]).max() for i, (eyes, _) in found])  # pixels
    assert (error < 1.5).mean() >= 0.97  # a background blob can pull one eye off, rarely (1 in ~400)
    assert all(2.0 <= radius <= 4.0 for _, (_, radius) in found)
