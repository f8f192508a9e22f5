"""Where a token sits in the image: token layouts, and clicks mapped to grid cells and back.

Spatial attention flattens a ``C x H x W`` feature map into ``N = H*W`` tokens, row-major: token
``i = y*W + x`` is cell ``(y, x)``. Some layers add tokens that are not pixels (a ViT's CLS token,
register tokens, MultiheadAttention's ``bias_k``, text tokens in cross-attention); a
:class:`TokenLayout` says which block of a layer's token axis is the grid and names the rest.

A cell of an ``H x W`` grid covers a rectangle of an ``Hi x Wi`` image: rows
``[y*Hi/H, (y+1)*Hi/H)`` and columns ``[x*Wi/W, (x+1)*Wi/W)``. :func:`cell_at` and :func:`cell_box`
are the only places that arithmetic lives, so a click means the same cell in the app, the exports
and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

Grid = tuple[int, int]

#: Most non-pixel tokens we look for when inferring a grid from a token count alone
#: (CLS plus a handful of register tokens).
MAX_SPECIAL = 8


def cell_at(point: tuple[float, float], image_hw: tuple[int, int], grid: Grid) -> tuple[int, int]:
    """The grid cell containing image pixel ``point = (py, px)``.

    ``point`` is a pixel index as a click reports it (row, column); the cell is the one that holds
    the pixel's centre, so every pixel belongs to exactly one cell whatever the two sizes are.
    """
    py, px = point
    hi, wi = image_hw
    if not (0 <= py < hi and 0 <= px < wi):
        raise ValueError(f"point {(py, px)} is outside the {hi}x{wi} image")
    h, w = grid
    y = int((py + 0.5) * h // hi)
    x = int((px + 0.5) * w // wi)
    return min(y, h - 1), min(x, w - 1)


def cell_box(
    cell: tuple[int, int], grid: Grid, image_hw: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The rectangle ``(top, left, bottom, right)`` in image pixels that grid ``cell`` covers."""
    y, x = cell
    h, w = grid
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"cell {cell} is outside the {h}x{w} grid")
    hi, wi = image_hw
    return y * hi / h, x * wi / w, (y + 1) * hi / h, (x + 1) * wi / w


@dataclass(frozen=True)
class TokenLayout:
    """How one token axis of a layer maps to the image.

    Tokens ``start .. start + H*W - 1`` are the grid, row-major; every other token is special and
    named in ``labels`` (in token order). ``grid=None`` means the tokens are not pixels at all
    (text tokens of cross-attention): then every token is listed, and none is special unless
    ``labels`` names them all (learned queries: ``query 0``, ... each reachable by its label).
    """

    count: int
    grid: Grid | None
    start: int = 0
    labels: tuple[str, ...] = ()
    note: str = ""
    #: True when the grid is a guess from the token count that other grids fit as well, or that
    #: assumed special tokens: the note says so and the app shows it (pass ``grid=`` to settle it).
    ambiguous: bool = False

    def __post_init__(self) -> None:
        if self.grid is not None:
            h, w = self.grid
            if self.start < 0 or self.start + h * w > self.count:
                raise ValueError(f"a {h}x{w} grid at {self.start} does not fit {self.count} tokens")
            if len(self.labels) != self.count - h * w:
                raise ValueError("every token outside the grid needs a label")
        elif self.labels and len(self.labels) != self.count:
            raise ValueError("tokens with no grid are labelled all or none")

    @property
    def grid_size(self) -> int:
        """Number of grid tokens (all tokens when the axis is not spatial)."""
        return self.count if self.grid is None else self.grid[0] * self.grid[1]

    @property
    def grid_slice(self) -> slice:
        """The block of the token axis that holds the grid."""
        return slice(self.start, self.start + self.grid_size)

    def special_indices(self) -> list[int]:
        """Token indices outside the grid, in the order of ``labels``."""
        if self.grid is None:
            return list(range(self.count)) if self.labels else []
        end = self.start + self.grid_size  # the two ranges, not a loop over every token (a click's cost)
        return [*range(self.start), *range(end, self.count)]

    def special_values(self, values: Sequence[float]) -> dict[str, float]:
        """``{label: value}`` of the special tokens, read off a value per token (a row's mass, a
        layer's received share): one place that pairs labels with indices, for every reader."""
        return {label: float(values[i]) for label, i in zip(self.labels, self.special_indices(), strict=True)}

    def token(self, y: int, x: int) -> int:
        """Token index of cell ``(y, x)``: ``start + y*W + x``."""
        if self.grid is None:
            raise ValueError("these tokens are not spatial; there is no cell (y, x)")
        h, w = self.grid
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"cell {(y, x)} is outside the {h}x{w} grid")
        return self.start + y * w + x

    def describe(self, index: int) -> str:
        """What token ``index`` is, in words: ``cell (y, x)``, a special token's label, or ``token j``."""
        if self.grid is None:
            return self.labels[index] if self.labels else f"token {index}"
        offset = index - self.start
        if 0 <= offset < self.grid_size:
            return f"cell ({offset // self.grid[1]}, {offset % self.grid[1]})"
        return self.labels[self.special_indices().index(index)]

    def with_special(self, prefix: tuple[str, ...] = (), suffix: tuple[str, ...] = ()) -> TokenLayout:
        """This layout with extra special tokens before and after it (e.g. MHA's ``bias_k``)."""
        if not prefix and not suffix:
            return self
        if self.grid is None:
            return TokenLayout(self.count + len(prefix) + len(suffix), None, note=self.note)
        return TokenLayout(
            self.count + len(prefix) + len(suffix),
            self.grid,
            self.start + len(prefix),
            prefix + self.labels + suffix,
            self.note,
            self.ambiguous,
        )


