"""Views of a whole model at once: attention rollout, mean attention distance, what every key receives.

A click shows one row per layer; an engineer debugging a model also asks questions about every query
at once: how far does each head look on average, and how does that grow with depth (Dosovitskiy et
al. 2021, Fig. 7)? Which keys receive attention from everyone (the sinks and high-norm "artifact"
tokens of Darcet et al. 2024)? Where does the pinned pixel's output come from once the layers are
composed (attention rollout, Abnar & Zuidema 2020)?

Each answer is a sum over every query of a layer, and the ``N x N'`` matrix is never held: the rows
come a block at a time from the kept queries and keys (:func:`spatial_attn.engine.layer.query_blocks`,
the same machinery as the column normalisers), and only ``O(h N')`` results are kept. Rollout is a
chain of matrix products, but from one pixel it is one vector times each matrix in turn, and a vector
times a matrix is again a sum over blocks of rows.

Conventions, said once: heads are averaged with equal weights (as rollout defines it); distances are
between cell centres in the pixels of the model's input, over the key grid's share of each row
(renormalised, as the panels' ``distance``); entropies are in bits over the whole row (special keys
included, as the panels' ``entropy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..engine.grid import TokenLayout
from ..engine.layer import AttentionLayer, query_blocks

#: Called as ``progress(done, total, what)`` while a view is computed (the app's progress bar).
Progress = Callable[[int, int, str], None]


def _quiet(done: int, total: int, what: str) -> None:
    """The default progress: none."""


# -- one layer over every query -----------------------------------------------------------------------
@dataclass(frozen=True)
class LayerStats:
    """One layer's statistics over all its queries (batch entry ``batch``)."""

    name: str
    queries: TokenLayout
    keys: TokenLayout
    #: ``(h, N')``: the mean over every query (special ones included) of each key's weight, per head.
    #: Each head's vector sums to 1, so a key's value is its share of all the layer's attention.
    received_heads: np.ndarray
    #: ``(h, qh, qw)`` and ``(qh, qw)``: each pixel query's row entropy in bits, per head and of the
    #: head mean.
    entropy_heads: np.ndarray
    entropy: np.ndarray
    #: ``(h, qh, qw)`` and ``(qh, qw)``: each pixel query's attention-weighted mean distance to the
    #: key cells, in input pixels; None when the keys are not on a grid or the query is no pixel.
    distance_heads: np.ndarray | None
    distance: np.ndarray | None

    @property
    def received(self) -> np.ndarray:
        """``(N',)``: the head mean of :attr:`received_heads`."""
        return self.received_heads.mean(0)

    def received_map(self) -> np.ndarray:
        """What each key pixel receives (head mean), shaped like the key grid (or ``(N',)`` for keys
        that are not pixels)."""
        part = self.received[self.keys.grid_slice]
        return part if self.keys.grid is None else part.reshape(self.keys.grid)

    def special_share(self) -> dict[str, float]:
        """The share of the layer's attention (head mean, all queries) that lands on each special key."""
        return self.keys.special_values(self.received)

    def mean_distance(self) -> np.ndarray | None:
        """``(h,)``: each head's distance averaged over the pixel queries (Dosovitskiy et al., Fig. 7)."""
        return None if self.distance_heads is None else np.nanmean(self.distance_heads, axis=(1, 2))


def layer_stats(layer: AttentionLayer, image_hw: tuple[int, int], batch: int = 0) -> LayerStats:
    """What every key receives, and each pixel query's entropy and mean distance, in one pass over the
    layer's rows (a block of queries at a time)."""
    if layer.query_grid is None:
        raise ValueError(f"{layer.name}: its queries are not pixels")
    h, n, m = layer.heads, layer.queries.count, layer.keys.count
    qh, qw = layer.query_grid
    spatial = layer.key_grid is not None and not layer.single_query
    received = torch.zeros(h, m, dtype=torch.float64)
    entropy_heads = np.full((h, qh * qw), np.nan, dtype=np.float32)
    entropy = np.full(qh * qw, np.nan, dtype=np.float32)
    distance_heads = np.full((h, qh * qw), np.nan, dtype=np.float32) if spatial else None
    distance = np.full(qh * qw, np.nan, dtype=np.float32) if spatial else None
    start = layer.queries.start
    for rows, probs in query_blocks(layer.scores, layer._batch(batch)):  # probs: (h, s, N')
        received += probs.sum(1).double()
        # the block's pixel queries: tokens start .. start + qh*qw - 1, as cells 0 .. qh*qw - 1
        first, last = max(rows.start, start), min(rows.stop, start + qh * qw)
        if first >= last:
            continue
        p = probs[:, first - rows.start : last - rows.start]  # (h, s', N')
        cells = slice(first - start, last - start)
        mean = p.mean(0)  # (s', N')
        entropy_heads[:, cells] = _entropy_bits(p)
        entropy[cells] = _entropy_bits(mean)
        if spatial:
            d = _cell_distances(
                np.arange(cells.start, cells.stop), layer.query_grid, layer.key_grid, image_hw
            )
            grid = layer.keys.grid_slice
            distance_heads[:, cells] = _weighted_mean(p[..., grid], d)
            distance[cells] = _weighted_mean(mean[:, grid], d)
    shaped = lambda a: None if a is None else a.reshape(*a.shape[:-1], qh, qw)  # noqa: E731
    return LayerStats(
        layer.name,
        layer.queries,
        layer.keys,
        (received / n).float().numpy(),
        shaped(entropy_heads),
        shaped(entropy),
        shaped(distance_heads),
        shaped(distance),
    )


