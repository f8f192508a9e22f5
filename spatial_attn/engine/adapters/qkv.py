"""guided-diffusion / OpenAI ``QKVAttention`` and ``QKVAttentionLegacy`` (improved DDPM, ADM, GLIDE).

Both take one tensor ``qkv`` of shape ``(B, 3*h*c, T)`` and split it into queries, keys and values;
they differ only in the order of the split (GLIDE's class of the new name uses the legacy order). The
scale ``c^-1/4`` is applied to both q and k (so ``c^-1/2`` overall). GLIDE's variant also takes
``encoder_kv``, text keys and values placed before the image tokens. ``T`` tokens are the flattened
map of the enclosing ``AttentionBlock``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..grid import numbered
from .base import Call, Extracted, ModuleAdapter, check_output, keep, per_head

_CLASSES = frozenset({"QKVAttention", "QKVAttentionLegacy"})


class QkvAdapter(ModuleAdapter):
    """Classes named ``QKVAttention``/``QKVAttentionLegacy`` with an ``n_heads`` attribute."""

    family = "qkv"

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__ in _CLASSES and hasattr(module, "n_heads")

    def extract(self, call: Call) -> Extracted:
        heads = call.module.n_heads
        legacy = _heads_outermost(call.module)
        qkv = keep(call.arg("qkv", 0))
        b, width, t = qkv.shape
        c = width // (3 * heads)
        q, k, v = _split(qkv, heads, 3, legacy)  # (B, h, T, c) each
        prefix: tuple[str, ...] = ()
        encoder_kv = call.arg("encoder_kv", 1)
        if encoder_kv is not None:
            ek, ev = _split(keep(encoder_kv), heads, 2, legacy)  # (B, h, S, c)
            k, v = torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)
            prefix = numbered("text", ek.shape[2])
        attended = keep(call.first_output()).reshape(b, heads, c, t).transpose(-1, -2)  # (B, h, T, c)
        return Extracted(
            q=q,
            scale=c**-0.5,
            k=k,
            key_prefix=prefix,
            verify=check_output(v, per_head(attended), "QKV attention output"),
        )


def _heads_outermost(module: nn.Module) -> bool:
    """Legacy packing: guided-diffusion's ``QKVAttentionLegacy``, and GLIDE's ``QKVAttention``
    (recognised by its ``encoder_kv`` argument), which packs heads outermost despite its name."""
    if type(module).__name__ == "QKVAttentionLegacy":
        return True
    return "encoder_kv" in inspect.signature(module.forward).parameters


def _split(packed: torch.Tensor, heads: int, parts: int, legacy: bool) -> list[torch.Tensor]:
    """``(B, parts*h*c, T)`` -> ``parts`` tensors of ``(B, h, T, c)``.

    Legacy packs heads outermost (``[h][q|k|v][c]``); the newer layout packs q, k, v outermost
    (``[q|k|v][h][c]``).
    """
    b, width, t = packed.shape
    c = width // (parts * heads)
    if legacy:
        split = packed.reshape(b, heads, parts, c, t).unbind(2)  # parts x (B, h, c, T)
    else:
        split = packed.reshape(b, parts, heads, c, t).unbind(1)
    return [s.transpose(-1, -2) for s in split]
