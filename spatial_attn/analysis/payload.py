"""What the browser needs to draw every panel, and to follow the mouse without asking the server.

Hovering must repaint every layer within a frame (issue 11: <= 33 ms median), which a round trip per
mouse move cannot do. So the page gets, once per model run, each layer's queries and keys (float16:
the rows it computes agree with the server's to ~4e-4 on the bundled models) and per-query
log-sum-exps (for columns), and computes a row itself: ``softmax(q_i . k^T)`` with the scale already
folded into ``q``, exactly :meth:`~spatial_attn.engine.layer.QKScores.row`.

The pinned click's rows always come from the server, so layers the browser cannot recompute (the
probabilities fallback, masked or causal attention, or q/k over :data:`HOVER_BUDGET`) still show the
click, just not the hover. Arrays travel as base64 of little-endian bytes, row-major.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np

from ..engine.grid import TokenLayout, cell_at
from ..engine.layer import AttentionLayer, QKScores

#: Raw bytes of queries and keys sent per model run; layers beyond it are drawn for clicks only.
HOVER_BUDGET = 8 * 2**20


def b64(array: np.ndarray, dtype: str) -> str:
    """``array`` as base64 of its little-endian ``dtype`` bytes (``"<f2"``, ``"<f4"``)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()


def layout_json(layout: TokenLayout) -> dict[str, Any]:
    """A token axis: its length, its grid and where the grid starts, and the special tokens."""
    return {
        "count": layout.count,
        "grid": list(layout.grid) if layout.grid else None,
        "start": layout.start,
        "special": layout.special_indices() if layout.grid else [],
        "labels": list(layout.labels),
    }


def layer_json(layer: AttentionLayer) -> dict[str, Any]:
    """What a panel says about its layer, whatever is clicked."""
    return {
        "name": layer.name,
        "family": layer.family,
        "heads": layer.heads,
        "queries": layout_json(layer.queries),
        "keys": layout_json(layer.keys),
        "verified": layer.verification.ok,
        "detail": layer.verification.detail,
    }


def hoverable(layer: AttentionLayer) -> bool:
    """Whether the browser can recompute this layer's rows: plain ``softmax(q k^T)`` on a grid."""
    scores = layer.scores
    return (
        isinstance(scores, QKScores)
        and scores.mask is None
        and not scores.causal
        and layer.query_grid is not None
        and layer.key_grid is not None
    )


def hover_json(layers: list[AttentionLayer], budget: int = HOVER_BUDGET) -> list[dict[str, Any] | None]:
    """Per layer, batch entry 0's ``q`` ``(h, N, d)`` and ``k`` ``(h, N', d)`` as float16 and the
    log-sum-exp of each query's logits ``(h, N)`` as float32; None where the browser cannot hover."""
    out: list[dict[str, Any] | None] = []
    for layer in layers:
        if not hoverable(layer) or budget <= 0:
            out.append(None)
            continue
        scores = layer.scores
        assert isinstance(scores, QKScores)
        q, k = scores.q[0].cpu().numpy(), scores.k[0].cpu().numpy()  # (h, N, d), (h, N', d)
        budget -= 2 * (q.size + k.size)
        out.append(
            None
            if budget < 0
            else {
                "d": int(q.shape[-1]),
                "q": b64(q, "<f2"),
                "k": b64(k, "<f2"),
                "lse": b64(scores.lse(0), "<f4"),
            }
        )
    return out


def pinned_json(
    layer: AttentionLayer,
    point: tuple[float, float],
    image_hw: tuple[int, int],
    mode: Literal["row", "column"],
) -> dict[str, Any]:
    """The clicked pixel's vector for every head, as the server computes it.

    Row: the query cell and its probabilities over every key token, ``(h, N')``. Column: the key cell
    and what every query token gives it, ``(h, N)``. Layers whose keys are not spatial show rows.
    """
    if mode == "column" and layer.key_grid is not None:
        cell = cell_at(point, image_hw, layer.key_grid)
        token = layer.keys.token(*cell)
        vector = layer.scores.column(0, token)  # (h, N)
    else:
        mode = "row"
        cell = cell_at(point, image_hw, layer.query_grid)
        token = layer.queries.token(*cell)
        vector = layer.scores.row(0, token)  # (h, N')
    return {"mode": mode, "cell": list(cell), "token": token, "values": b64(vector, "<f4")}