def model_stats(
    layers: list[AttentionLayer], image_hw: tuple[int, int], batch: int = 0, progress: Progress = _quiet
) -> list[LayerStats]:
    """:func:`layer_stats` of every layer whose queries are pixels, in call order."""
    chosen = [layer for layer in layers if layer.query_grid is not None]
    out = []
    for index, layer in enumerate(chosen):
        progress(index, len(chosen), layer.name)
        out.append(layer_stats(layer, image_hw, batch))
    progress(len(chosen), len(chosen), "done")
    return out


def distance_by_depth(stats: list[LayerStats]) -> list[tuple[int, str, np.ndarray]]:
    """The points of Dosovitskiy et al.'s Fig. 7: ``(depth, layer, per-head mean distance)`` for each
    layer whose keys are pixels, depth counted in call order among all the layers given."""
    return [(depth, s.name, d) for depth, s in enumerate(stats) if (d := s.mean_distance()) is not None]


def _entropy_bits(p: torch.Tensor) -> np.ndarray:
    """Entropy in bits of each row of ``p`` over its last axis (``entr`` counts zeros as nothing)."""
    return (torch.special.entr(p).sum(-1) / math.log(2)).numpy()


def _weighted_mean(p: torch.Tensor, d: np.ndarray) -> np.ndarray:
    """``sum_j p_ij d_ij / sum_j p_ij``: ``p`` is ``(..., s, M)`` over key cells, ``d`` is ``(s, M)``;
    NaN where a row puts nothing on the key cells."""
    total = p.sum(-1)
    weighted = (p * torch.from_numpy(d)).sum(-1)
    return torch.where(total > 0, weighted / total.clamp_min(1e-30), torch.nan).numpy()


