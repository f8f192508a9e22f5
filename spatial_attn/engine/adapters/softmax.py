"""The fallback for hand-written attention: a softmax over a ``(..., N, N')`` score tensor.

A user's own attention module works without an adapter. While it runs, the capture's function mode
shows this adapter every softmax, and every product that could have made the scores: ``matmul``/``@``,
``bmm``, ``baddbmm`` with ``beta=0`` and two-operand ``einsum``, optionally multiplied or divided by a
number. When the softmax input is such a product, its two operands *are* the queries and keys, and
the layer stores them (O(N d)). Nothing else is taken on trust:

* **Scores edited in place** after the product (``attn += bias``, ``masked_fill_``, ``attn[..] = x``)
  are no longer ``q k^T``. Every in-place op bumps a tensor's version counter, wherever it writes,
  so the versions of the scores, ``q`` and ``k`` are recorded at the product and compared at the
  softmax; under ``torch.inference_mode`` (no version counters) the whole softmax input is compared
  with ``q k^T`` in blocks of rows instead. Either way an edited layer keeps the probabilities the
  softmax produced.
* **Scores that are not a product** (``q @ k.T + bias``, written out of place) keep the probabilities
  too: whatever their shape when a product went into them (LeViT's subsampled queries against all
  keys), otherwise only when they are square, ``N x N`` over the grid's tokens: a softmax over features
  (Efficient Attention's ``q.softmax(-1)`` on ``(B, N, d)``, its ``(B, d, N)`` keys softmaxed over
  ``N``) has one axis that is not tokens and is no layer.
* **Weights changed after the softmax** (CaiT's talking heads mix heads with ``proj_w``) are what
  multiplies V, so the first product after the softmax that takes a tensor of the probabilities'
  shape is compared with them; if it differs, the layer shows that tensor instead and says so.

Softmaxes whose ``N`` matches no spatial grid (a classifier's output) are not attention and are
ignored.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..layer import AttentionLayer, Check, StoredProbs, Verification, compare, sample_queries, versions
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
#: Out-of-place edits and reshapes of scores: their result is still scores (queries x keys), no longer
#: ``q k^T`` (``a + b`` reaches the mode as ``Tensor.add``, ``a - b`` as ``Tensor.sub``).
_EDITS = frozenset(
    {
        torch.add,
        torch.Tensor.add,
        torch.sub,
        torch.Tensor.sub,
        torch.masked_fill,
        torch.Tensor.masked_fill,
        torch.where,
        torch.Tensor.float,
        torch.Tensor.to,
        torch.Tensor.type_as,
        torch.reshape,
        torch.Tensor.reshape,
        torch.Tensor.view,
    }
)

Origin = tuple[torch.Tensor, torch.Tensor, float]  # (queries (..., N, d), keys (..., N', d), scale)

#: Rows of scores compared per block when version counters are unavailable (inference mode).
_COMPARE_ROWS = 256


class SoftmaxAdapter(FunctionAdapter):
    """Softmax over spatial scores, traced back to queries and keys where possible."""

    family = "softmax"
    functions = _SOFTMAX | _PRODUCTS | _SCALINGS | _EDITS

    def __init__(self) -> None:
        # scores tensor -> (origin, versions at the product); entries die with the scores, so nothing
        # is kept alive
        self._origins: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._pending: _Pending | None = None  # the last softmax layer, until a product consumes it
        # scores made from a product out of place (``q @ k.T * s + bias``: LeViT's subsampling, Swin's
        # relative positions): their axes are still queries x keys, square or not
        self._derived: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def on_call(
        self, func: Callable, args: tuple, kwargs: dict, out: Any, batch: int | None
    ) -> Extracted | None:
        if func in _PRODUCTS:
            self._check_consumer(func, args, batch)
            origin = _product(func, args, kwargs)
        elif func in _SCALINGS:
            origin = self._scaled(func, args, kwargs)
        elif func in _EDITS:
            if not self._origins and not self._derived:
                return None  # no product made scores in this forward yet: nothing to follow
            origin = None
        else:
            return self._softmax(args, kwargs, out, batch)
        if origin is not None and isinstance(out, torch.Tensor):
            self._origins[out] = (origin, versions(out, *origin[:2]))
        elif isinstance(out, torch.Tensor):
            contracted = next((c for c in map(self._contracted, args[:3]) if c is not None), None)
            if contracted is not None:
                self._derived[out] = contracted
        return None

    def _from_product(self, t: Any) -> bool:
        """Whether ``t`` is a product's scores or was made from them out of place."""
        return self._contracted(t) is not None

    def _contracted(self, t: Any) -> int | None:
        """The length of the axis the product behind scores ``t`` summed over (the head dimension of
        ordinary attention, the tokens of channel attention); None if ``t`` is no product's scores."""
        if not isinstance(t, torch.Tensor):
            return None
        if t in self._origins:
            return int(self._origins[t][0][0].shape[-1])
        return self._derived.get(t)

    def _origin(self, scores: torch.Tensor) -> Origin | None:
        """Where ``scores`` came from, if it is still exactly that product (no in-place edit since)."""
        entry = self._origins.get(scores)
        if entry is None:
            return None
        origin, recorded = entry
        if recorded is None:  # inference tensors have no version counter: compare the values
            return origin if _equals_product(scores, *origin) else None
        return origin if versions(scores, *origin[:2]) == recorded else None

    def _scaled(self, func: Callable, args: tuple, kwargs: dict) -> Origin | None:
        """Scores times or divided by a number keep their origin, with the scale updated."""
        if len(args) != 2 or kwargs:
            return None
        tensor, number = (args[0], args[1]) if isinstance(args[0], torch.Tensor) else (args[1], args[0])
        origin = self._origin(tensor) if isinstance(tensor, torch.Tensor) else None
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
        traced = self._from_product(scores)  # made by a product, perhaps edited since
        origin = self._origin(scores)
        if not traced and scores.shape[-1] != scores.shape[-2]:
            return None  # not traced to q k^T and not N x N: one axis is features, not tokens
        probs = to_heads(keep(out), batch)  # (B, h, N, N')
        pending = _Pending(weakref.ref(out), probs)
        self._pending = pending
        if origin is None:
            why = "the scores were edited after q @ k" if traced else "the scores are not a plain q @ k"
            return Extracted(
                q=None,
                k=None,
                probs=probs,
                keys="auto",
                require_grid=True,
                contracted=self._contracted(scores),
                verify=pending.watch(lambda layer: Verification(True, 0.0, f"probabilities stored ({why})")),
            )
        q, k, scale = origin
        return Extracted(
            q=to_heads(keep(q), batch),
            k=to_heads(keep(k), batch),
            scale=scale,
            keys="auto",
            require_grid=True,
            verify=pending.watch(_against(probs)),
        )

    def _check_consumer(self, func: Callable, args: tuple, batch: int | None) -> None:
        """The first product after a softmax that takes a tensor of the probabilities' shape is where
        they multiply V; if what it multiplies differs from them, the layer must show that."""
        pending = self._pending
        if pending is None or func in (torch.einsum, torch.baddbmm, torch.Tensor.baddbmm) or len(args) != 2:
            return
        weights = args[0]
        if not isinstance(weights, torch.Tensor) or weights.shape != pending.out_shape:
            return
        self._pending = None
        if weights is pending.out() or pending.layer is None:
            return
        pending.consumed_by(to_heads(keep(weights), batch))


