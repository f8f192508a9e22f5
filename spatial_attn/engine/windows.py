"""Windowed attention (Swin, SwinV2, ViTDet, SAM, Twins, MaxViT) placed back on the whole token grid.

A windowed block cuts its ``H x W`` token map into ``wh x ww`` windows (after a cyclic shift, for
Swin's shifted blocks, and zero padding up to a multiple of the window) and runs one small
attention per window: the attention call sees ``B * nW`` sequences of ``wh*ww`` tokens, and reading
it as it comes would make each window an "image" and ``batch`` a window index. Here the block
itself says how it partitioned (its ``window_size``, ``shift_size`` and input size, read when the
attention call inside it is recorded), :class:`WindowLayout` turns that into the one index map from
window slots to absolute tokens, and :class:`WindowedScores` answers rows and columns on the whole
grid from the per-window scores: a row is the token's window row at the absolute positions of its
keys, zero elsewhere. Nothing ``N x N`` is built; the per-window queries and keys are kept as they
were multiplied.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from .grid import Grid, TokenLayout, as_grid, grid_layout
from .layer import AttentionLayer, QKScores, Scores, StoredProbs

#: The name of the extra key token that collects the mass on padding (ViTDet, SAM, and Swin when
#: the grid is not a multiple of the window: the padded zeros are keys like any other).
PADDING = "padding"


@dataclass(frozen=True)
class WindowLayout:
    """How one block partitioned ``batch`` images of a ``grid`` of tokens into windows.

    ``shift`` is the cyclic shift ``torch.roll(x, -shift)`` applied before partitioning.
    ``pad_first``: the map was padded to a multiple of the window before the shift
    (transformers' Swin) rather than after it (timm's Swin); without a shift both agree.
    """

    grid: Grid
    window: Grid
    batch: int
    shift: Grid = (0, 0)
    pad_first: bool = False
    source: str = ""
    #: ``"block"``: contiguous ``wh x ww`` windows (Swin, ViTDet, MaxViT's block attention);
    #: ``"grid"``: MaxViT's grid attention, a ``wh x ww`` grid of tokens strided over the whole map,
    #: one window per offset (``grid_partition``: ``(B, wh, H/wh, ww, W/ww, C) -> (B*nW, wh, ww, C)``).
    kind: str = "block"

    @property
    def padded(self) -> Grid:
        """``(Hp, Wp)``: the grid padded up to a multiple of the window."""
        (h, w), (wh, ww) = self.grid, self.window
        return -(-h // wh) * wh, -(-w // ww) * ww

    @property
    def area(self) -> int:
        """Tokens per window."""
        return self.window[0] * self.window[1]

    @property
    def windows(self) -> int:
        """Windows per image."""
        (hp, wp), (wh, ww) = self.padded, self.window
        return (hp // wh) * (wp // ww)

    @property
    def has_padding(self) -> bool:
        """Whether padded tokens are attention keys."""
        return self.padded != self.grid

    @cached_property
    def cells(self) -> np.ndarray:
        """``(nW, wh*ww)``: the absolute token ``y*W + x`` at each slot of each window, -1 for padding.

        Window ``j`` of an image is the ``j``-th of its row-major windows and slot ``s`` is
        row-major inside the window, as ``window_partition`` orders them; slot ``(Y, X)`` of the
        partitioned map holds the token the shift moved there.
        """
        (h, w), (hp, wp), (wh, ww), (sy, sx) = self.grid, self.padded, self.window, self.shift
        y, x = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")  # (Hp, Wp) partitioned frame
        if self.pad_first:  # roll over the padded map: padding moves with the tokens
            y, x = (y + sy) % hp, (x + sx) % wp
            inside = (y < h) & (x < w)
        else:  # roll over the map, then pad: padding stays at the bottom and right
            inside = (y < h) & (x < w)
            y, x = (y + sy) % h, (x + sx) % w
        index = np.where(inside, y * w + x, -1)  # (Hp, Wp)
        if self.kind == "grid":  # slot (gy, gx) of window (py, px) is token (gy*Hp/wh + py, gx*Wp/ww + px)
            index = index.reshape(wh, hp // wh, ww, wp // ww).transpose(1, 3, 0, 2)  # (nWh, nWw, wh, ww)
        else:
            index = index.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3)  # (nWh, nWw, wh, ww)
        return index.reshape(-1, self.area)

    @cached_property
    def slots(self) -> np.ndarray:
        """``(N,)``: where each absolute token sits, as ``window * wh*ww + slot``."""
        flat = self.cells.ravel()
        where = np.empty(self.grid[0] * self.grid[1], dtype=np.int64)
        where[flat[flat >= 0]] = np.flatnonzero(flat >= 0)
        return where

    def fits(self, shape: tuple[int, int, int, int]) -> bool:
        """Whether an attention call of ``(B', h', N, N')`` tokens is this block's windows (a block
        may also run attention that is not windowed, or a window size that was not the one used)."""
        b, h, n, m = shape
        return n == m == self.area and (b * h) % (self.batch * self.windows) == 0

    def describe(self) -> str:
        """The partition in words, for the layer's note."""
        (h, w), (wh, ww) = self.grid, self.window
        text = f"{h}x{w} grid in {wh}x{ww} windows"
        if self.kind == "grid":
            text = f"{h}x{w} grid in {self.windows} strided {wh}x{ww} grids (grid attention)"
        if any(self.shift):
            text += f" shifted by {self.shift[0]}x{self.shift[1]}"
        if self.has_padding:
            text += f", padded to {self.padded[0]}x{self.padded[1]}"
        return text + (f" (from {self.source})" if self.source else "")

    def local_layout(self) -> TokenLayout:
        """The layout of one window's tokens, as the attention call inside the block sees them."""
        return grid_layout(self.window, self.area, "one window")

    def place(self, layer: AttentionLayer) -> AttentionLayer:
        """``layer`` (one window per batch entry) as a layer of the whole grid of each image."""
        n = self.grid[0] * self.grid[1]
        queries = grid_layout(self.grid, n, self.describe())
        keys = TokenLayout(n + 1, self.grid, 0, (PADDING,), queries.note) if self.has_padding else queries
        placed = AttentionLayer(layer.name, layer.family, WindowedScores(layer.scores, self), queries, keys)
        placed.verification = lambda: layer.verification  # per window, where the model's output is; lazily
        return placed


class WindowedScores:
    """The scores of every window of a block, answering for absolute tokens: ``(B, h, N, N')``.

    ``N' = N``, plus one key token (:data:`PADDING`) holding the mass on padding when there is any.
    Rows and columns cost one window's row or column, placed by :attr:`WindowLayout.cells`.
    """

    def __init__(self, inner: Scores, layout: WindowLayout) -> None:
        self.layout = layout
        self.inner = _per_window(inner, layout.batch * layout.windows)  # (B*nW, h, a, a)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, h, N, N')``."""
        n = self.layout.grid[0] * self.layout.grid[1]
        return self.layout.batch, self.inner.shape[1], n, n + int(self.layout.has_padding)

    def _window(self, batch: int, token: int) -> tuple[int, int, np.ndarray]:
        """The inner batch entry of ``token``'s window, its slot there, and the window's cells."""
        window, slot = divmod(int(self.layout.slots[token]), self.layout.area)
        return batch * self.layout.windows + window, slot, self.layout.cells[window]

    def row(self, batch: int, token: int) -> np.ndarray:
        """Token ``token``'s row over every absolute key (padding last, if any): ``(h, N')``."""
        entry, slot, cells = self._window(batch, token)
        window_row = self.inner.row(entry, slot)  # (h, wh*ww)
        out = np.zeros((window_row.shape[0], self.shape[3]), dtype=window_row.dtype)
        inside = cells >= 0
        out[:, cells[inside]] = window_row[:, inside]
        if self.layout.has_padding:
            out[:, -1] = window_row[:, ~inside].sum(-1)
        return out

    def probs(self, batch: int, queries: torch.Tensor) -> torch.Tensor:
        """Rows of a block of absolute query tokens: ``(h, s, N')``."""
        return torch.from_numpy(np.stack([self.row(batch, int(t)) for t in queries], axis=1))

    def column(self, batch: int, key: int) -> np.ndarray:
        """What every absolute query gives to absolute key ``key``: ``(h, N)``, zero outside its window."""
        entry, slot, cells = self._window(batch, key)
        window_column = self.inner.column(entry, slot)  # (h, wh*ww): the window's queries
        out = np.zeros((window_column.shape[0], self.shape[2]), dtype=window_column.dtype)
        inside = cells >= 0
        out[:, cells[inside]] = window_column[:, inside]
        return out

    def nbytes(self) -> int:
        """Memory held: the per-window scores and the index maps."""
        return self.inner.nbytes() + self.layout.cells.nbytes + self.layout.slots.nbytes


def _per_window(scores: Scores, entries: int) -> Scores:
    """Scores regrouped as ``(B*nW, h, a, a)``: a call may have folded heads into its batch axis or
    windows into its head axis (SAM runs ``(B*nW*h, a, d)``); both keep image, window, head order."""
    b, h, n, m = scores.shape
    if b == entries:
        return scores
    heads = b * h // entries
    if isinstance(scores, StoredProbs):
        return StoredProbs(scores.p.reshape(entries, heads, n, m))
    assert isinstance(scores, QKScores)
    return scores.regrouped(entries)  # lazy: no copy of q and k during the forward


def may_window(module: nn.Module) -> bool:
    """Whether :func:`read_window` can find a partition in ``module``'s calls: it holds a window or
    partition size. Asked once per module when the capture makes its hooks."""
    return not {"window_size", "ws", "partition_size"}.isdisjoint(vars(module))


def read_window(module: nn.Module, args: tuple, kwargs: dict, name: str) -> WindowLayout | None:
    """How ``module``, a running block, partitions its input into windows; None if it does not.

    Read when the attention call inside the block is recorded, so a size the block set in its own
    forward (transformers' Swin shrinks its window to a small map) is the one it used. Blocks are
    recognised by what they hold: a ``window_size`` (``ws`` in Twins' locally-grouped attention), and
    a ``shift_size`` (Swin) or none (ViTDet, SAM, Twins); or MaxViT's ``partition_size`` with
    ``partition_block`` (True: block attention, False: grid attention) or a ``partition_type``. Their
    input is a ``(B, H, W, C)`` map (timm, SAM), a ``(B, C, H, W)`` one (transformers' ViTDet; the
    block's own norm says which axis holds its channels), or ``(B, H*W, C)`` tokens with the grid
    passed as ``input_dimensions`` (transformers' Swin) or ``size`` (Twins), or kept as
    ``input_resolution`` (older timm).
    """
    attrs = vars(module)  # the block's own attributes (getattr would also ask a diffusers config)
    window, shift = as_grid(attrs.get("window_size", attrs.get("ws"))), as_grid(attrs.get("shift_size", 0))
    kind = "block"
    if window is None and "partition_size" in attrs:
        window, kind = as_grid(attrs["partition_size"]), _partition_kind(attrs)
    x = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("hidden_states")
    if window is None or shift is None or kind is None or not isinstance(x, torch.Tensor):
        return None  # window 0 (a global block in ViTDet, SAM) fits no call: read as any attention
    if x.ndim == 4:
        grid = _map_grid(module, x)
    else:
        grid = as_grid(args[1] if len(args) > 1 else kwargs.get("input_dimensions", kwargs.get("size")))
        grid = grid or as_grid(attrs.get("input_resolution"))
        if grid is None:
            return None
    pad_first = hasattr(module, "maybe_pad")  # transformers' Swin pads, then shifts
    return WindowLayout(grid, window, int(x.shape[0]), shift, pad_first, f"`{name}`", kind)


def _partition_kind(attrs: dict) -> str | None:
    """``"block"`` or ``"grid"`` as a MaxViT block states it; None when it states neither."""
    block, named = attrs.get("partition_block"), attrs.get("partition_type")
    if isinstance(block, bool):
        return "block" if block else "grid"
    named = getattr(named, "name", named)  # an enum member or a plain string
    if isinstance(named, str) and named.lower() in ("block", "window", "grid"):
        return "grid" if named.lower() == "grid" else "block"
    return None


def _map_grid(module: nn.Module, x: torch.Tensor) -> Grid:
    """``(H, W)`` of a block's 4D input: channels last unless the block's first LayerNorm (its
    width) matches axis 1 and not the last axis (``(B, C, H, W)``, as transformers' ViTDet passes)."""
    norm = next((m for m in module.children() if isinstance(m, nn.LayerNorm)), None)
    channels = norm.normalized_shape[-1] if norm is not None else None
    if channels is not None and x.shape[1] == channels != x.shape[-1]:
        return int(x.shape[2]), int(x.shape[3])
    return int(x.shape[1]), int(x.shape[2])
