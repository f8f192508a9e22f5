"""Does a layer's attention from one eye follow the *other eye*, or only the place an eye usually is?

The eye-to-eye lift alone cannot tell: the faces put their eyes in nearly the same places, so a
layer that learned "from here, look over there" scores as high as one that looks for the eye. An
audit found the ViT's first layer lifting 4.3 on faces and 4.5 on images with no face at all.
So every figure here comes with controls probed at the **same query pixels**, made from the same
seed with one thing changed (:class:`spatial_attn.data.Edit`, so every other byte is the same):

* ``erased``: the other eye not drawn. The **content lift** is ``valid / erased``: how much more
  the layer looks at the other eye's cells when the eye is there. A positional layer gives ~1.
* ``blank``: the background alone, no face.
* ``moved``: the other eye drawn :data:`SHIFT_PX` pixels up or down. The test passes when the
  attention peak (the query eye's own cells left out) lands on the moved eye and more mass is on
  its new cells than on its old ones (:func:`_peak_on`). Its controls: ``decoy``, the same test
  with the moved eye drawn as a decoy (a skin-toned disc of its size and contrast,
  :class:`~spatial_attn.data.Edit`): does the peak follow the eye, or anything that moved?
  ``chance``: the new cells' share of the candidate cells. ``black_eye`` marks the faces whose eyes
  are black (nearest palette colour): their decoy, skin-toned but as dark against the skin as a
  black eye, is a near-black disc, an eye-like object itself, so the table also gives the decoy
  share without them (no target: the protocol's share counts every face). (``stays``, the test on
  the unmoved face, is ~0 by construction for any layer that looks at the eye, so the table leaves
  it out.)
* ``cheek``: the lift onto the other eye from a *non-eye* query, a cheek cell ``cheek_px`` below
  the query eye's centre, on the valid faces. A layer that looks for the other eye because the
  query is an eye reaches it far less from the cheek.

Lifts are taken over the grid (special tokens such as a ViT's CLS left out, the row renormalised,
so 1 is uniform) and, for layers with special tokens, also with them kept (``*_cls``: mass over
the cells' share of *all* keys). A row that puts >= :data:`COLLAPSE` of its mass into one grid row
holding no cell of the other eye is counted as ``collapsed`` (the SAGAN generator's failure: an
audit found rows from an eye going 91 to 100% to the top row). Every figure is per face, so the
caller can bootstrap over faces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data import Edit, FaceBatch, make_faces
from ..data.faces import EYE_COLORS
from ..engine import AttentionLayer, capture, cell_at, cell_box
from ..models import BundledModel, Prepared
from .protocol import CHEEK_PX

IMAGE_HW = (32, 32)
SHIFT_PX = 5.0  # > one 4-px cell: a moved eye covers cells it did not cover before
COLLAPSE = 0.9
#: Per-face figures a layer gets (each an (n,) array); ``*_cls`` only where there are special keys.
FIGURES = (
    "valid",
    "erased",
    "blank",
    "cheek",
    "follows",
    "decoy",
    "stays",
    "chance",
    "collapsed",
    "black_eye",
)
BATCH = 32
BLACK = 0  # EYE_COLORS' black

Figures = dict[str, dict[str, np.ndarray]]  # layer -> figure -> (n,) per face
Runner = Callable[[FaceBatch, range, int], dict[str, AttentionLayer]]


@dataclass(frozen=True)
class Variants:
    """One seed's faces and the controls made from it (all (n, ...) aligned face by face)."""

    valid: FaceBatch
    erased: tuple[FaceBatch, FaceBatch]  # eye 0 erased, eye 1 erased
    blank: FaceBatch
    moved: tuple[FaceBatch, FaceBatch]  # eye 0 moved, eye 1 moved
    decoy: tuple[FaceBatch, FaceBatch]  # eye 0 moved as a decoy, eye 1 moved as a decoy