def _cell_distances(
    cells: np.ndarray, query_grid: tuple[int, int], key_grid: tuple[int, int], image_hw: tuple[int, int]
) -> np.ndarray:
    """``(len(cells), kh*kw)``: from the centres of query cells (flat indices) to every key cell's
    centre, in pixels of an ``image_hw`` input (a block's worth, never N x N')."""
    (qh, qw), (kh, kw), (hi, wi) = query_grid, key_grid, image_hw
    qy, qx = (cells // qw + 0.5) * hi / qh, (cells % qw + 0.5) * wi / qw
    ky = np.repeat((np.arange(kh) + 0.5) * hi / kh, kw)
    kx = np.tile((np.arange(kw) + 0.5) * wi / kw, kh)
    return np.hypot(qy[:, None] - ky[None], qx[:, None] - kx[None]).astype(np.float32)


# -- attention rollout --------------------------------------------------------------------------------
def rollout_groups(layers: list[AttentionLayer]) -> list[list[int]]:
    """The runs of layers through which rollout is defined: self-attention layers over one token set
    (the same queries and keys, grid and special tokens alike), in call order.

    A layer whose queries are that set but whose keys are not (cross-attention to text) mixes no
    two of its tokens, so it passes the run by; a layer over another set (a UNet's next resolution)
    ends it. Indices are into ``layers``.
    """
    groups: list[list[int]] = []
    current: TokenLayout | None = None
    for index, layer in enumerate(layers):
        self_attention = layer.queries == layer.keys and layer.query_grid is not None
        if self_attention and layer.queries == current:
            groups[-1].append(index)
        elif self_attention:
            groups.append([index])
            current = layer.queries
        elif layer.queries != current:
            current = None
    return groups


@dataclass(frozen=True)
class Rollout:
    """The pinned token through a run of layers, with and without the residual."""

    layers: tuple[str, ...]  # in call order
    tokens: TokenLayout
    token: int
    #: "row": what the last layer's output at ``token`` draws from at the first layer's input
    #: (``e_i^T A_L ... A_1``, the usual rollout); "column": how much of the first layer's input at
    #: ``token`` reaches each output of the last (``A_L ... A_1 e_i``).
    mode: Literal["row", "column"]
    rollout: np.ndarray  # (N,): with the residual, each layer 0.5 (A + I)
    plain: np.ndarray  # (N,): the product of the attention matrices alone

    def map(self, which: Literal["rollout", "plain"] = "rollout") -> np.ndarray:
        """The grid part, shaped like the grid."""
        values = self.rollout if which == "rollout" else self.plain
        assert self.tokens.grid is not None
        return values[self.tokens.grid_slice].reshape(self.tokens.grid)

    def special(self, which: Literal["rollout", "plain"] = "rollout") -> dict[str, float]:
        """The mass on each special token (a ViT's CLS)."""
        return self.tokens.special_values(self.rollout if which == "rollout" else self.plain)


def rollout(
    layers: Iterable[AttentionLayer],
    cell: tuple[int, int],
    mode: Literal["row", "column"] = "row",
    batch: int = 0,
    progress: Progress = _quiet,
) -> Rollout:
    """Attention rollout of the pixel at ``cell`` (on the layers' grid) through ``layers`` (one run of
    :func:`rollout_groups`, in call order), head mean, with and without the residual.

    Row: the row vector ``e_i`` goes down from the last layer, ``v <- v A`` at each; column: the
    column vector goes up from the first, ``u <- A u``. Both products are sums over blocks of rows,
    and both variants travel together as a ``(2, N)`` stack, so each layer's rows are made once.
    """
    chain = list(layers)
    if not chain:
        raise ValueError("rollout needs at least one layer")
    tokens = chain[0].queries
    for layer in chain:
        if layer.queries != tokens or layer.keys != tokens:
            raise ValueError(f"{layer.name} is not self-attention over the tokens of {chain[0].name}")
    token = tokens.token(*cell)
    vectors = torch.zeros(2, tokens.count, dtype=torch.float64)  # (rollout, plain) x N
    vectors[:, token] = 1.0
    order = chain[::-1] if mode == "row" else chain
    for index, layer in enumerate(order):
        progress(index, len(order), layer.name)
        product = _times(layer, vectors, mode, layer._batch(batch))  # (2, N)
        product[0] = 0.5 * (product[0] + vectors[0])  # the residual: 0.5 (A + I)
        vectors = product
    progress(len(order), len(order), "done")
    rolled, plain = vectors.float().numpy()
    return Rollout(tuple(layer.name for layer in chain), tokens, token, mode, rolled, plain)


def _times(layer: AttentionLayer, vectors: torch.Tensor, mode: str, batch: int) -> torch.Tensor:
    """``vectors @ A`` (row) or ``(A @ vectors^T)^T`` (column) for the head-mean matrix ``A`` of
    ``layer``, ``vectors`` being ``(k, N)``; ``A`` is visited a block of rows at a time."""
    out = torch.zeros_like(vectors)
    for rows, probs in query_blocks(layer.scores, batch):
        block = probs.double().mean(0)  # (s, N')
        if mode == "row":
            out += vectors[:, rows] @ block  # (k, s) @ (s, N')
        else:
            out[:, rows] = vectors @ block.T  # (k, N') @ (N', s)
    return out


# -- the depth plot --------------------------------------------------------------------------------
def depth_figure(points: list[tuple[int, str, np.ndarray]], image_hw: tuple[int, int]) -> bytes:
    """Dosovitskiy et al.'s Fig. 7 as a PNG: each head's mean attention distance (input pixels) against
    the layer's depth, one dot per head. matplotlib is imported here, on first use, and only its object
    API is used (no pyplot state shared between sessions)."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for depth, _, distances in points:
        ax.scatter(np.full(len(distances), depth), distances, s=18, alpha=0.8)
    ax.set_xticks([depth for depth, _, _ in points], [str(depth) for depth, _, _ in points])
    ax.set_xlabel("layer (call order)")
    ax.set_ylabel("mean attention distance (input px)")
    highest = max((float(np.nanmax(d)) for _, _, d in points), default=0.0)
    ax.set_ylim(0, max(float(np.hypot(*image_hw)) / 2, 1.05 * highest))
    ax.set_title(f"each dot a head; input {image_hw[0]}×{image_hw[1]} px", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
