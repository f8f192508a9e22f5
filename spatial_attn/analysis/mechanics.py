"""How one attention row is made, step by step, for the pixel a user clicked (the seed question).

A feature map ``C x H x W`` is flattened to ``N = H*W`` tokens (token ``i = y*W + x``), each token
projected to a query and a key of ``d`` numbers; the row of token ``i`` is
``softmax(q_i . k_j)`` over the keys ``j`` (the layer's scale is folded into ``q``), and reshaped
to the key grid it is the heatmap. :func:`row_steps` returns every intermediate of that recipe for
one layer, head and cell, with a temperature ``T`` dividing the logits so a learner can watch the
softmax sharpen (``T < 1``) or flatten (``T > 1``); ``T = 1`` is exactly what the model computed.

:func:`matrix_thumbnail` shows the whole ``N x N'`` matrix, which is never held: it is computed
in blocks of query rows, each reduced to block means before the next. :func:`module_io` reads what
an attention module received and returned (on a private copy of the model): the feature map before
it is flattened (:func:`flattened_input`), and how much a SAGAN branch (``gamma * o + x``) adds to
its input (:func:`residual_share`). :func:`unet_levels` says where a DDPM layer sits in its UNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..engine.adapters import MODULE_ADAPTERS
from ..engine.adapters.base import map_tokens, split_heads
from ..engine.grid import Grid, TokenLayout
from ..engine.layer import _BLOCK_BYTES, AttentionLayer, QKScores


@dataclass(frozen=True)
class RowSteps:
    """Every step from the flattened map to the heatmap, for one query cell and head."""

    layer: str
    head: int
    cell: tuple[int, int]  # (y, x) on the query grid
    token: int  # i = start + y*W + x
    query_grid: Grid
    keys: TokenLayout
    queries: np.ndarray  # (N, d): every token's query (scale folded in); row ``token`` is q_i
    key_vectors: np.ndarray  # (N', d)
    logits: np.ndarray  # (N',): q_i . k_j, what the model computed
    temperature: float
    probs: np.ndarray  # (N',): softmax(logits / temperature)

    @property
    def query(self) -> np.ndarray:
        """q_i, ``(d,)``."""
        return self.queries[self.token]

    @property
    def entropy(self) -> float:
        """Entropy of the row at this temperature, in bits (log2 N' when uniform)."""
        p = self.probs[self.probs > 0]
        return float(-(p * np.log2(p)).sum())

    @property
    def row_map(self) -> np.ndarray | None:
        """The probabilities on the key grid: the heatmap (None if the keys are not spatial)."""
        if self.keys.grid is None:
            return None
        return self.probs[self.keys.grid_slice].reshape(self.keys.grid)

    @property
    def logit_map(self) -> np.ndarray | None:
        """The logits on the key grid (None if the keys are not spatial)."""
        if self.keys.grid is None:
            return None
        return self.logits[self.keys.grid_slice].reshape(self.keys.grid)


def row_steps(
    layer: AttentionLayer, cell: tuple[int, int], head: int, temperature: float = 1.0, batch: int = 0
) -> RowSteps:
    """The recipe of row ``cell`` of ``layer``'s head ``head``, softmax taken at ``temperature``."""
    if not isinstance(layer.scores, QKScores):
        raise ValueError(f"{layer.name} kept only the probabilities: its queries and keys are unknown")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= head < layer.heads:
        raise ValueError(f"{layer.name} has heads 0..{layer.heads - 1}; got {head}")
    token = layer.queries.token(*cell)
    logits = layer.logits(*cell, head=head, batch=batch).astype(np.float64)  # (N',)
    scaled = logits / temperature
    probs = np.exp(scaled - scaled.max())
    return RowSteps(
        layer=layer.name,
        head=head,
        cell=cell,
        token=token,
        query_grid=layer.query_grid,
        keys=layer.keys,
        queries=layer.scores.q[batch, head].cpu().numpy(),  # (N, d)
        key_vectors=layer.scores.k[batch, head].cpu().numpy(),  # (N', d)
        logits=logits,
        temperature=float(temperature),
        probs=probs / probs.sum(),
    )


def matrix_thumbnail(layer: AttentionLayer, head: int, size: int = 64, batch: int = 0) -> np.ndarray:
    """The ``N x N'`` attention matrix of one head as block means, at most ``size x size``.

    Rows are made a block of queries at a time (:data:`~spatial_attn.engine.layer._BLOCK_BYTES` of
    probabilities at most) and each block is reduced before the next, so memory stays bounded for
    any ``N`` (a 128 x 128 map's full matrix would be 1 GiB per head). Thumbnail row ``r`` averages
    query tokens ``[r * gr, (r + 1) * gr)`` with ``gr = ceil(N / rows)``; columns likewise.
    """
    _, _, n, m = layer.scores.shape
    group_rows, group_cols = math.ceil(n / min(size, n)), math.ceil(m / min(size, m))
    rows, cols = math.ceil(n / group_rows), math.ceil(m / group_cols)
    per_block = max(1, _BLOCK_BYTES // (4 * m * group_rows)) * group_rows  # query rows per block
    out = np.zeros((rows, cols))
    for start in range(0, n, per_block):
        queries = torch.arange(start, min(n, start + per_block))
        block = layer.scores.probs(batch, queries)[head].double().cpu().numpy()  # (s, N')
        padded = np.zeros((math.ceil(len(queries) / group_rows) * group_rows, cols * group_cols))
        padded[: len(queries), :m] = block
        sums = padded.reshape(-1, group_rows, cols, group_cols).sum((1, 3))
        counts = _counts(start, len(queries), n, group_rows)[:, None] * _counts(0, m, m, group_cols)[None]
        out[start // group_rows : start // group_rows + len(sums)] = sums / counts
    return out


def thumbnail_row(token: int, n: int, size: int = 64) -> int:
    """Which row of :func:`matrix_thumbnail` holds query ``token``."""
    return token // math.ceil(n / min(size, n))


def thumbnail_pixels(
    layer: AttentionLayer, image_hw: tuple[int, int], size: int = 64
) -> list[tuple[int, int] | None]:
    """For each row of :func:`matrix_thumbnail`, a model-input pixel whose query is in that row (the
    pixel at the centre of the row's first grid token), or None for a row of special tokens only:
    clicking a row of the thumbnail pins that pixel."""
    n, layout = layer.queries.count, layer.queries
    if layout.grid is None:
        return [None] * math.ceil(n / math.ceil(n / min(size, n)))
    group = math.ceil(n / min(size, n))
    (h, w), (ih, iw), end = layout.grid, image_hw, layout.start + layout.grid[0] * layout.grid[1]
    out: list[tuple[int, int] | None] = []
    for first in range(0, n, group):
        token = max(first, layout.start)
        if token >= min(first + group, end):
            out.append(None)
            continue
        cy, cx = divmod(token - layout.start, w)
        out.append((int((cy + 0.5) * ih / h), int((cx + 0.5) * iw / w)))  # the cell's centre pixel
    return out


def _counts(start: int, length: int, total: int, group: int) -> np.ndarray:
    """How many real entries each group of ``group`` indices starting at ``start`` holds."""
    firsts = np.arange(start, start + length, group)
    return np.minimum(firsts + group, total) - firsts


@dataclass(frozen=True)
class ModuleIO:
    """What one module received and returned in one forward (batch entry 0)."""

    name: str
    x: torch.Tensor | None  # the first positional input
    out: torch.Tensor | None  # the output (the first element when it is a tuple)
    sequence_first: bool  # a MultiheadAttention that is not batch-first: (N, B, C)
    v: torch.Tensor | None = None  # the value projection's output, where the module has one to observe
    residual: bool = False  # the module adds its input back: diffusers' residual_connection, SAGAN's gamma
    #: sin-cos position channels the queries and keys also see (a SAGAN ``SelfAttn(coords=f)``: 4 f):
    #: then a query is made from its token's row *and* its cell's position, not from the row alone
    position_channels: int = 0


def module_io(model: Any, prepared: Any, layer_name: str) -> ModuleIO:
    """Re-run ``model`` on ``prepared`` once and read module ``layer_name``'s input and output.

    The run is on a private copy of the model: a hook registered on the served model would also
    fire for other users' runs, and registering hooks while another thread runs the same module
    is not safe in torch (see the README's "How it works").
    """
    from .ablation import private_copy

    private = private_copy(model)
    module = private.module.get_submodule(layer_name)
    seen: dict[str, Any] = {}

    def hook(_module: torch.nn.Module, args: tuple, output: Any) -> None:
        seen["x"] = args[0].detach() if args and isinstance(args[0], torch.Tensor) else None
        seen["out"] = (output[0] if isinstance(output, tuple) else output).detach()

    module.register_forward_hook(hook)
    projection = _value_projection(module)
    if projection is not None:  # the values, as the engine's adapter of this family reads them
        projection.register_forward_hook(lambda _m, _a, out: seen.__setitem__("v", out.detach()))
    with torch.no_grad():
        private.run(prepared)
    first = isinstance(module, torch.nn.MultiheadAttention) and not module.batch_first
    residual = bool(getattr(module, "residual_connection", False)) or hasattr(module, "gamma")
    position = 4 * int(getattr(module, "coords", 0) or 0)
    return ModuleIO(layer_name, seen.get("x"), seen.get("out"), first, seen.get("v"), residual, position)


def _value_projection(module: torch.nn.Module) -> torch.nn.Module | None:
    """The submodule whose output is the attention's values (``to_v``, SAGAN's ``value_conv``): the
    "v" tap of the engine's adapter for this module, when it has one (fused projections have none)."""
    for adapter in (cls() for cls in MODULE_ADAPTERS):
        if adapter.matches(module):
            tap = adapter.taps(module).get("v")
            return tap[0] if tap is not None and tap[1] == "out" else None
    return None


def flattened_input(io: ModuleIO) -> np.ndarray | None:
    """The feature map the module received, flattened to tokens: ``(N, C)``.

    A ``(B, C, H, W)`` map becomes ``x[0].reshape(C, H*W).T`` (row i = pixel (i // W, i % W)),
    exactly the reshape the layer makes; a token sequence ``(B, N, C)`` (or ``(N, B, C)``) is
    returned as it is. None when the input is neither.
    """
    x = io.x
    if x is None or x.ndim not in (3, 4):
        return None
    if x.ndim == 4:
        c, h, w = x.shape[1:]
        return x[0].reshape(c, h * w).T.float().numpy()  # (N, C): token i = y*W + x
    return (x[:, 0] if io.sequence_first else x[0]).float().numpy()  # (N, C)


@dataclass(frozen=True)
class ResidualShare:
    """SAGAN's ``out = gamma * o + x``: the learned gate and how much the branch moves its input."""

    gamma: float
    overall: float  # ||out - x|| / ||x|| over the whole map
    at_cell: float  # the same at the clicked cell (all channels)


def residual_share(model: Any, io: ModuleIO, cell: tuple[int, int]) -> ResidualShare:
    """``gamma`` of SAGAN attention module ``io.name`` and ``||gamma * o|| / ||x||``, the branch's
    share of what the block returns, overall and at ``cell``."""
    module = model.module.get_submodule(io.name)
    if not hasattr(module, "gamma"):
        raise ValueError(f"{io.name} has no gamma: it is not a SAGAN attention block")
    x, branch = io.x[0], (io.out - io.x)[0]  # (C, H, W)
    y, xx = cell
    return ResidualShare(
        gamma=float(module.gamma.detach().reshape(-1)[0]),
        overall=float(branch.norm() / x.norm().clamp_min(1e-12)),
        at_cell=float(branch[:, y, xx].norm() / x[:, y, xx].norm().clamp_min(1e-12)),
    )


@dataclass(frozen=True)
class UNetLevel:
    """One stage of a diffusers UNet: its modules' name prefix, resolution, channels, attention."""

    name: str  # "down_blocks.1", "mid_block", "up_blocks.0"
    resolution: int
    channels: int
    attention: bool


def unet_levels(config: dict) -> list[UNetLevel]:
    """The stages of a ``UNet2DModel`` from its config, in the order data flows: down, mid, up.

    Down block ``i`` works at ``sample_size / 2**i`` (each but the last halves it on the way out);
    the mid block at the smallest size; up block ``j`` mirrors down block ``n - 1 - j``.
    """
    size, channels = config["sample_size"], list(config["block_out_channels"])
    size = size[0] if isinstance(size, list | tuple) else size
    n = len(channels)
    levels = [
        UNetLevel(f"down_blocks.{i}", size // 2**i, channels[i], "Attn" in kind)
        for i, kind in enumerate(config["down_block_types"])
    ]
    mid = config.get("mid_block_type") or "UNetMidBlock2D"
    levels.append(
        UNetLevel(
            "mid_block",
            size // 2 ** (n - 1),
            channels[-1],
            config.get("add_attention", True) and "Mid" in mid,
        )
    )
    levels += [
        UNetLevel(f"up_blocks.{j}", size // 2 ** (n - 1 - j), channels[n - 1 - j], "Attn" in kind)
        for j, kind in enumerate(config["up_block_types"])
    ]
    return levels


def level_of(levels: list[UNetLevel], layer_name: str) -> UNetLevel | None:
    """The stage a layer belongs to, by its name prefix."""
    return next((lv for lv in levels if layer_name.startswith(lv.name + ".")), None)


@dataclass(frozen=True)
class OutputSteps:
    """What the row does for its pixel: the weighted sum of the values, and where it goes."""

    values: np.ndarray  # (N', dv): every key's value vector v_j, this head
    attended: np.ndarray  # (dv,): o_i = sum_j p_j v_j, row i of A.V
    x: np.ndarray | None  # (C,): the layer's input at the cell (None: no spatial input to read)
    out: np.ndarray | None  # (C,): the layer's output at the cell
    residual: bool  # the layer adds its input back (out = projected o + x, SAGAN's gamma o + x)

    @property
    def change(self) -> float | None:
        """``||out - x|| / ||x||`` at the cell: how much the layer moves its input (residual layers)."""
        if not self.residual or self.x is None or self.out is None:
            return None
        return float(np.linalg.norm(self.out - self.x) / max(np.linalg.norm(self.x), 1e-12))


def output_steps(layer: AttentionLayer, io: ModuleIO, cell: tuple[int, int], head: int) -> OutputSteps | None:
    """V and ``o_i = P[i] @ V`` for query ``cell`` and ``head`` (at temperature 1, what the model
    computed), with the layer's input and output at the cell; None when the values were not observed.

    ``io.v`` is the value projection's output: ``(B, C, H, W)`` (a convolution: one head of C
    channels, token y*W + x) or ``(B, N', heads*d)`` (split into heads, as the layer does).
    """
    if io.v is None or not isinstance(layer.scores, QKScores):
        return None
    v = map_tokens(io.v) if io.v.ndim == 4 else split_heads(io.v, layer.heads)  # (B, h, N', dv)
    if v.shape[1] != layer.heads or v.shape[2] != layer.keys.count:
        return None  # values on another token set than the keys (a shape we do not know)
    values = v[0, head].double().numpy()  # (N', dv)
    token = layer.queries.token(*cell)
    probs = layer.scores.probs(0, torch.tensor([token]))[head, 0].double().numpy()  # (N',)
    x = out = None
    if io.x is not None and io.out is not None and io.x.ndim == 4 and io.out.shape == io.x.shape:
        y, xx = cell
        x, out = io.x[0, :, y, xx].double().numpy(), io.out[0, :, y, xx].double().numpy()  # (C,)
    return OutputSteps(values, probs @ values, x, out, io.residual and x is not None)