def grid_layout(grid: Grid, count: int, note: str = "") -> TokenLayout:
    """A layout whose grid is known, with any surplus tokens taken as special tokens in front."""
    h, w = grid
    extra = count - h * w
    if extra < 0:
        raise ValueError(f"a {h}x{w} grid needs {h * w} tokens, the layer has {count}")
    return TokenLayout(count, grid, extra, _special_labels(extra), note)


def text_layout(count: int, note: str = "keys are not spatial") -> TokenLayout:
    """A layout for tokens with no place in the image (text, memory)."""
    return TokenLayout(count, None, note=note)


@dataclass(frozen=True)
class StatedGrid:
    """A token grid the model itself stated while running: a patch embedding's output, the image
    ids passed to its forward. Stronger evidence than a factorisation of the token count."""

    grid: Grid
    source: str  # in words, for the layout's note: "the output of `patch_embed.proj`"
    special: str = "special"  # what the tokens outside the grid are ("text" for packed sequences)
    suffix: tuple[str, ...] = ()  # tokens the model appends after the grid (YOLOS' detection tokens)


@dataclass(frozen=True)
class StatedQueries:
    """Learned queries the model holds (DETR's object queries, a Q-Former's query tokens, Perceiver's
    latents): a sequence of exactly ``count`` tokens is those queries, not pixels, unless a map of
    ``count`` cells is stated as well."""

    count: int
    source: str
    label: str = "query"


