"""What a generator draws and where its own attention looks, read off its samples.

Generated faces come with no metadata, so the eyes are found in the pixels (:func:`locate_eyes`)
and named by the palette colour and the shape template they match best (:func:`eye_traits`).
Both readers are also run on drawn faces, whose truth is known: the *coverage* of a colour or
shape is its share among the samples' located eyes over its share among the drawn faces' located
eyes, so the readers' own biases (a black eye is harder to find on a dark background) cancel.

The SAGAN generator's attention has no input image to edit, so its controls edit what the layer
itself receives, the 16 x 16 feature map (activation patching): the other eye's cells are
*erased*, filled with the most typical cell of the skin around that eye, or *moved*, the same
cells pasted :data:`GEN_SHIFT` cells up or down, and the generator runs on from the edited map (its
samples show the eye gone or moved, which :func:`edit_drawn` checks). The rows are the ones the
layer computed on the edited map, captured as usual. A third control is position alone: the row
read at the eye cells of *another* sample (``position``). Samples whose eyes are not found have no
eye to edit and are not in these figures (the row says how many are); the collapse count covers
them too, queried where the located samples' eyes are on average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import spatial_attn as sa

from .data import EYE_COLORS, SHAPES, shape_masks
from .data.tensors import to_uint8
from .eye_attention import collapsed, eye_cells, grid_lift, lifts, peak_on, row_at, stack
from .models import BundledModel

_NEAR = 45  # largest channel difference of an eye pixel from its palette colour
_USUAL_EYES = np.array([[12.5, 10.0], [12.5, 22.0]])  # where drawn faces' eyes are, about (y, x)
#: An edit of the generator's features covers the cells within an eye's radius + EDIT_MARGIN px:
#: the features that will become an eye reach past the pixels it is painted on.
EDIT_MARGIN = 2.0
GEN_SHIFT = 3  # cells (2 px each at 16 x 16) a moved eye goes up or down: 6 px, as far as 5 px drawn
_SKIN_RING = (2.0, 4.0)  # px past the edited region whose cells give the fill (skin, in features)


def locate_eyes(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Eye centres (2, 2) and a radius in a generated face, or None if two eyes are not clear.

    An eye is a compact blob of pixels near one of the palette's eye colours in the upper face,
    one on each side of the middle column; diffuse matches (a background of a similar colour)
    are rejected by their spread.
    """
    near = _palette_distance(image).min(-1) < _NEAR  # (32, 32)
    near[:5], near[22:], near[:, :3], near[:, 29:] = False, False, False, False
    eyes, areas = [], []
    for side in (slice(0, 16), slice(16, 32)):
        ys, xs = np.nonzero(near[:, side])
        if len(ys) < 4 or ys.std() > 2.5 or xs.std() > 2.5:
            return None
        eyes.append((ys.mean() + 0.5, xs.mean() + 0.5 + side.start))
        areas.append(len(ys))
    if abs(eyes[0][0] - eyes[1][0]) > 3:
        return None
    return np.array(eyes, dtype=np.float32), float(np.clip(np.sqrt(np.mean(areas) / np.pi), 2.0, 4.0))


def _palette_distance(image: np.ndarray) -> np.ndarray:
    """(32, 32, len(EYE_COLORS)): each pixel's largest channel difference from each eye colour."""
    return np.abs(image[:, :, None, :].astype(int) - EYE_COLORS.astype(int)).max(-1)


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
    dist = _palette_distance(image)  # (32, 32, colours)
    colour = int(np.argmax(((dist < _NEAR) & window[..., None]).sum((0, 1))))
    mask = (dist[..., colour] < _NEAR) & window
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


@dataclass(frozen=True)
class Located:
    """Eyes found in samples, as the figures read them (:class:`~spatial_attn.eye_attention.Eyes`)."""

    eyes: np.ndarray  # (m, 2, 2)
    eye_radius: np.ndarray  # (m, 2)


def generator_figures(gan: BundledModel, twin: BundledModel, seeds: list[int]) -> dict[str, np.ndarray]:
    """Per-sample figures of the generator's attention on the samples drawn from ``seeds``.

    ``located`` (0/1) and ``collapsed`` for every sample; for the located ones, as
    :func:`~spatial_attn.eye_attention.measure` gives them for real faces: ``valid`` and ``erased``
    lifts, ``follows``, ``stays`` and ``chance``, with the edits made in the layer's input features
    (see the module docstring), ``twin_*`` the same for the untrained twin at the same cells;
    ``position`` (the row from this sample's eye read at the next located sample's eye cells) and
    ``drawn`` (the share of this sample's edits its image shows, :func:`edit_drawn`).
    """
    base = _generate(gan, seeds)
    found = [locate_eyes(img) for img in base.images]
    located = [i for i, f in enumerate(found) if f is not None]
    mean_eyes = np.mean([found[i][0] for i in located], 0) if located else _USUAL_EYES
    out: dict[str, list[float]] = {"located": [float(f is not None) for f in found], "collapsed": []}
    for i, f in enumerate(found):
        eyes, radius = f if f is not None else (mean_eyes, 3.0)
        cells = [eye_cells(e, radius, base.layer.key_grid) for e in eyes]
        out["collapsed"].append(
            np.mean([collapsed(row_at(base.layer, i, eyes[s]), cells[1 - s]) for s in (0, 1)])
        )
    if not located:
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    eyes = Located(
        np.stack([found[i][0] for i in located]), np.repeat([[found[i][1]] for i in located], 2, 1)
    )
    sign = np.random.default_rng([seeds[0], 4]).choice([-1, 1], len(located))  # up or down, per sample
    picked = [seeds[i] for i in located]
    for prefix, model in (("", gan), ("twin_", twin)):
        figures = _edited_figures(model, picked, eyes, sign)
        out.update({prefix + k: v for k, v in figures.items() if prefix == "" or k != "drawn"})
    out["position"] = [
        _lift(base.layer, i, *found[located[(k + 1) % len(located)]]) for k, i in enumerate(located)
    ]
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


