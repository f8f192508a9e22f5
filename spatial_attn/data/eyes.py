"""Where a drawn face's eyes are, found in its pixels: used by the app to place the first click on
an eye, and by the evaluation to read generated faces (which come without metadata)."""

from __future__ import annotations

import numpy as np

from .faces import EYE_COLORS

NEAR = 45  # largest channel difference of an eye pixel from its palette colour


def locate_eyes(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Eye centres (2, 2) and a radius in a generated face, or None if two eyes are not clear.

    An eye is a compact blob of pixels near one of the palette's eye colours in the upper face,
    one on each side of the middle column; diffuse matches (a background of a similar colour)
    are rejected by their spread.
    """
    near = in_search_region(palette_distance(image).min(-1) < NEAR)  # (32, 32)
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


#: Where :func:`locate_eyes` looks for eyes: the upper face, away from the image's sides (rows, columns).
SEARCH = (slice(5, 22), slice(3, 29))


def in_search_region(mask: np.ndarray) -> np.ndarray:
    """``mask`` (32, 32) with everything outside :data:`SEARCH` cleared (a new array)."""
    out = np.zeros_like(mask)
    out[SEARCH] = mask[SEARCH]
    return out


def palette_distance(image: np.ndarray) -> np.ndarray:
    """(32, 32, len(EYE_COLORS)): each pixel's largest channel difference from each eye colour."""
    return np.abs(image[:, :, None, :].astype(int) - EYE_COLORS.astype(int)).max(-1)