def infer_layout(
    count: int,
    hints: list[Grid],
    input_hw: tuple[int, int] | None,
    override: Grid | None = None,
    stated: Sequence[StatedGrid | StatedQueries] = (),
    guess: bool = True,
) -> TokenLayout:
    """Find the grid of ``count`` tokens, and say how it was found.

    In order: an explicit ``override``; a feature map seen on the way in (``hints``: the 4D inputs of
    the enclosing modules, innermost first) with exactly ``count`` cells; the model's learned queries
    when they number ``count`` and no stated map does (DETR's object queries: no grid, each token
    labelled ``query i``); a grid the model stated
    (``stated``, most recent last) with ``count - H*W`` special tokens before it, fewer than its
    cells (a ViT's CLS and any number of registers); otherwise a guess: the factorings of
    ``count - s`` (``s`` special tokens, assumed first) whose aspect ratio equals the model input's.
    A guess is marked ``ambiguous`` when it assumed special tokens or several factorings fit (the
    one with the fewest special tokens is taken); when none fits, the layout is not spatial and the
    note says to pass ``grid=``. ``guess=False`` stops before the guess (keys pooled to a size the
    model states, never one factorised from their count).
    """
    if override is not None:
        return grid_layout(override, count, "grid given by the caller")
    for h, w in hints:
        if h * w == count:
            return TokenLayout(count, (h, w), note="grid from the enclosing module's feature map")
    queries = _learned_queries(count, stated)
    if queries is not None:
        return queries
    said = _from_stated(count, [s for s in stated if isinstance(s, StatedGrid)])
    if said is not None:
        return said
    if not guess:
        return text_layout(count, f"no map of {count} cells stated")
    if input_hw is None:
        return text_layout(count, f"no feature map of {count} cells seen; pass grid=(H, W)")
    hi, wi = input_hw
    fits = [
        (s, h, (count - s) // h)
        for s in range(min(MAX_SPECIAL, count - 1) + 1)
        for h in range(1, count - s + 1)
        if (count - s) % h == 0 and h * wi == ((count - s) // h) * hi
    ]
    if not fits:
        return text_layout(count, f"{count} tokens match no grid of the input's aspect; pass grid=")
    s, h, w = fits[0]
    note = f"{h}x{w} grid inferred from {count} tokens and the input's aspect ratio"
    if s:
        note += f"; the first {s} token(s) taken as special (a guess: pass grid=(H, W) if wrong)"
    if len(fits) > 1:
        others = ", ".join(f"{hh}x{ww}+{ss}" for ss, hh, ww in fits[1:])
        note += f"; ambiguous (also fits {others}): pass grid=(H, W) to choose"
    return replace(grid_layout((h, w), count, note), ambiguous=bool(s) or len(fits) > 1)


def _learned_queries(count: int, stated: Sequence[StatedGrid | StatedQueries]) -> TokenLayout | None:
    """The layout of ``count`` learned queries, when the model holds that many and states no map of
    exactly ``count`` cells: no grid, every token named (``query 0``, ...)."""
    grids = {s.grid[0] * s.grid[1] for s in stated if isinstance(s, StatedGrid)}
    said = next((s for s in stated if isinstance(s, StatedQueries) and s.count == count), None)
    if said is None or count in grids:
        return None
    note = f"{count} learned queries ({said.source}): not pixels, each a token of its own"
    return TokenLayout(count, None, labels=numbered(said.label, count), note=note)


def _from_stated(count: int, stated: Sequence[StatedGrid]) -> TokenLayout | None:
    """The layout of ``count`` tokens on a stated grid they fit: its cells after any special tokens
    the model put before them, fewer of those than cells (so a coarse grid never claims a long
    sequence), and the suffix it appends (YOLOS' detection tokens) after. A grid the tokens fill
    exactly wins (another one makes it ambiguous only if it is filled too), else the most recent;
    a statement with a suffix that fits is preferred to the same grid stated without one (the
    patch embedding inside the module that appends them)."""
    fits: dict[Grid, StatedGrid] = {}
    for said in reversed(stated):
        h, w = said.grid
        if 0 <= count - h * w - len(said.suffix) < h * w:
            known = fits.get(said.grid)
            if known is None or (said.suffix and not known.suffix):
                fits[said.grid] = said
    if not fits:
        return None
    exact = [s for s in fits.values() if count == s.grid[0] * s.grid[1] + len(s.suffix)]
    # a grid the tokens fill is not made doubtful by one that would need special tokens
    said, *others = exact or list(fits.values())
    (h, w), extra = said.grid, count - said.grid[0] * said.grid[1] - len(said.suffix)
    note = f"{h}x{w} grid from {said.source}"
    if extra:
        note += f"; the first {extra} token(s) are {said.special} tokens"
    if said.suffix:
        note += f"; the last {len(said.suffix)} are {said.suffix[0].rsplit(' ', 1)[0]} tokens"
    if others:
        note += f"; ambiguous (also fits {', '.join(f'{o.grid[0]}x{o.grid[1]}' for o in others)})"
    labels = _special_labels(extra) if said.special == "special" else numbered(said.special, extra)
    return TokenLayout(count, (h, w), extra, labels + said.suffix, note, ambiguous=bool(others))


def single_query_layout(keys: int) -> TokenLayout:
    """The layout of a layer's one query (a class token, an attention-pooling probe). It is no
    pixel: it stands for the whole image as a 1x1 grid, so a click anywhere shows its row."""
    return TokenLayout(1, (1, 1), note=f"one query (not a pixel) over {keys} keys: every click shows its row")


def as_grid(value: object) -> Grid | None:
    """An int or a pair of ints as ``(H, W)``, as modules keep their sizes (``window_size``,
    ``patch_size``); None for anything else (a tensor passed where a size may be)."""
    pair = (value, value) if isinstance(value, int) else value
    if isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(v, int) for v in pair):
        return int(pair[0]), int(pair[1])
    return None


def pooled_grid(query_grid: Grid, count: int) -> Grid | None:
    """The key grid when keys are the query grid pooled by an integer factor (BigGAN-style)."""
    h, w = query_grid
    for f in (2, 4, 8):
        if h % f == 0 and w % f == 0 and (h // f) * (w // f) == count:
            return h // f, w // f
    return None


def _special_labels(n: int) -> tuple[str, ...]:
    """Names for ``n`` leading non-pixel tokens: the first is a CLS token by near-universal habit."""
    return tuple("CLS" if i == 0 else f"special {i}" for i in range(n))


def numbered(kind: str, n: int) -> tuple[str, ...]:
    """``kind 0``, ``kind 1``, ...: labels for tokens whose kind is known (``text 0``, ...)."""
    return tuple(f"{kind} {i}" for i in range(n))