def variants(n: int, seed: int, decoy: bool = True) -> Variants:
    """``n`` valid faces from ``seed`` and their controls; the shift's sign is drawn from the seed.

    ``decoy=False`` draws the decoy control's moved eye as the eye itself (the control then *is* the
    moved-eye test, as a check that it can fail)."""
    sign = np.random.default_rng([seed, 3]).choice([-1.0, 1.0], n)  # up or down, per face

    def one_eye(e: int, value: np.ndarray) -> np.ndarray:
        out = np.zeros((n, 2, *value.shape[1:]), dtype=value.dtype)
        out[:, e] = value
        return out

    shift = np.stack([SHIFT_PX * sign, np.zeros(n)], -1).astype(np.float32)  # (n, 2) (dy, dx)
    hide = np.ones(n, dtype=bool)
    return Variants(
        valid=make_faces(n, seed),
        erased=tuple(make_faces(n, seed, edit=Edit(erase=one_eye(e, hide))) for e in (0, 1)),
        blank=make_faces(n, seed, edit=Edit(blank=True)),
        moved=tuple(make_faces(n, seed, edit=Edit(shift=one_eye(e, shift))) for e in (0, 1)),
        decoy=tuple(
            make_faces(n, seed, edit=Edit(shift=one_eye(e, shift), decoy=one_eye(e, hide & decoy)))
            for e in (0, 1)
        ),
    )


def measure(
    bm: BundledModel, v: Variants, timestep: int | None = None, cheek_px: float = CHEEK_PX
) -> Figures:
    """Every :data:`FIGURES` entry of every attention layer of ``bm`` on one seed's faces.

    Each image goes through ``bm.prepare`` exactly as in the app (for the DDPM: noised to
    ``timestep`` with the face's index as the noise seed, the same noise for every variant).
    ``cheek_px=0`` queries the cheek control at the eye itself (a check that it can fail).
    """
    faces = v.valid
    n = len(faces)
    run = _runner(bm, timestep)
    per: dict[str, dict[str, list[float]]] = {}

    def add(layer: str, figure: str, values: list[float]) -> None:
        per.setdefault(layer, {}).setdefault(figure, []).extend(values)

    for start in range(0, n, BATCH):
        rows = range(start, min(n, start + BATCH))
        for src in (0, 1):  # query eye src: the valid faces' figures, one direction at a time
            for layer, lv in run(v.valid, rows, src).items():
                for key, value in _on_valid(lv, v, rows, src).items():
                    add(layer, key, value)
                add(layer, "cheek", _lifts(lv, faces, rows, src, 1 - src, (cheek_px, 0.0))["valid"])
        for e in (0, 1):  # query the kept eye 1 - e; the erased / moved eye is e
            for layer, lv in run(v.erased[e], rows, 1 - e).items():
                for key, value in _lifts(lv, faces, rows, src=1 - e, dst=e).items():
                    add(layer, key.replace("valid", "erased"), value)
            for key, edited in (("follows", v.moved[e]), ("decoy", v.decoy[e])):
                for layer, lv in run(edited, rows, 1 - e).items():
                    add(layer, key, [_follows(lv, b, faces, edited, i, e) for b, i in enumerate(rows)])
        for src in (0, 1):
            for layer, lv in run(v.blank, rows, src).items():
                for key, value in _lifts(lv, faces, rows, src, 1 - src).items():
                    add(layer, key.replace("valid", "blank"), value)
    black = black_eyes(faces)
    return {
        layer: {**{k: _per_face(vals, n) for k, vals in figs.items()}, "black_eye": black}
        for layer, figs in per.items()
    }


def black_eyes(faces: FaceBatch) -> np.ndarray:
    """(n,) 1.0 where a face's eyes are black (eye 0's colour nearest the palette's black), else 0."""
    gap = np.abs(faces.eye_color[:, 0, None].astype(np.float32) - EYE_COLORS[None]).sum(-1)  # (n, colours)
    return (np.argmin(gap, 1) == BLACK).astype(np.float64)


def _per_face(values: list[float], n: int) -> np.ndarray:
    """(n,) per face: figures collected once per face as they are, those collected once per
    direction (both directions of a batch in turn, see :func:`_pair_mean`) averaged."""
    arr = np.asarray(values, dtype=np.float64)
    return arr if len(arr) == n else _pair_mean(arr, n)


