"""diffusers ``Attention``: UNet2DModel's attention blocks and the Transformer2DModel blocks of
Stable Diffusion UNets, under any attention processor.

Every processor calls the same submodules, so queries, keys and values are read from them: ``to_q``
and ``to_k`` (or ``norm_q``/``norm_k`` when the model normalises them), ``to_v``, and the input of
``to_out[0]``, which is the attention output used to verify the capture. Processors differ in the
scale: the ``get_attention_scores`` ones apply ``attn.scale``, the SDPA ones use SDPA's default
``1/sqrt(head_dim)``. A 4D input gives the grid; a transformer block receives flattened tokens,
whose grid comes from the enclosing Transformer2DModel's feature map. ``encoder_hidden_states``
makes it cross-attention, whose keys are text tokens.

diffusers is never imported here: a model built with it has imported it already.
"""

from __future__ import annotations

import sys

from torch import nn

from .base import Call, Extracted, ModuleAdapter, check_output, keep, per_head, split_heads

#: Processors whose scores come from ``attn.get_attention_scores`` (and so from ``attn.scale``).
_SCALED_BY_ATTN = frozenset(
    {
        "AttnProcessor",
        "SlicedAttnProcessor",
        "AttnAddedKVProcessor",
        "SlicedAttnAddedKVProcessor",
        "CustomDiffusionAttnProcessor",
    }
)


class DiffusersAdapter(ModuleAdapter):
    """``diffusers.models.attention_processor.Attention``."""

    family = "diffusers"

    def matches(self, module: nn.Module) -> bool:
        processors = sys.modules.get("diffusers.models.attention_processor")
        attention = getattr(processors, "Attention", None)
        return attention is not None and isinstance(module, attention)

    def taps(self, module: nn.Module) -> dict:
        return {
            "q": (module.norm_q if module.norm_q is not None else module.to_q, "out"),
            "k": (module.norm_k if module.norm_k is not None else module.to_k, "out"),
            "v": (module.to_v, "out"),
            "attended": (module.to_out[0], "in"),
        }

    def extract(self, call: Call) -> Extracted:
        attn, heads = call.module, call.module.heads
        q, k, v = (_heads(call.taps[r], heads) for r in ("q", "k", "v"))  # (B, h, N | N', d)
        batch, _, _, head_dim = q.shape
        hidden = call.arg("hidden_states", 0)
        cross = call.arg("encoder_hidden_states", 1) is not None
        mask = call.arg("attention_mask", 2)
        if mask is not None:  # the processors' own preparation: (B*h, 1 | N, N') additive
            mask = keep(attn.prepare_attention_mask(mask, k.shape[2], batch)).reshape(
                batch, heads, -1, k.shape[2]
            )
        scale = attn.scale if type(attn.processor).__name__ in _SCALED_BY_ATTN else head_dim**-0.5
        return Extracted(
            q=q.float() * scale,
            k=k,
            mask=mask,
            query_grid=tuple(hidden.shape[-2:]) if hidden.ndim == 4 else None,
            keys="text" if cross else "self",
            verify=check_output(v, per_head(split_heads(call.taps["attended"], heads)), "input of to_out"),
        )


def _heads(t, heads: int):
    """Projections arrive as ``(B, N, h*d)``, or already split ``(B, h, N, d)`` after norm_q/norm_k."""
    return t if t.ndim == 4 else split_heads(t, heads)
