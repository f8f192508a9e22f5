"""What a generator draws and where its own attention looks, read off its samples.

Generated faces come with no metadata, so the eyes are found in the pixels
(:func:`~spatial_attn.data.eyes.locate_eyes`) and named by the palette colour and the shape
template they match best (:func:`eye_traits`). Both readers are also run on drawn faces, whose truth
is known: the *coverage* of a colour or shape is its share among the samples' located eyes over its
share among the drawn faces' located eyes, so the readers' own biases (a black eye is harder to find
on a dark background) cancel.

The SAGAN generator's attention has no input image to edit, so it gets no erased-eye or moved-eye
control. Its control is position alone: the same row read at the eye cells of *another* sample
(``position``). Samples whose eyes are not found are not in the lift; the collapse count covers
them too, queried where the located samples' eyes are on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import SHAPES, shape_masks
from ..data.eyes import NEAR, locate_eyes, palette_distance
from ..engine import AttentionLayer, capture
from ..models import BundledModel
from .eye_attention import collapsed, eye_cells, grid_lift, row_at, stack
from .protocol import CHEEK_PX

#: Where drawn faces' eyes are, about (y, x).
USUAL_EYES = np.array([[12.5, 10.0], [12.5, 22.0]], dtype=np.float32)


def eye_traits(image: np.ndarray, centre: np.ndarray) -> tuple[int, int]:
    """(colour, shape) indices of the eye at ``centre``: the palette colour most of its pixels are
    near, and the shape template (at the radius that fits best) whose pixels overlap them most.

    A disc and a ring differ by a hole of a pixel or two, which templates at a slightly misplaced
    centre miss (on SAGAN samples, rings by eye, they said disc half the time). So between those
    two the hole decides: a ring if a pixel within 0.75 px of the centre is not eye-coloured.
    """
    window = np.zeros(image.shape[:2], dtype=bool)
    y, x = np.floor(centre).astype(int)
    window[max(0, y - 5) : y + 6, max(0, x - 5) : x + 6] = True
    dist = palette_distance(image)  # (32, 32, colours)
    colour = int(np.argmax(((dist < NEAR) & window[..., None]).sum((0, 1))))
    mask = (dist[..., colour] < NEAR) & window
    iou = [_iou(shape_masks(centre, r), mask) for r in (2.6, 3.0, 3.4)]  # each (shapes,)
    shape = int(np.argmax(np.max(iou, 0)))
    if SHAPES[shape] in ("disc", "ring"):
        yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]] + 0.5
        core = np.hypot(yy - centre[0], xx - centre[1]) < 0.75
        shape = SHAPES.index("disc" if mask[core].all() else "ring")
    return colour, shape


def _iou(templates: np.ndarray, mask: np.ndarray) -> np.ndarray:
    inter = (templates & mask).sum((1, 2))
    return inter / np.maximum(1, (templates | mask).sum((1, 2)))


@dataclass
class Coverage:
    """Share of each colour and shape among located eyes, in samples and in drawn faces."""

    colours: dict[str, tuple[float, float]]  # name -> (samples, data)
    shapes: dict[str, tuple[float, float]]
    located: tuple[float, float]  # share of images with both eyes located (samples, data)

    @property
    def worst(self) -> tuple[str, float]:
        """The trait whose samples share is the smallest fraction of its data share."""
        ratios = {k: s / d for k, (s, d) in {**self.colours, **self.shapes}.items() if d > 0}
        name = min(ratios, key=ratios.get)
        return name, ratios[name]


COLOUR_NAMES = ("black", "blue", "green", "red", "purple", "cyan")


def coverage(samples: np.ndarray, drawn: np.ndarray) -> Coverage:
    """Coverage of every eye colour and shape in ``samples`` against drawn valid faces ``drawn``."""
    (s_col, s_shape, s_loc), (d_col, d_shape, d_loc) = _traits(samples), _traits(drawn)

    def shares(a: np.ndarray, b: np.ndarray, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
        share = [np.bincount(v, minlength=len(names)) / max(1, len(v)) for v in (a, b)]
        return {n: (float(share[0][i]), float(share[1][i])) for i, n in enumerate(names)}

    return Coverage(shares(s_col, d_col, COLOUR_NAMES), shares(s_shape, d_shape, SHAPES), (s_loc, d_loc))


def _traits(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Colour and shape of every eye of every image whose eyes are located, and the share located."""
    found = [(img, f[0]) for img in images if (f := locate_eyes(img)) is not None]
    traits = np.array([eye_traits(img, eye) for img, eyes in found for eye in eyes], dtype=int).reshape(-1, 2)
    return traits[:, 0], traits[:, 1], len(found) / max(1, len(images))