def _pair_mean(arr: np.ndarray, n: int) -> np.ndarray:
    """Values laid out batch by batch, each batch holding direction 0 then direction 1 -> (n,)."""
    out, pos = np.empty(n), 0
    for start in range(0, n, BATCH):
        m = min(n, start + BATCH) - start
        out[start : start + m] = (arr[pos : pos + m] + arr[pos + m : pos + 2 * m]) / 2
        pos += 2 * m
    return out


def _runner(bm: BundledModel, timestep: int | None) -> Runner:
    """A function that runs ``bm`` on some faces of a batch, queried from eye ``src``, and returns
    its captured layers. A model that :attr:`~spatial_attn.models.BundledModel.masks_eye` (an
    in-painter) gets eye ``src`` hidden, as it was trained: the row that matters is the hidden eye's.
    Any other model sees the same input from either eye, so its last run is reused."""
    last: dict[tuple, dict[str, AttentionLayer]] = {}

    def run(faces: FaceBatch, rows: range, src: int) -> dict[str, AttentionLayer]:
        key = (id(faces), rows, src if bm.masks_eye else None)
        if key not in last:
            prepared = [bm.prepare(Image.fromarray(faces.images[i]), timestep=timestep, seed=i) for i in rows]
            if bm.masks_eye:
                prepared = [
                    bm.mask_eye(p, faces.eyes[i, src], faces.eye_radius[i, src])
                    for p, i in zip(prepared, rows, strict=True)
                ]
            with capture(bm.module) as cap, torch.no_grad():
                bm.run(stack(prepared))
            last.clear()
            last[key] = {layer.name: layer for layer in cap.layers}
        return last[key]

    return run


def stack(prepared: Sequence[Prepared]) -> Prepared:
    """Several prepared single inputs as one batch (tensors concatenated along dim 0)."""

    def cat(values: Sequence) -> object:
        return torch.cat(list(values)) if isinstance(values[0], torch.Tensor) else values[0]

    first = prepared[0]
    args = tuple(cat([p.args[i] for p in prepared]) for i in range(len(first.args)))
    kwargs = {k: cat([p.kwargs[k] for p in prepared]) for k in first.kwargs}
    return Prepared(args=args, kwargs=kwargs, display=first.display, note=first.note)


def _on_valid(layer: AttentionLayer, v: Variants, rows: range, src: int) -> dict[str, list[float]]:
    """On the unmoved faces, from eye ``src``: its lift, the position-only peak test (eye ``1 - src``
    as if moved) and chance, collapse."""
    faces, dst = v.valid, 1 - src
    out = _lifts(layer, faces, rows, src, dst)
    out["stays"], out["chance"], out["collapsed"] = [], [], []
    for b, i in enumerate(rows):
        stays, chance = _peak_on(layer, b, faces, i, src, v.moved[dst].eyes[i, dst])
        out["stays"].append(stays)
        out["chance"].append(chance)
        out["collapsed"].append(collapsed(row_at(layer, b, faces.eyes[i, src]), _cells(layer, faces, i, dst)))
    return out


def _lifts(
    layer: AttentionLayer,
    faces: FaceBatch,
    rows: range,
    src: int,
    dst: int,
    offset: tuple[float, float] = (0.0, 0.0),
) -> dict[str, list[float]]:
    """Lift from eye ``src`` (or the pixel ``offset`` (dy, dx) from its centre) to eye ``dst`` of
    each face (its cells as ``faces`` drew them)."""
    out: dict[str, list[float]] = {"valid": []}
    special = layer.keys.count - int(np.prod(layer.key_grid))
    if special:
        out["valid_cls"] = []
    for b, i in enumerate(rows):
        row = row_at(layer, b, faces.eyes[i, src] + np.asarray(offset))  # (h, w), special mass left out
        cells = _cells(layer, faces, i, dst)
        out["valid"].append(grid_lift(row, cells))
        if special:  # the row sums to 1 over all keys; the cells' share of all keys is the baseline
            out["valid_cls"].append(float(row[cells].sum() / (cells.sum() / layer.keys.count)))
    return out