@dataclass
class Generated:
    """One batched generator forward: its captured attention layer, the attention's input
    features (B, C, h, w) and the images it drew (B, 32, 32, 3)."""

    layer: sa.AttentionLayer
    features: torch.Tensor
    images: np.ndarray


def _generate(bm: BundledModel, seeds: list[int], features: torch.Tensor | None = None) -> Generated:
    """The generator on the latents of ``seeds`` under capture; with ``features``, its attention
    layer receives those instead of its own (and everything after it runs on from them)."""
    prepared = stack([bm.prepare(seed=s) for s in seeds])
    attn = _attention_module(bm, seeds[0])
    with _attention_input(attn, features) as seen, sa.capture(bm.module) as cap, torch.no_grad():
        images = to_uint8(bm.module(*prepared.args, **prepared.kwargs))
    (layer,) = cap.layers
    return Generated(layer, seen["x"], images)


def _attention_module(bm: BundledModel, seed: int) -> nn.Module:
    """The generator's attention module: the one a capture of its forward on one latent records."""
    prepared = bm.prepare(seed=seed)
    with sa.capture(bm.module) as cap, torch.no_grad():
        bm.module(*prepared.args, **prepared.kwargs)
    (layer,) = cap.layers
    return bm.module.get_submodule(layer.name)