class _Pending:
    """A softmax layer waiting for the product that multiplies its probabilities with the values."""

    def __init__(self, out: weakref.ref, probs: torch.Tensor) -> None:
        self.out = out  # the softmax output itself, weakly: identity is the common, free case
        self.out_shape = out().shape
        self.probs = probs  # (B, h, N, N'), on the CPU
        self.layer: AttentionLayer | None = None

    def watch(self, verify: Callable[[AttentionLayer], Check]) -> Callable[[AttentionLayer], Check]:
        """The layer's verification recipe, also remembering the layer it verifies."""

        def remember(layer: AttentionLayer) -> Check:
            self.layer = layer
            return verify(layer)

        return remember

    def consumed_by(self, weights: torch.Tensor) -> None:
        """``weights`` ``(B, h, N, N')`` multiplied the values: keep them if they are not the
        probabilities (heads mixed after the softmax, gates, ...)."""
        check = compare(self.probs, weights, "weights that multiply V vs softmax")
        if check.ok:
            return
        layer = self.layer
        assert layer is not None
        layer.scores = StoredProbs(weights)
        layer.verification = Verification(
            True,
            0.0,
            f"the weights were changed after the softmax ({check.detail}); the map shows the weights "
            "that multiply V, as the model computed them (rows need not sum to 1)",
        )


def _against(probs: torch.Tensor) -> Callable[[AttentionLayer], Callable[[], Verification]]:
    """Compare recomputed rows with a sample of the rows the model's softmax produced: the sample is
    copied now (the full matrix is not kept), the rows recomputed when the layer is first checked."""

    def verify(layer: AttentionLayer) -> Callable[[], Verification]:
        idx = sample_queries(probs.shape[2])
        expected = probs[:, :, idx]  # (B, h, s, N'): indexing copies

        def later() -> Verification:
            got = torch.stack([layer.scores.probs(b, idx) for b in range(expected.shape[0])])
            return compare(expected, got, "softmax rows")

        return later

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


def _equals_product(scores: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> bool:
    """Whether ``scores`` is ``q k^T * scale`` everywhere: compared in blocks of rows, so the extra
    memory is one block (``O(rows N')``), never another ``N x N'``."""
    n = scores.shape[-2]
    k_t = k.transpose(-1, -2)
    for start in range(0, n, _COMPARE_ROWS):
        rows = slice(start, min(n, start + _COMPARE_ROWS))
        expected = (q[..., rows, :] @ k_t) * scale
        got = scores[..., rows, :]
        if expected.shape != got.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            return False
    return True
