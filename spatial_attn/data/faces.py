"""Procedural 32 x 32 faces whose two eyes must match: a long-range dependency only attention sees.

A convolution near one eye cannot see the other eye ~12 px away until several layers deep, so a
model that draws or judges *matching* eyes has a reason to look from one eye to the other. That is
the structure the bundled models are trained on and the metric ``evaluate.eye_lift`` measures.

Everything is drawn with numpy on whole batches at once (no Python loop over images), fast enough
(>= 5,000 images/s) that training makes its data on the fly and nothing is stored. Edges are
anti-aliased by turning a signed distance into coverage, ``clip(0.5 - d, 0, 1)``, which keeps the
images smooth enough for a small diffusion model to learn.

Every image is determined by ``(seed, index-in-batch)`` through one ``numpy.random.Generator``:
the same call returns the same bytes on every machine.

Two layouts (``make_faces(..., layout=...)``). In the ``"standard"`` one, on which the bundled
models were trained, the head's centre moves only +-1.5 px vertically and +-2 px horizontally and
the eyes are 10 to 14 px apart, so where the other eye is can be told from a pixel's position
alone: least squares predicting eye 1's x from eye 0's (y, x) misses by 0.96 px (residual std,
2,000 faces of seed 0), a third of an eye's radius, and eye 0 itself spreads only 0.97 px (y) and
1.29 px (x). An audit (issue 13) found the models' eye-to-eye attention mostly positional: a
layer's "lift" almost as high with the other eye erased, or with no face at all. The ``"wide"``
layout exists to retrain them where position cannot predict the other eye: head centre +-5 px in
both axes, head radii scaled by 0.75 to 1.1, eyes 0.15 to 0.40 of the head's half-height above its
centre and 8 to 18 px apart. On the same 2,000 faces the residual is 2.04 px (2.1x) and eye 0
spreads 3.06 px (y) and 3.13 px (x), 3.2x and 2.4x the standard. Eyes stay fully on the canvas
and on the head, >= 1.5 px of skin between them, above the mouth; the head itself may cross the
canvas's edge (``face_box`` then reaches past 0 or 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Label index = position. ``valid`` faces have two identical eyes; each negative breaks one thing,
#: and ``no_face`` has none at all (a bare background or head, flat colour, noise): the judge of
#: generated samples must not call a blank or noisy image valid just because no eye is *mismatched*.
#: The last four are the mistakes generated samples make that a judge trained on the first five
#: let through (an audit found 48 to 97% of each called valid): one eye smaller, one eye out of
#: line, a third eye, one eye's colour tinted or off the palette. They come last so that a judge
#: trained on the first five keeps its label indices.
KINDS = (
    "valid",
    "eye_color",
    "eye_shape",
    "missing_eye",
    "no_face",
    "eye_size",
    "eye_offset",
    "extra_eye",
    "eye_tint",
)
#: The kinds drawn from a second generator (``[seed, 2]``): a batch without them keeps the bytes
#: it had before they existed, so the DDPM's and the SAGAN's training data did not change.
LATE_KINDS = KINDS[5:]
#: Eye shapes, chosen to differ at a radius of ~3 px (a disc and a square would not, reliably).
SHAPES = ("disc", "ring", "hbar", "vbar", "plus")
#: Eye colours (RGB), far from each other and from skin tones so a mismatch is unambiguous.
EYE_COLORS = np.array(
    [[25, 25, 30], [40, 90, 235], [20, 165, 60], [215, 35, 45], [150, 50, 210], [0, 195, 215]],
    dtype=np.float32,
)
SIZE = 32
#: The layouts :func:`make_faces` draws (see the module docstring for why ``wide`` exists).
LAYOUTS = ("standard", "wide")

_SKIN_LIGHT = np.array([250, 214, 180], dtype=np.float32)
_SKIN_DARK = np.array([120, 76, 48], dtype=np.float32)
_MOUTH = np.array([150, 30, 50], dtype=np.float32)


@dataclass(frozen=True)
class FaceBatch:
    """Images and the metadata that says where everything was drawn (pixel units, (y, x))."""

    images: np.ndarray  # (n, 32, 32, 3) uint8
    labels: np.ndarray  # (n,) int64, index into KINDS
    eyes: np.ndarray  # (n, 2, 2) float32 eye centres (y, x); eye 0 is on the left of the image
    eye_radius: np.ndarray  # (n, 2) float32
    eye_missing: np.ndarray  # (n, 2) bool: the eye was not drawn (its centre says where it would be)
    eye_shape: np.ndarray  # (n, 2) int64 index into SHAPES
    eye_color: np.ndarray  # (n, 2, 3) uint8 RGB
    face_box: np.ndarray  # (n, 4) float32 (top, left, bottom, right) of the head ellipse
    skin: np.ndarray  # (n, 3) uint8 RGB of the head

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Edit:
    """A change to every face of a batch that draws nothing random, so all else keeps its bytes.

    It makes the controls of ``spatial-attn eval``: the same face with one eye erased, with one eye
    moved, or the same background with no face at all, probed at the same pixels. Labels and the
    metadata of the undrawn eye (``eye_missing`` set, its centre where it would be) follow the edit.
    """

    erase: np.ndarray | None = None  # (n, 2) bool: eyes not drawn
    shift: np.ndarray | None = None  # (n, 2, 2) pixels (dy, dx) added to each eye's centre
    blank: bool = False  # background only: no head, eyes or mouth
    #: (n, 2) bool: the eye drawn as a *decoy*, a disc of its radius in the skin's hue whose
    #: luminance differs from the skin's as the eye's does (clipped to 0..255): the same size and
    #: contrast, not an eye. The eval's control for "follows the eye, or anything that moved".
    decoy: np.ndarray | None = None
    mouthless: np.ndarray | None = None  # (n,) bool: no mouth drawn (the judge must not call it valid)
    #: (n, 2) pixels (dy, dx) the whole head moves by (head, eyes, mouth; not the background).
    head_shift: np.ndarray | None = None
    #: (n,) factor the whole head is scaled by about its centre (radii, eye size, spacing, mouth).
    head_scale: np.ndarray | None = None
    #: (n, 2) index into SHAPES of each eye's shape, -1 to keep the drawn one. A face given two
    #: shapes is labelled ``eye_shape`` if they differ and ``valid`` if not (if it was one of those).
    shapes: np.ndarray | None = None
    #: (n, 2) centres (y, x) of one more decoy per face, drawn elsewhere (NaN: none): a disc of eye
    #: 0's radius in the decoy's colour, drawn after the eyes and before the mouth. Training faces
    #: for the in-painter, whose masked eye must tell the other eye from a disc of its size.
    decoys: np.ndarray | None = None


def make_faces(
    n: int,
    seed: int,
    kinds: Sequence[str] = ("valid",),
    edit: Edit | None = None,
    layout: str = "standard",
) -> FaceBatch:
    """Draw ``n`` faces from ``seed``; each image's kind is drawn uniformly from ``kinds``.

    A kind named twice is drawn twice as often (the judge's training weights valid faces so).

    ``layout="standard"`` is what the bundled models were trained on, byte for byte as before the
    option existed. ``layout="wide"`` moves, scales and spaces the same faces (same backgrounds,
    skins, eye shapes and colours, mouth sizes, kinds) over a wider range, so that a pixel's
    position no longer tells where the other eye is: head centre +-5 px (not +-1.5 / +-2), head radii x0.75 to
    x1.1, eyes 8 to 18 px apart (not 10 to 14), eye height 0.15 to 0.40 of the head's half-height
    (not 0.22 to 0.32); eyes fully on the canvas and on the head, >= 8 px apart centre to centre,
    above the mouth. Its extra randomness comes from its own generator (``[seed, 3]``), so the
    standard layout's draws are untouched.
    """
    edit = edit or Edit()
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    wide = layout == "wide"
    rng = np.random.default_rng(seed)
    labels = np.array([KINDS.index(k) for k in kinds], dtype=np.int64)[rng.integers(0, len(kinds), n)]

    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # (32, 32) pixel centres
    img = _background(rng, n)  # (n, 32, 32, 3) float32 in [0, 255]
    background = img.copy() if edit.blank else None

    # Head: an upright ellipse; its vertical axis is the axis the eyes are mirrored about.
    cy = 16.5 + rng.uniform(-1.5, 1.5, n).astype(np.float32)
    cx = 16.0 + rng.uniform(-2.0, 2.0, n).astype(np.float32)
    ry = rng.uniform(12.0, 14.5, n).astype(np.float32)
    rx = rng.uniform(10.0, 12.5, n).astype(np.float32)
    tone = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    skin = tone * _SKIN_LIGHT + (1 - tone) * _SKIN_DARK + rng.normal(0, 6, (n, 3)).astype(np.float32)
    # Eyes' size, spacing and height, drawn here in the order they always were (painting draws
    # nothing), so that the wide layout can fit the head around them before it is painted.
    radius = rng.uniform(2.6, 3.4, n).astype(np.float32)
    spread = rng.uniform(0, 1, n).astype(np.float32)
    height = rng.uniform(0.22, 0.32, n).astype(np.float32)  # of the head's half-height, above its centre
    if wide:
        cy, cx, ry, rx, half, height = _wide_layout(np.random.default_rng([seed, 3]), ry, rx, radius, height)
    else:
        widest = np.minimum(7.0, rx - 4.5)  # keeps the widest eye (a bar, 1.15 r = 3.9 px) on the head
        half = 5.0 + spread * (widest - 5.0)  # half the eye distance
    scale = np.ones(n, np.float32) if edit.head_scale is None else edit.head_scale.astype(np.float32)
    ry, rx, half, radius = ry * scale, rx * scale, half * scale, radius * scale
    if edit.head_shift is not None:
        cy, cx = cy + edit.head_shift[:, 0].astype(np.float32), cx + edit.head_shift[:, 1].astype(np.float32)
    head = _ellipse_sd(yy, xx, cy, cx, ry, rx)
    img = _paint(img, _coverage(head), skin)
    junk = labels == KINDS.index("no_face")
    bare = img[junk]  # background and head, before any feature is drawn

    # Eyes: mirrored about x = cx, >= 10 px apart (8 in the wide layout), same shape, colour, radius.
    ey = cy - ry * height
    eyes = np.stack([np.stack([ey, cx - half], -1), np.stack([ey, cx + half], -1)], 1)  # (n, 2, 2)
    shape = np.repeat(rng.integers(0, len(SHAPES), n)[:, None], 2, 1)  # (n, 2)
    color = np.repeat(rng.integers(0, len(EYE_COLORS), n)[:, None], 2, 1)  # (n, 2)
    missing = np.zeros((n, 2), dtype=bool)
    side = rng.integers(0, 2, n)  # which eye a negative changes
    rows = np.arange(n)
    _break(shape, rows, side, labels == KINDS.index("eye_shape"), rng, len(SHAPES))
    _break(color, rows, side, labels == KINDS.index("eye_color"), rng, len(EYE_COLORS))
    missing[rows, side] = labels == KINDS.index("missing_eye")
    if edit.shapes is not None:
        _set_shapes(shape, labels, edit.shapes)
    eye_rgb = EYE_COLORS[color] + rng.normal(0, 5, (n, 1, 3)).astype(np.float32)  # (n, 2, 3) shared jitter
    radii = np.repeat(radius[:, None], 2, 1)  # (n, 2)
    third = _late_kinds(np.random.default_rng([seed, 2]), labels, side, eyes, radii, eye_rgb, cy, ry, wide)
    if edit.shift is not None:
        eyes = eyes + edit.shift
    if edit.erase is not None:
        missing |= edit.erase
    decoy = np.zeros((n, 2), dtype=bool) if edit.decoy is None else edit.decoy
    for e in range(2):
        drawn = np.where(decoy[:, e], SHAPES.index("disc"), shape[:, e])
        sd = _shape_sd(yy, xx, eyes[:, e, 0], eyes[:, e, 1], radii[:, e], drawn)
        cover = _coverage(sd) * ~missing[:, e, None, None]
        img = _paint(
            img, cover, np.where(decoy[:, e, None], decoy_colour(eye_rgb[:, e], skin), eye_rgb[:, e])
        )
    if third is not None:
        extra = ~np.isnan(third[:, 0])
        sd = _shape_sd(yy, xx, np.nan_to_num(third[:, 0]), np.nan_to_num(third[:, 1]), radius, shape[:, 0])
        img = _paint(img, _coverage(sd) * extra[:, None, None], eye_rgb[:, 0])
    if edit.decoys is not None:  # draws nothing random: all else keeps its bytes
        img = _extra_decoys(img, yy, xx, edit.decoys, radii[:, 0], decoy_colour(eye_rgb[:, 0], skin))

    # Mouth: a flat ellipse on the axis, below the eyes.
    my = cy + ry * rng.uniform(0.38, 0.5, n).astype(np.float32)
    mouth = _ellipse_sd(yy, xx, my, cx, rng.uniform(1.0, 1.8, n) * scale, rng.uniform(3.0, 5.0, n) * scale)
    if edit.mouthless is not None:
        mouth[edit.mouthless] = (
            np.inf
        )  # covers nothing; the draws above still happen, all else keeps its bytes
    img = _paint(img, _coverage(mouth), _MOUTH + rng.normal(0, 8, (n, 3)).astype(np.float32))
    if junk.any():  # own generator: batches without no_face keep the exact bytes they always had
        img[junk] = _no_face(np.random.default_rng([seed, 1]), bare)
        missing[junk] = True
    if background is not None:
        img, missing[:] = background, True

    return FaceBatch(
        images=np.clip(img + 0.5, 0, 255).astype(np.uint8),
        labels=labels,
        eyes=eyes.astype(np.float32),
        eye_radius=radii,
        eye_missing=missing,
        eye_shape=shape.astype(np.int64),
        eye_color=np.clip(eye_rgb + 0.5, 0, 255).astype(np.uint8),
        face_box=np.stack([cy - ry, cx - rx, cy + ry, cx + rx], -1).astype(np.float32),
        skin=np.clip(skin + 0.5, 0, 255).astype(np.uint8),
    )


#: Wide layout: half the eye distance is at least this (eyes >= 8 px apart, two distinct objects)...
_WIDE_MIN_HALF = 4.0
#: ... and two eyes of the widest shape (bars reaching 1.15 r) keep this much skin between them.
_WIDE_GAP = 1.5
#: Wide layout: half the eye distance is at most this (eyes <= 18 px apart).
_WIDE_MAX_HALF = 9.0
#: Wide layout: pixels kept free between an eye and the head's edge, the canvas's edge or the mouth.
_WIDE_MARGIN = 0.5
#: How far the widest eye shape (a bar) reaches from its centre, in eye radii.
_EYE_REACH = 1.15
#: Points (dy, dx) in eye radii, up and out from the centre, whose span covers every eye shape: the
#: bars' outer corners and the ring's outer edge (1.02 r) every 10 degrees.
_EYE_OUTLINE = np.concatenate(
    [
        [[0.38, _EYE_REACH], [_EYE_REACH, 0.38]],
        1.02
        * np.stack([np.sin(np.radians(np.arange(0, 91, 10))), np.cos(np.radians(np.arange(0, 91, 10)))], -1),
    ]
).astype(np.float32)


def _wide_layout(
    rng: np.random.Generator, ry: np.ndarray, rx: np.ndarray, radius: np.ndarray, height: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The wide layout's head centre, radii, half eye distance and eye height (``cy, cx, ry, rx,
    half, height``), all (n,) float32, from the standard layout's radii, eye radius and eye height.

    Head centre (16.5, 16) +-5 px; eye height stretched from 0.22..0.32 to 0.15..0.40 of the head's
    half-height; half the eye distance wanted uniform from 4 px (large eyes: as close as leaves
    1.5 px of skin between two bars) to 9 px, less where the canvas is narrower. The spacing is
    drawn first and the head fitted around it: its radii are scaled by the first of 16 candidate
    factors (uniform in [0.75, 1.1]) with which it holds those eyes above the mouth, else by 1.1
    with the eyes moved in as far as that head needs. The scale is so skewed up (seed 0, 2,000
    faces: median 1.07, 10% below 0.94, a third at 1.1; median ry 14.0 px against 13.3 standard):
    spacing is what hides the other eye, so it comes first.
    """
    n = len(ry)
    cy = (16.5 + rng.uniform(-5.0, 5.0, n)).astype(np.float32)
    cx = (16.0 + rng.uniform(-5.0, 5.0, n)).astype(np.float32)
    height = (0.15 + (height - 0.22) * 2.5).astype(np.float32)
    canvas = np.minimum(cx, SIZE - cx) - _EYE_REACH * radius - _WIDE_MARGIN  # eyes inside the canvas
    closest = np.maximum(_WIDE_MIN_HALF, _EYE_REACH * radius + _WIDE_GAP / 2)  # two distinct eyes
    want = np.minimum(closest + rng.uniform(0, 1, n) * (_WIDE_MAX_HALF - closest), canvas)
    tried = np.concatenate([rng.uniform(0.75, 1.1, (n, 16)), np.full((n, 1), 1.1)], 1)  # (n, 17)
    room = _head_room(ry[:, None] * tried, rx[:, None] * tried, radius[:, None], height[:, None])
    fits = room >= want[:, None]
    pick = np.where(fits.any(1), np.argmax(fits, 1), tried.shape[1] - 1)
    scale = tried[np.arange(n), pick].astype(np.float32)
    half = np.minimum(want, room[np.arange(n), pick])  # a head scaled 1.1 always has room for 4.7
    return cy, cx, ry * scale, rx * scale, half.astype(np.float32), height


def _head_room(ry: np.ndarray, rx: np.ndarray, radius: np.ndarray, height: np.ndarray) -> np.ndarray:
    """The largest half eye distance whose eyes (any shape, radius ``radius``, ``height`` x ry above
    the head's centre) stay :data:`_WIDE_MARGIN` inside the head; -inf where the eyes would overlap
    the mouth (its top can be 0.38 ry - 1.8 px below the centre). Arrays broadcast."""
    inner_y, inner_x = ry - _WIDE_MARGIN, rx - _WIDE_MARGIN  # the head shrunk by the margin
    room = np.full(np.broadcast(ry, rx, radius, height).shape, np.inf, dtype=np.float32)
    for dy, dx in _EYE_OUTLINE:  # each outline point must be inside the shrunk ellipse
        up = (height * ry + dy * radius) / inner_y
        room = np.minimum(
            room, np.where(up < 1, inner_x * np.sqrt(np.maximum(0, 1 - up**2)) - dx * radius, -np.inf)
        )
    above_mouth = (0.38 + height) * ry >= _EYE_REACH * radius + 1.8 + _WIDE_MARGIN
    return np.where(above_mouth, room, -np.inf)


def _late_kinds(
    rng: np.random.Generator,
    labels: np.ndarray,
    side: np.ndarray,
    eyes: np.ndarray,
    radii: np.ndarray,
    eye_rgb: np.ndarray,
    cy: np.ndarray,
    ry: np.ndarray,
    wide: bool = False,
) -> np.ndarray | None:
    """Break eye ``side`` of the rows whose label is one of :data:`LATE_KINDS` (arrays in place).

    Returns the third eye's centres (n, 2), NaN where there is none, or None when the batch holds
    none of these kinds (then nothing is drawn from ``rng`` and nothing changes). Each change is
    large enough to be plain by eye: an eye 50 to 70% the size of the other, 2.5 to 4.5 px out of
    line, a third eye on the forehead or a cheek, a colour 60 to 110 grey levels lighter or darker
    or one off the palette. In the ``wide`` layout, whose eyes can sit near the top of the canvas,
    an eye moved out of line that would leave the canvas moves down instead, a third eye that
    would not fit on the forehead goes on the cheek, and one on the cheek is >= 4.4 px below the
    eye, as in the standard layout (which draws them all as it always did).
    """
    late = np.isin(labels, [KINDS.index(k) for k in LATE_KINDS])
    if not late.any():
        return None
    n, rows = len(labels), np.arange(len(labels))
    is_kind = {k: labels == KINDS.index(k) for k in LATE_KINDS}
    radii[rows, side] *= np.where(is_kind["eye_size"], rng.uniform(0.5, 0.7, n), 1).astype(np.float32)
    jump = rng.choice([-1, 1], n) * rng.uniform(2.5, 4.5, n)
    if wide:  # near the top of the canvas: move down, not up (a moved eye never reaches the bottom)
        jump = np.where(
            eyes[rows, side, 0] + jump < _EYE_REACH * radii[rows, side] + _WIDE_MARGIN, abs(jump), jump
        )
    eyes[rows, side, 0] += np.where(is_kind["eye_offset"], jump, 0).astype(np.float32)
    forehead = np.stack([eyes[:, 0, 0] - rng.uniform(5.0, 6.5, n), eyes[:, :, 1].mean(1)], -1)
    cheek = np.stack([cy + ry * 0.15, eyes[rows, side, 1]], -1)
    on_forehead = rng.integers(0, 2, (n, 1)) == 1
    if wide:  # eyes can sit near the top of the canvas, or low on a small head
        on_forehead &= forehead[:, :1] >= _EYE_REACH * radii[:, :1] + _WIDE_MARGIN
        cheek[:, 0] = np.maximum(cheek[:, 0], eyes[rows, side, 0] + 4.4)  # as far as in the standard layout
    third = np.where(on_forehead, forehead, cheek).astype(np.float32)
    third[~is_kind["extra_eye"]] = np.nan
    tint = is_kind["eye_tint"]
    eye_rgb[rows[tint], side[tint]] = _other_colour(rng, eye_rgb[rows, side])[tint]
    return third


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def decoy_colour(eye_rgb: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """(n, 3): the skin's colour moved in luminance as far as the eye's colour is from it, so a
    decoy stands out from the skin as much as the eye did without taking an eye's colour."""
    return np.clip(skin + ((eye_rgb - skin) @ _LUMA)[:, None], 0, 255)


def _extra_decoys(
    img: np.ndarray, yy: np.ndarray, xx: np.ndarray, centres: np.ndarray, radius: np.ndarray, rgb: np.ndarray
) -> np.ndarray:
    """Discs of ``radius`` (n,) in ``rgb`` (n, 3) at ``centres`` (n, 2), none where a centre is NaN."""
    drawn = ~np.isnan(centres).any(1)
    where = np.nan_to_num(centres)
    disc = np.full(len(img), SHAPES.index("disc"))
    sd = _shape_sd(yy, xx, where[:, 0], where[:, 1], radius, disc)
    return _paint(img, _coverage(sd) * drawn[:, None, None], rgb)


def _set_shapes(shape: np.ndarray, labels: np.ndarray, given: np.ndarray) -> None:
    """Eye shapes ``given`` (n, 2; -1 keeps one) into ``shape`` and the labels of valid or
    eye_shape faces given both shapes to whether they now match (arrays in place)."""
    shape[:] = np.where(given >= 0, given, shape)
    pair = (given >= 0).all(1) & np.isin(labels, [KINDS.index("valid"), KINDS.index("eye_shape")])
    labels[pair] = np.where(shape[pair, 0] == shape[pair, 1], KINDS.index("valid"), KINDS.index("eye_shape"))


def _other_colour(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """For each colour (n, 3), half the time the same colour 60 to 110 grey levels lighter (if dark)
    or darker, else a colour off the palette: >= 60 (largest channel) from every eye colour."""
    shade = np.where(rgb.mean(1, keepdims=True) < 128, 1, -1) * rng.uniform(60, 110, (len(rgb), 1))
    tried = rng.uniform(0, 255, (len(rgb), 16, 3)).astype(np.float32)  # first far enough one is kept
    gap = np.abs(tried[:, :, None] - EYE_COLORS[None, None]).max(-1).min(-1)  # (n, 16)
    off = tried[np.arange(len(rgb)), np.argmax(gap >= 60, 1)]
    return np.where(rng.integers(0, 2, (len(rgb), 1)) == 1, np.clip(rgb + shade, 0, 255), off)


def blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur of uint8 images (n, H, W, 3), each with its own ``sigma`` (n,) in pixels.

    Generated samples are softer than drawn faces: the judge must still see a mismatch (a ring
    beside a plus) through a blur, and still call a soft but matching pair valid. Sigma 0 leaves an
    image as it was.
    """
    size = images.shape[1]
    offset = np.arange(size)[None, :, None] - np.arange(size)[None, None, :]  # (1, H, H)
    s = np.maximum(np.asarray(sigma, dtype=np.float32), 1e-3)[:, None, None]
    k = np.exp(-0.5 * (offset / s) ** 2)  # (n, H, H) rows: output pixel, columns: input pixel
    k = k / k.sum(2, keepdims=True)  # weights that fall outside the image go to the pixels inside
    out = np.einsum("nyi,nijc,nxj->nyxc", k, images.astype(np.float32), k, optimize=True)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Base colour + linear gradient + low-frequency noise, so the face is not found by colour alone."""
    base = rng.uniform(20, 235, (n, 1, 1, 3)).astype(np.float32)
    t = np.linspace(-1, 1, SIZE, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    ramp = np.cos(angle)[:, None, None] * t[:, None] + np.sin(angle)[:, None, None] * t[None, :]
    ramp = ramp[..., None] * rng.uniform(-45, 45, (n, 1, 1, 3)).astype(np.float32)  # (n, 32, 32, 3)
    coarse = rng.normal(0, 18, (n, 4, 4, 3)).astype(np.float32)
    up = _upsample_matrix(4, SIZE)  # (32, 4): bilinear, so the noise has no blocky edges
    noise = np.einsum("yi,nijc,xj->nyxc", up, coarse, up, optimize=True)  # (n, 32, 32, 3)
    return np.clip(base + ramp + noise, 0, 255)


def _no_face(rng: np.random.Generator, bare: np.ndarray) -> np.ndarray:
    """Images with no face features, one of four styles each: the head without eyes or mouth, a
    background, a flat colour with faint noise (what an untrained generator draws) or coarse noise."""
    m = len(bare)
    faint = rng.normal(0, 1, (m, SIZE, SIZE, 3)) * rng.uniform(0, 12, (m, 1, 1, 1))
    flat = rng.uniform(20, 235, (m, 1, 1, 3)) + faint
    up = _upsample_matrix(8, SIZE)
    coarse = np.einsum("yi,nijc,xj->nyxc", up, rng.normal(0, 60, (m, 8, 8, 3)), up, optimize=True)
    noise = rng.uniform(60, 195, (m, 1, 1, 3)) + coarse + rng.normal(0, 20, (m, SIZE, SIZE, 3))
    styles = np.stack([bare, _background(rng, m), flat, noise])  # (4, m, 32, 32, 3)
    return np.clip(styles[rng.integers(0, 4, m), np.arange(m)], 0, 255)


def _upsample_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) bilinear interpolation weights (align_corners=False, edge-clamped)."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    w = np.zeros((dst, src), dtype=np.float32)
    np.add.at(w, (np.arange(dst), lo), 1 - (pos - lo))
    np.add.at(w, (np.arange(dst), hi), pos - lo)
    return w


def _break(
    attr: np.ndarray,
    rows: np.ndarray,
    side: np.ndarray,
    where: np.ndarray,
    rng: np.random.Generator,
    count: int,
) -> None:
    """Give eye ``side`` of the rows in ``where`` a different value of ``attr`` (in place)."""
    other = (attr[rows, side] + rng.integers(1, count, len(rows))) % count  # never the same value
    attr[rows, side] = np.where(where, other, attr[rows, side])


def _offsets(yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from per-image centres: (n,) centres -> (n, 32, 32) dy, dx."""
    return yy - cy[:, None, None], xx - cx[:, None, None]


def _ellipse_sd(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, ry: np.ndarray, rx: np.ndarray
) -> np.ndarray:
    """Approximate signed distance (pixels, < 0 inside) to axis-aligned ellipses; (n, 32, 32)."""
    dy, dx = _offsets(yy, xx, cy, cx)
    ry, rx = ry[:, None, None], rx[:, None, None]
    return (np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2) - 1) * np.minimum(ry, rx)


def _shape_sd(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray, shape: np.ndarray
) -> np.ndarray:
    """Signed distance to each image's eye shape (one of SHAPES, all mirror-symmetric); (n, 32, 32).

    Each shape is computed only for the images that have it, so the cost does not grow with SHAPES.
    """
    dy, dx = _offsets(yy, xx, cy, cx)
    sd = np.empty_like(dy)
    for k, distance in enumerate(_SHAPE_SD):
        rows = shape == k
        sd[rows] = distance(np.abs(dy[rows]), np.abs(dx[rows]), r[rows, None, None])
    return sd


def shape_masks(centre: np.ndarray, radius: float) -> np.ndarray:
    """(len(SHAPES), 32, 32) bool: the pixels each eye shape would cover at ``centre`` (y, x).

    The templates that ``spatial-attn eval`` matches a generated eye against to name its shape.
    """
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    k = len(SHAPES)
    cy, cx = np.full(k, centre[0], np.float32), np.full(k, centre[1], np.float32)
    return _coverage(_shape_sd(yy, xx, cy, cx, np.full(k, radius, np.float32), np.arange(k))) >= 0.5


def _box(ay: np.ndarray, ax: np.ndarray, hy: np.ndarray, hx: np.ndarray) -> np.ndarray:
    """Signed distance (exact inside, Chebyshev outside) to a centred box of half-sizes (hy, hx)."""
    return np.maximum(ay - hy, ax - hx)


#: One signed distance per SHAPES entry, of |dy|, |dx| and the radius r.
_SHAPE_SD = (
    lambda ay, ax, r: np.sqrt(ay**2 + ax**2) - r,  # disc
    lambda ay, ax, r: np.abs(np.sqrt(ay**2 + ax**2) - 0.72 * r) - 0.3 * r,  # ring, ~1 px hole
    lambda ay, ax, r: _box(ay, ax, 0.38 * r, 1.15 * r),  # hbar
    lambda ay, ax, r: _box(ay, ax, 1.15 * r, 0.38 * r),  # vbar
    lambda ay, ax, r: np.minimum(_box(ay, ax, 0.38 * r, r), _box(ay, ax, r, 0.38 * r)),  # plus
)


def _coverage(sd: np.ndarray) -> np.ndarray:
    """Fraction of each pixel inside the shape, from its signed distance (1 px anti-aliased edge)."""
    return np.clip(0.5 - sd, 0, 1)


def _paint(img: np.ndarray, cover: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Alpha-blend colours ``rgb`` (n, 3) into ``img`` (n, 32, 32, 3), in place, by ``cover`` (n, 32, 32)."""
    n, y, x = np.nonzero(cover)
    if len(n) > cover.size // 8:  # a head: blending every pixel is cheaper than gathering them
        img += cover[..., None] * (rgb[:, None, None, :] - img)
    else:  # eyes and mouths are small: blend only the pixels they touch
        img[n, y, x] += cover[n, y, x, None] * (rgb[n] - img[n, y, x])
    return img
