"""``torch.nn.functional.scaled_dot_product_attention``, wherever it is called.

Fused kernels never hold the probabilities, so the layer keeps the queries and keys the call received
and recomputes rows from them, honouring every argument that changes the probabilities: ``scale=``,
``attn_mask`` (boolean, True = may attend; or additive), ``is_causal`` and ``enable_gqa``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .base import Extracted, FunctionAdapter, check_output, keep, per_head, to_heads, unverifiable


def _arguments(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
) -> dict[str, Any]:
    """SDPA's arguments by name, however they were passed."""
    return locals()


class SdpaAdapter(FunctionAdapter):
    """Any ``scaled_dot_product_attention`` call outside a module another adapter claims."""

    family = "sdpa"
    functions = frozenset({F.scaled_dot_product_attention})

    def on_call(self, func: Callable, args: tuple, kwargs: dict, out: Any, batch: int | None) -> Extracted:
        a = _arguments(*args, **kwargs)
        q, k, v = (to_heads(keep(a[n]), batch) for n in ("query", "key", "value"))  # (B, h, L|S, E)
        if a["enable_gqa"] and k.shape[1] != q.shape[1]:
            groups = q.shape[1] // k.shape[1]  # each key head serves `groups` query heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scale = a["scale"] if a["scale"] is not None else q.shape[-1] ** -0.5
        mask = a["attn_mask"]
        if a["dropout_p"] > 0:
            verify = unverifiable(f"dropout p={a['dropout_p']} was active; rows are pre-dropout")
        else:
            verify = check_output(v, per_head(to_heads(keep(out), batch)), "attention output")
        return Extracted(
            q=q,
            k=k,
            scale=scale,
            mask=None if mask is None else _mask_heads(keep(mask), batch),
            causal=bool(a["is_causal"]),
            keys="auto",
            verify=verify,
        )


def _mask_heads(mask: torch.Tensor, batch: int | None) -> torch.Tensor:
    """A mask broadcastable to ``(..., L, S)`` as one broadcastable to ``(B, h, L, S)``."""
    return mask if mask.ndim <= 2 else to_heads(mask, batch)