def generator_figures(gan: BundledModel, twin: BundledModel, seeds: list[int]) -> dict[str, np.ndarray]:
    """Per-sample figures of the generator's attention on the samples drawn from ``seeds``.

    ``located`` (0/1), then for located samples ``lift``, ``twin`` (the untrained twin at the
    same cells), ``position`` (the row from this sample's eye read at the next located
    sample's eye cells), ``cheek`` (the lift from a cell ``CHEEK_PX`` below the eye, not an eye)
    and ``peak_left`` / ``peak_right`` (1 if the row from the left / right eye, its own cells left
    out, peaks on the other eye's cells) with ``chance`` (the other eye's share of those cells);
    ``collapsed`` for every sample.
    """
    trained_layer, images = _generator_rows(gan, seeds)
    twin_layer, _ = _generator_rows(twin, seeds)
    found = [locate_eyes(img) for img in images]
    located = [i for i, f in enumerate(found) if f is not None]
    mean_eyes = np.mean([found[i][0] for i in located], 0) if located else USUAL_EYES
    out: dict[str, list[float]] = {"located": [float(f is not None) for f in found], "collapsed": []}
    for i, f in enumerate(found):
        eyes, radius = f if f is not None else (mean_eyes, 3.0)
        cells = [eye_cells(e, radius, trained_layer.key_grid) for e in eyes]
        out["collapsed"].append(
            np.mean([collapsed(row_at(trained_layer, i, eyes[s]), cells[1 - s]) for s in (0, 1)])
        )
    for key in ("lift", "twin", "position", "cheek", "peak_left", "peak_right", "chance"):
        out[key] = []
    for k, i in enumerate(located):
        (eyes, radius), other = found[i], found[located[(k + 1) % len(located)]]
        out["lift"].append(_lift(trained_layer, i, eyes, radius))
        out["twin"].append(_lift(twin_layer, i, eyes, radius))
        out["position"].append(_lift(trained_layer, i, *other))
        out["cheek"].append(_lift(trained_layer, i, eyes, radius, (CHEEK_PX, 0.0)))
        chance = []
        for src, key in ((0, "peak_left"), (1, "peak_right")):
            own, dst = (eye_cells(e, radius, trained_layer.key_grid) for e in (eyes[src], eyes[1 - src]))
            row = np.where(own, 0.0, row_at(trained_layer, i, eyes[src]))
            out[key].append(float(dst[np.unravel_index(np.argmax(row), row.shape)]))
            chance.append(float((dst & ~own).sum() / (~own).sum()))
        out["chance"].append(float(np.mean(chance)))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _generator_rows(bm: BundledModel, seeds: list[int]) -> tuple[AttentionLayer, np.ndarray]:
    """One batched generator forward over the samples of ``seeds``: its layer and the images."""
    prepared = [bm.prepare(seed=s) for s in seeds]
    with capture(bm.module) as cap, torch.no_grad():
        bm.run(stack(prepared))
    (layer,) = cap.layers
    return layer, np.stack([p.display for p in prepared])


def _lift(
    layer: AttentionLayer, b: int, eyes: np.ndarray, radius: float, offset: tuple[float, float] = (0.0, 0.0)
) -> float:
    """Mean of both directions' eye-to-eye lift in sample ``b`` at ``eyes`` (2, 2), each queried
    ``offset`` (dy, dx) pixels from its eye's centre."""
    cells = [eye_cells(eyes[1 - src], radius, layer.key_grid) for src in (0, 1)]
    return float(
        np.mean([grid_lift(row_at(layer, b, eyes[src] + np.asarray(offset)), cells[src]) for src in (0, 1)])
    )
