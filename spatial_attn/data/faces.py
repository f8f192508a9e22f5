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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Label index = position. ``valid`` faces have two identical eyes; each negative breaks one thing,
#: and ``no_face`` has none at all (a bare background or head, flat colour, noise): the judge of
#: generated samples must not call a blank or noisy image valid just because no eye is *mismatched*.
KINDS = ("valid", "eye_color", "eye_shape", "missing_eye", "no_face")
#: Eye shapes, chosen to differ at a radius of ~3 px (a disc and a square would not, reliably).
SHAPES = ("disc", "ring", "hbar", "vbar", "plus")
#: Eye colours (RGB), far from each other and from skin tones so a mismatch is unambiguous.
EYE_COLORS = np.array(
    [[25, 25, 30], [40, 90, 235], [20, 165, 60], [215, 35, 45], [150, 50, 210], [0, 195, 215]],
    dtype=np.float32,
)
SIZE = 32

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


def make_faces(n: int, seed: int, kinds: Sequence[str] = ("valid",)) -> FaceBatch:
    """Draw ``n`` faces from ``seed``; each image's kind is drawn uniformly from ``kinds``."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    rng = np.random.default_rng(seed)
    labels = np.array([KINDS.index(k) for k in kinds], dtype=np.int64)[rng.integers(0, len(kinds), n)]

    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # (32, 32) pixel centres
    img = _background(rng, n)  # (n, 32, 32, 3) float32 in [0, 255]

    # Head: an upright ellipse; its vertical axis is the axis the eyes are mirrored about.
    cy = 16.5 + rng.uniform(-1.5, 1.5, n).astype(np.float32)
    cx = 16.0 + rng.uniform(-2.0, 2.0, n).astype(np.float32)
    ry = rng.uniform(12.0, 14.5, n).astype(np.float32)
    rx = rng.uniform(10.0, 12.5, n).astype(np.float32)
    tone = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    skin = tone * _SKIN_LIGHT + (1 - tone) * _SKIN_DARK + rng.normal(0, 6, (n, 3)).astype(np.float32)
    head = _ellipse_sd(yy, xx, cy, cx, ry, rx)
    img = _paint(img, _coverage(head), skin)
    junk = labels == KINDS.index("no_face")
    bare = img[junk]  # background and head, before any feature is drawn

    # Eyes: mirrored about x = cx, >= 10 px apart (centre to centre), same shape, colour and radius.
    radius = rng.uniform(2.6, 3.4, n).astype(np.float32)
    widest = np.minimum(7.0, rx - 4.5)  # keeps the widest eye (a bar, 1.15 r = 3.9 px) on the head
    half = 5.0 + rng.uniform(0, 1, n).astype(np.float32) * (widest - 5.0)  # half the eye distance
    ey = cy - ry * rng.uniform(0.22, 0.32, n).astype(np.float32)
    eyes = np.stack([np.stack([ey, cx - half], -1), np.stack([ey, cx + half], -1)], 1)  # (n, 2, 2)
    shape = np.repeat(rng.integers(0, len(SHAPES), n)[:, None], 2, 1)  # (n, 2)
    color = np.repeat(rng.integers(0, len(EYE_COLORS), n)[:, None], 2, 1)  # (n, 2)
    missing = np.zeros((n, 2), dtype=bool)
    side = rng.integers(0, 2, n)  # which eye a negative changes
    rows = np.arange(n)
    _break(shape, rows, side, labels == KINDS.index("eye_shape"), rng, len(SHAPES))
    _break(color, rows, side, labels == KINDS.index("eye_color"), rng, len(EYE_COLORS))
    missing[rows, side] = labels == KINDS.index("missing_eye")
    eye_rgb = EYE_COLORS[color] + rng.normal(0, 5, (n, 1, 3)).astype(np.float32)  # (n, 2, 3) shared jitter
    for e in range(2):
        sd = _shape_sd(yy, xx, eyes[:, e, 0], eyes[:, e, 1], radius, shape[:, e])
        cover = _coverage(sd) * ~missing[:, e, None, None]
        img = _paint(img, cover, eye_rgb[:, e])

    # Mouth: a flat ellipse on the axis, below the eyes.
    my = cy + ry * rng.uniform(0.38, 0.5, n).astype(np.float32)
    mouth = _ellipse_sd(yy, xx, my, cx, rng.uniform(1.0, 1.8, n), rng.uniform(3.0, 5.0, n))
    img = _paint(img, _coverage(mouth), _MOUTH + rng.normal(0, 8, (n, 3)).astype(np.float32))
    if junk.any():  # own generator: batches without no_face keep the exact bytes they always had
        img[junk] = _no_face(np.random.default_rng([seed, 1]), bare)
        missing[junk] = True

    return FaceBatch(
        images=np.clip(img + 0.5, 0, 255).astype(np.uint8),
        labels=labels,
        eyes=eyes.astype(np.float32),
        eye_radius=np.repeat(radius[:, None], 2, 1),
        eye_missing=missing,
        eye_shape=shape.astype(np.int64),
        eye_color=np.clip(eye_rgb + 0.5, 0, 255).astype(np.uint8),
        face_box=np.stack([cy - ry, cx - rx, cy + ry, cx + rx], -1).astype(np.float32),
        skin=np.clip(skin + 0.5, 0, 255).astype(np.uint8),
    )


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