@contextmanager
def _attention_input(module: nn.Module, features: torch.Tensor | None) -> Iterator[dict[str, torch.Tensor]]:
    """Records what ``module`` receives (``seen["x"]``), replaced by ``features`` if given; the
    hook goes first, so every other hook (the capture's) sees the replaced input, and is removed."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple) -> tuple | None:
        seen["x"] = args[0].detach()
        return None if features is None else (features, *args[1:])

    handle = module.register_forward_pre_hook(hook, prepend=True)
    try:
        yield seen
    finally:
        handle.remove()


def _edited_figures(bm: BundledModel, seeds: list[int], eyes: Located, sign: np.ndarray) -> dict[str, list]:
    """The controlled figures of ``bm``'s generator on ``seeds`` (one per located sample), edits
    made at ``eyes`` in its own features, moved eyes going ``sign`` x :data:`GEN_SHIFT` cells.

    Lifts are read at the eye's cells, as for drawn faces. The moved-eye test asks for the peak in
    the cells the edit moved (the eye's radius + :data:`EDIT_MARGIN`), and leaves out the query
    eye's own such cells: in feature space the eye is the region whose move moves the drawn eye,
    and on the dev seeds the generator's peak sat on its edge (a cell beside the disc) and went
    wherever the region was moved, cell for cell. Chance is that region's share, so it is larger.
    """
    valid = _generate(bm, seeds)
    regions = Located(eyes.eyes, eyes.eye_radius + EDIT_MARGIN)  # what an edit erases or moves
    grid = tuple(valid.features.shape[-2:])
    moves = np.stack([sign * GEN_SHIFT * 32 / grid[0], np.zeros(len(sign))], -1)  # (m, 2) pixels
    rows = range(len(seeds))
    out: dict[str, list] = {"valid": [], "erased": [], "follows": [], "stays": [], "chance": [], "drawn": []}
    for src in (0, 1):
        out["valid"] += lifts(valid.layer, eyes, rows, src, 1 - src)["valid"]
    for e in (0, 1):  # query the kept eye 1 - e; the erased / moved eye is e
        erased = _generate(bm, seeds, erase(valid.features, eyes, e))
        moved_eyes = eyes.eyes.copy()
        moved_eyes[:, e] += moves
        moved = _generate(bm, seeds, move(valid.features, eyes, e, moves))
        out["erased"] += lifts(erased.layer, eyes, rows, 1 - e, e)["valid"]
        out["follows"] += [peak_on(moved.layer, b, regions, b, 1 - e, moved_eyes[b, e])[0] for b in rows]
        stays = [peak_on(valid.layer, b, regions, b, 1 - e, moved_eyes[b, e]) for b in rows]
        out["stays"] += [s for s, _ in stays]
        out["chance"] += [c for _, c in stays]
        out["drawn"] += [
            edit_drawn(valid.images[b], erased.images[b], moved.images[b], eyes.eyes[b, e], moves[b])
            for b in rows
        ]
    m = len(seeds)  # each list holds direction 0 then direction 1 (valid: both ways): average them
    return {
        k: list((np.asarray(v[:m], dtype=float) + np.asarray(v[m:], dtype=float)) / 2) for k, v in out.items()
    }


def _region(features: torch.Tensor, centre: np.ndarray, radius: float, extra: float = 0.0) -> np.ndarray:
    """(h, w) bool: the feature cells an edit of the eye at ``centre`` covers (``extra`` px wider)."""
    return eye_cells(centre, radius + EDIT_MARGIN + extra, tuple(features.shape[-2:]))


def _filled(features: torch.Tensor, eyes: Located, e: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """A copy of ``features`` with eye ``e``'s region of every sample filled with one cell of the
    ring around it (skin, as the generator encodes it): the cell nearest the ring's mean, a feature
    vector the generator really made (the mean itself is one it never makes); and the regions."""
    out = features.clone()
    regions = []
    for b in range(len(features)):
        centre, radius = eyes.eyes[b, e], float(eyes.eye_radius[b, e])
        region = _region(features, centre, radius)
        ring = _region(features, centre, radius, _SKIN_RING[1]) & ~_region(
            features, centre, radius, _SKIN_RING[0]
        )
        ring &= ~_region(features, eyes.eyes[b, 1 - e], float(eyes.eye_radius[b, 1 - e]))
        around = features[b][:, torch.from_numpy(ring)]  # (C, cells)
        centre_of = around.mean(-1, keepdim=True)
        fill = around[:, int(((around - centre_of) ** 2).sum(0).argmin())]  # (C,) the most typical cell
        out[b][:, torch.from_numpy(region)] = fill[:, None]
        regions.append(region)
    return out, regions


def erase(features: torch.Tensor, eyes: Located, e: int) -> torch.Tensor:
    """``features`` (B, C, h, w) with eye ``e`` of every sample erased (see :func:`_filled`)."""
    return _filled(features, eyes, e)[0]


def move(features: torch.Tensor, eyes: Located, e: int, moves: np.ndarray) -> torch.Tensor:
    """``features`` with eye ``e``'s region of every sample erased and pasted ``moves`` (m, 2)
    pixels away (whole cells, vertical)."""
    out, regions = _filled(features, eyes, e)
    cell = 32 / features.shape[-2]
    for b, region in enumerate(regions):
        dy = round(float(moves[b, 0]) / cell)
        ys, xs = np.nonzero(region)
        keep = (ys + dy >= 0) & (ys + dy < features.shape[-2])
        out[b][:, ys[keep] + dy, xs[keep]] = features[b][:, ys[keep], xs[keep]]
    return out


def edit_drawn(
    before: np.ndarray, erased: np.ndarray, moved: np.ndarray, centre: np.ndarray, shift: np.ndarray
) -> float:
    """Share of the two edits of one eye that the generated images show (0, 0.5 or 1): *erased*
    when the eye's pixels around ``centre`` fell to under a quarter of what ``before`` had; *moved*
    when their centroid went at least half of ``shift`` (y, x pixels) its way. Features edited
    where the generator does not keep its eye would show neither."""
    colour = max(range(len(EYE_COLORS)), key=lambda c: int(_eye_pixels(before, centre, c).sum()))
    here, left = (_eye_pixels(img, centre, colour) for img in (before, erased))
    gone = left.sum() < 0.25 * max(1, here.sum())
    there = _eye_pixels(moved, centre, colour, reach_y=5 + abs(shift[0]))
    went_y = np.nonzero(there)[0].mean() - np.nonzero(here)[0].mean() if here.any() and there.any() else 0.0
    went = went_y * np.sign(shift[0]) >= abs(shift[0]) / 2
    return (float(gone) + float(went)) / 2


def _eye_pixels(image: np.ndarray, centre: np.ndarray, colour: int, reach_y: float = 5.0) -> np.ndarray:
    """(32, 32) bool: pixels near palette colour ``colour`` in a box around ``centre``, 5 px each
    side (the other eye's nearest pixel is >= 6.6 px away) and ``reach_y`` up and down."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]] + 0.5
    box = (np.abs(yy - centre[0]) < reach_y) & (np.abs(xx - centre[1]) < 5)
    return box & (_palette_distance(image)[..., colour] < _NEAR)


def _lift(layer: sa.AttentionLayer, b: int, eyes: np.ndarray, radius: float) -> float:
    """Mean of both directions' eye-to-eye lift in sample ``b`` at ``eyes`` (2, 2)."""
    cells = [eye_cells(eyes[1 - src], radius, layer.key_grid) for src in (0, 1)]
    return float(np.mean([grid_lift(row_at(layer, b, eyes[src]), cells[src]) for src in (0, 1)]))