def _follows(layer: AttentionLayer, b: int, faces: FaceBatch, moved: FaceBatch, i: int, e: int) -> float:
    """1 if, with eye ``e`` moved, the peak from the other eye is on its new cells, else 0."""
    hit, _ = _peak_on(layer, b, faces, i, 1 - e, moved.eyes[i, e])
    return hit


def _peak_on(
    layer: AttentionLayer,
    b: int,
    faces: FaceBatch,
    i: int,
    src: int,
    new: np.ndarray,
) -> tuple[float, float]:
    """Whether the row from eye ``src`` follows the other eye to ``new``; and chance for that.

    It follows when its peak (the query eye's own cells left out) is on a cell the eye at ``new``
    covers *and* more mass is on the cells only the eye at ``new`` covers than on those only the
    unmoved eye covered (a peak on a cell both cover says nothing by itself). Chance is the share
    of candidate cells the eye at ``new`` covers.
    """
    dst = 1 - src
    own, old = _cells(layer, faces, i, src), _cells(layer, faces, i, dst)
    moved = eye_cells(new, faces.eye_radius[i, dst], layer.key_grid) & ~own
    row = row_at(layer, b, faces.eyes[i, src])
    return follows(row, own, old, moved), float(moved.sum() / (~own).sum())


def follows(row: np.ndarray, own: np.ndarray, old: np.ndarray, moved: np.ndarray) -> float:
    """1 if ``row``'s peak outside ``own`` is on ``moved`` and more of its mass is on the cells only
    ``moved`` covers than on those only ``old`` covers, else 0 (all (h, w); see :func:`_peak_on`)."""
    row = np.where(own, 0.0, row)
    peak = np.unravel_index(np.argmax(row), row.shape)
    return float(moved[peak] and row[moved & ~old].sum() > row[old & ~moved].sum())


def row_at(layer: AttentionLayer, b: int, point: np.ndarray) -> np.ndarray:
    """The (h, w) row of image ``b`` from the query cell holding pixel ``point`` (y, x), a point
    off the image taken at the nearest pixel on it (a cheek query below a low eye)."""
    pixel = np.clip(np.floor(point), 0, np.array(IMAGE_HW) - 1).astype(int)
    return layer.row(*cell_at(tuple(int(v) for v in pixel), IMAGE_HW, layer.query_grid), batch=b)


def grid_lift(row: np.ndarray, cells: np.ndarray) -> float:
    """Mass of ``row`` on ``cells`` over their share of the grid (row renormalised: 1 = uniform)."""
    return float(row[cells].sum() / row.sum() / cells.mean())


def collapsed(row: np.ndarray, other_eye: np.ndarray) -> float:
    """1 if ``row`` puts >= COLLAPSE of its grid mass into one grid row that misses ``other_eye``'s
    cells (a line along the eyes is looking at the eye; the top row is not), else 0."""
    shares = row.sum(1) / row.sum()
    top = int(np.argmax(shares))
    return float(shares[top] >= COLLAPSE and not other_eye[top].any())


def _cells(layer: AttentionLayer, faces: FaceBatch, i: int, e: int) -> np.ndarray:
    """Key cells eye ``e`` of face ``i`` covers."""
    return eye_cells(faces.eyes[i, e], faces.eye_radius[i, e], layer.key_grid)


def eye_cells(centre: np.ndarray, radius: float, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the cells of ``grid`` whose box touches the eye disc (centre (y, x), pixels)."""
    h, w = grid
    boxes = np.array([[cell_box((y, x), grid, IMAGE_HW) for x in range(w)] for y in range(h)])  # (h, w, 4)
    near_y = np.clip(centre[0], boxes[..., 0], boxes[..., 2])  # nearest point of each box
    near_x = np.clip(centre[1], boxes[..., 1], boxes[..., 3])
    return (near_y - centre[0]) ** 2 + (near_x - centre[1]) ** 2 < radius**2
