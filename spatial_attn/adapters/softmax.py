"""The fallback for hand-written attention: a softmax over a ``(..., N, N')`` score tensor.

A user's own attention module works without an adapter. While it runs, the capture's function mode
shows this adapter every softmax, and every product that could have made the scores: ``matmul``/``@``,
``bmm``, ``baddbmm`` with ``beta=0`` and two-operand ``einsum``, optionally multiplied or divided by a
number. When the softmax input is such a product, its two operands *are* the queries and keys, and
the layer stores them (O(N d)); otherwise it stores the probabilities themselves. Softmaxes whose
``N`` matches no spatial grid (a classifier's output) are not attention and are ignored.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..layer import AttentionLayer, Verification, compare, sample_queries
from .base import Extracted, FunctionAdapter, keep, to_heads

_SOFTMAX = frozenset({torch.softmax, F.softmax, torch.Tensor.softmax, torch.special.softmax})
_PRODUCTS = frozenset(
    {
        torch.matmul,
        torch.Tensor.matmul,
        torch.bmm,
        torch.Tensor.bmm,
        torch.baddbmm,
        torch.Tensor.baddbmm,
        torch.einsum,
    }
)
_SCALINGS = frozenset({torch.mul, torch.Tensor.mul, torch.div, torch.Tensor.div})

Origin = tuple[torch.Tensor, torch.Tensor, float]  # (queries (..., N, d), keys (..., N', d), scale)


class SoftmaxAdapter(FunctionAdapter):
    """Softmax over spatial scores, traced back to queries and keys where possible."""

    family = "softmax"
    functions = _SOFTMAX | _PRODUCTS | _SCALINGS

    def __init__(self) -> None:
        # scores tensor -> where it came from; entries die with the scores, so nothing is kept alive
        self._origins: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def on_call(
        self, func: Callable, args: tuple, kwargs: dict, out: Any, batch: int | None
    ) -> Extracted | None:
        if func in _PRODUCTS:
            origin = _product(func, args, kwargs)
        elif func in _SCALINGS:
            origin = self._scaled(func, args, kwargs)
        else:
            return self._softmax(args, kwargs, out, batch)
        if origin is not None and isinstance(out, torch.Tensor):
            self._origins[out] = origin
        return None

    def _scaled(self, func: Callable, args: tuple, kwargs: dict) -> Origin | None:
        """Scores times or divided by a number keep their origin, with the scale updated."""
        if len(args) != 2 or kwargs:
            return None
        tensor, number = (args[0], args[1]) if isinstance(args[0], torch.Tensor) else (args[1], args[0])
        origin = self._origins.get(tensor) if isinstance(tensor, torch.Tensor) else None
        factor = _number(number)
        if (
            origin is None
            or factor is None
            or (func in (torch.div, torch.Tensor.div) and tensor is not args[0])
        ):
            return None
        q, k, scale = origin
        return q, k, scale / factor if func in (torch.div, torch.Tensor.div) else scale * factor

    def _softmax(self, args: tuple, kwargs: dict, out: Any, batch: int | None) -> Extracted | None:
        scores = args[0] if args else kwargs.get("input")
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(scores, torch.Tensor) or scores.ndim < 3 or dim not in (-1, scores.ndim - 1):
            return None
        probs = to_heads(keep(out), batch)  # (B, h, N, N')
        origin = self._origins.get(scores)
        if origin is None:
            return Extracted(
                q=None,
                k=None,
                probs=probs,
                keys="auto",
                require_grid=True,
                verify=lambda layer: Verification(True, 0.0, "probabilities stored as computed"),
            )
        q, k, scale = origin
        return Extracted(
            q=to_heads(keep(q), batch).float() * scale,
            k=to_heads(keep(k), batch),
            keys="auto",
            require_grid=True,
            verify=_against(probs),
        )


def _against(probs: torch.Tensor) -> Callable[[AttentionLayer], Verification]:
    """Compare recomputed rows with a sample of the rows the model's softmax produced."""

    def verify(layer: AttentionLayer) -> Verification:
        idx = sample_queries(probs.shape[2])
        got = torch.stack([layer.scores.probs(b, idx) for b in range(probs.shape[0])])
        return compare(probs[:, :, idx], got, "softmax rows")

    return verify


def _product(func: Callable, args: tuple, kwargs: dict) -> Origin | None:
    """(queries, keys, 1.0) when ``func(args)`` is a product of two activations; else None."""
    if func is torch.einsum:
        return _einsum(args)
    if func in (torch.baddbmm, torch.Tensor.baddbmm):
        if len(args) < 3 or kwargs.get("beta", 1) != 0:
            return None
        a, b, alpha = args[1], args[2], kwargs.get("alpha", 1)
    else:
        if len(args) != 2 or kwargs:
            return None
        a, b, alpha = args[0], args[1], 1
    if not all(
        isinstance(t, torch.Tensor) and t.ndim >= 2 and not isinstance(t, nn.Parameter) for t in (a, b)
    ):
        return None
    return a, b.transpose(-1, -2), float(alpha)


def _einsum(args: tuple) -> Origin | None:
    """Read ``"<batch>id,<batch>jd->...ij"``-like two-operand einsums as queries and keys."""
    if not args or not isinstance(args[0], str):
        return None
    operands = list(args[1][0:2]) if len(args) == 2 and isinstance(args[1], list | tuple) else list(args[1:])
    spec = args[0].replace(" ", "")
    if len(operands) != 2 or "..." in spec or "->" not in spec:
        return None
    lhs, out = spec.split("->")
    a_idx, b_idx = lhs.split(",")
    if len(out) < 2:
        return None
    i, j, batch = out[-2], out[-1], out[:-2]
    shared = [c for c in a_idx if c in b_idx and c not in out]
    if i not in a_idx or i in b_idx or j not in b_idx or j in a_idx or not shared:
        return None
    rank = len(batch) + 1 + len(shared)
    if any(c not in a_idx or c not in b_idx for c in batch) or not len(a_idx) == len(b_idx) == rank:
        return None
    c = "".join(shared)
    q = torch.einsum(f"{a_idx}->{batch}{i}{c}", operands[0])  # (batch..., N, shared...)
    k = torch.einsum(f"{b_idx}->{batch}{j}{c}", operands[1])  # (batch..., N', shared...)
    return q.flatten(len(batch) + 1), k.flatten(len(batch) + 1), 1.0


def _number(x: Any) -> float | None:
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.ndim == 0:
        return float(x)
    return None
