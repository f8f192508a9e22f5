"""diffusers ``Attention``: UNet2DModel's attention blocks and the Transformer2DModel blocks of
Stable Diffusion UNets, under any attention processor.

Every processor calls the same submodules, so queries, keys and values are read from them: ``to_q``
and ``to_k`` (or ``norm_q``/``norm_k`` when the model normalises them), ``to_v``, and the input of
``to_out[0]``, which is the attention output used to verify the capture. Processors differ in the
scale: the ``get_attention_scores`` ones apply ``attn.scale``, the SDPA ones use SDPA's default
``1/sqrt(head_dim)``. A 4D input gives the grid; a transformer block receives flattened tokens,
whose grid comes from the enclosing Transformer2DModel's feature map. ``encoder_hidden_states``
makes it cross-attention, whose keys are text tokens.

*Joint* attention (SD3 / MMDiT, AuraFlow: modules with ``add_q_proj``) runs one softmax over image
and text tokens together: the text's queries, keys and values come from ``add_q_proj``,
``add_k_proj``, ``add_v_proj`` (or ``norm_added_q``/``norm_added_k``) and are concatenated with the
image's, text first for AuraFlow and after the image for SD3, exactly as the processor does. The layer
keeps that whole sequence: image tokens on the grid, text tokens as special tokens ``text 0 ..`` on
both axes, so a row's text mass is reported and text queries have rows too. The text half of the
output (the input of ``to_add_out``) verifies the text rows. Modules with ``add_k_proj`` but no
``add_q_proj`` (``AttnAddedKVProcessor``: UnCLIP, Kandinsky) add the text's keys before the image's
own in one softmax: those are special key tokens, and the queries are the image's.

diffusers is never imported here: a model built with it has imported it already.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..grid import Grid, numbered
from .base import Call, Declined, Extracted, ModuleAdapter, check_output, keep, per_head, split_heads

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

#: Joint processors that put the text tokens before the image tokens (the others put them after);
#: they also apply ``norm_q``/``norm_k`` to ``(B, N, h, d)``, before moving heads forward.
_TEXT_FIRST = frozenset({"AuraFlowAttnProcessor2_0", "FusedAuraFlowAttnProcessor2_0"})


class DiffusersAdapter(ModuleAdapter):
    """``diffusers.models.attention_processor.Attention``."""

    family = "diffusers"

    def matches(self, module: nn.Module) -> bool:
        processors = sys.modules.get("diffusers.models.attention_processor")
        attention = getattr(processors, "Attention", None)
        return attention is not None and isinstance(module, attention)

    def taps(self, module: nn.Module) -> dict:
        taps = {
            "q": (module.norm_q if module.norm_q is not None else module.to_q, "out"),
            "k": (module.norm_k if module.norm_k is not None else module.to_k, "out"),
            "v": (module.to_v, "out"),
            "attended": (module.to_out[0], "in"),
        }
        if getattr(module, "add_q_proj", None) is not None:  # joint attention: the text's projections
            norm_q, norm_k = getattr(module, "norm_added_q", None), getattr(module, "norm_added_k", None)
            taps["text_q"] = (norm_q if norm_q is not None else module.add_q_proj, "out")
            taps["text_k"] = (norm_k if norm_k is not None else module.add_k_proj, "out")
            taps["text_v"] = (module.add_v_proj, "out")
            if getattr(module, "to_add_out", None) is not None:
                taps["text_attended"] = (module.to_add_out, "in")
        elif getattr(module, "add_k_proj", None) is not None:  # added keys and values, no text queries
            taps["added_k"] = (module.add_k_proj, "out")
            taps["added_v"] = (module.add_v_proj, "out")
        return {role: tap for role, tap in taps.items() if tap[0] is not None}  # only_cross: no to_k

    def extract(self, call: Call) -> Extracted:
        attn, heads = call.module, call.module.heads
        processor = type(attn.processor).__name__
        if "Linear" in processor:  # Sana's and its PAG variants: ReLU features, no softmax
            raise Declined(
                f"linear attention ({processor}: ReLU(q) (ReLU(k)^T v), normalised by a sum): no softmax "
                "over tokens, so there is no map of probabilities to show"
            )
        if "q" not in call.taps or ("k" not in call.taps and "added_k" not in call.taps):
            raise ValueError(
                "its projections did not run one by one (fused to_qkv?): queries and keys are not "
                "observable; call unfuse_qkv_projections() on the model before capturing"
            )
        if call.kwargs.get("image_rotary_emb") is not None:
            raise ValueError(
                "its processor rotates q and k (image_rotary_emb) after the projections that can be "
                "observed, so their product is not the model's: not shown rather than shown wrong"
            )
        q = _heads(call.taps["q"], heads, attn.processor)  # (B, h, N, d)
        batch, _, _, head_dim = q.shape
        hidden = call.arg("hidden_states", 0)
        grid = tuple(hidden.shape[-2:]) if hidden.ndim == 4 else None  # a 4D input states its grid
        scale = _scale(attn, head_dim)
        cross = call.arg("encoder_hidden_states", 1) is not None
        if "added_k" in call.taps:
            return _added_keys(call, q, scale, grid, cross)
        k, v = (_heads(call.taps[r], heads, attn.processor) for r in ("k", "v"))  # (B, h, N', d)
        if cross and "text_q" in call.taps:
            return _joint(call, q, k, v, scale, grid)
        return Extracted(
            q=q,
            k=k,
            scale=scale,
            mask=_mask(call, k.shape[2], batch),
            query_grid=grid,
            keys="text" if cross else "self",
            verify=check_output(v, per_head(split_heads(call.taps["attended"], heads)), "input of to_out"),
        )


def _heads(t: torch.Tensor, heads: int, processor: object) -> torch.Tensor:
    """Projections arrive as ``(B, N, h*d)``, or already split after norm_q/norm_k: ``(B, h, N, d)``,
    or ``(B, N, h, d)`` where the processor normalises before moving heads forward (AuraFlow)."""
    if t.ndim == 3:
        return split_heads(t, heads)
    return t.transpose(1, 2) if type(processor).__name__ in _TEXT_FIRST else t


def _scale(attn: nn.Module, head_dim: int) -> float:
    """``attn.scale`` where the processor scores with ``get_attention_scores``; SDPA's default else."""
    return attn.scale if type(attn.processor).__name__ in _SCALED_BY_ATTN else head_dim**-0.5


def _mask(call: Call, keys: int, batch: int) -> torch.Tensor | None:
    """The call's ``attention_mask`` as the processors prepare it: additive ``(B, h, 1 | N, N')``."""
    mask = call.arg("attention_mask", 2)
    if mask is None:
        return None
    heads = call.module.heads
    return keep(call.module.prepare_attention_mask(mask, keys, batch)).reshape(batch, heads, -1, keys)


def _added_keys(call: Call, q: torch.Tensor, scale: float, grid: Grid | None, cross: bool) -> Extracted:
    """``AttnAddedKVProcessor`` (UnCLIP, Kandinsky UNets): ``add_k_proj``/``add_v_proj`` of the text
    (of the image itself when there is no text) placed before the module's own keys, one softmax
    over both, or instead of them with ``only_cross_attention``. Queries are the image's only."""
    attn, heads = call.module, call.module.heads
    added_k, added_v = (split_heads(call.taps[r], heads) for r in ("added_k", "added_v"))  # (B, h, Nt, d)
    labels = tuple(f"{'text' if cross else 'added'} {i}" for i in range(added_k.shape[2]))
    if "k" in call.taps:  # the image's own keys come after the added ones
        own_k, own_v = (_heads(call.taps[r], heads, attn.processor) for r in ("k", "v"))
        k, v = torch.cat([added_k, own_k], dim=2), torch.cat([added_v, own_v], dim=2)
    else:  # only_cross_attention: the added keys alone
        k, v, labels = added_k, added_v, ()
    attended = split_heads(call.taps["attended"], heads)  # (B, h, N, d)
    return Extracted(
        q=q,
        k=k,
        scale=scale,
        mask=_mask(call, k.shape[2], q.shape[0]),
        query_grid=grid,
        keys="self" if labels else "text",
        key_prefix=labels,
        verify=check_output(v, per_head(attended), "input of to_out"),
    )


def _joint(
    call: Call, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, grid: Grid | None
) -> Extracted:
    """One softmax over image and text tokens: both halves concatenated in the processor's order.

    ``q``, ``k`` and ``v`` are the image's ``(B, h, Ni, d)``; the text's come from the taps.
    """
    heads = call.module.heads
    processor = call.module.processor
    roles = ("text_q", "text_k", "text_v")
    tq, tk, tv = (_heads(call.taps[r], heads, processor) for r in roles)  # (B, h, Nt, d)
    text_first = type(processor).__name__ in _TEXT_FIRST
    labels = numbered("text", tq.shape[2])
    n_image = q.shape[2]

    def joined(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([text, image] if text_first else [image, text], dim=2)  # (B, h, Nt + Ni, d)

    offset = len(labels) if text_first else 0  # where the image tokens start in the sequence
    attended = split_heads(call.taps["attended"], heads)  # (B, h, Ni, d): image half of the output
    if "text_attended" in call.taps:  # the text half reaches the output too (not context_pre_only)
        observed, among = per_head(joined(attended, split_heads(call.taps["text_attended"], heads))), None
    else:  # only image queries can be checked: sequence position i is the image output's i - offset
        observed, among = (lambda idx: attended[:, :, idx - offset]), torch.arange(n_image) + offset
    return Extracted(
        q=joined(q, tq),
        k=joined(k, tk),
        scale=scale,
        query_grid=grid,
        keys="self",
        query_prefix=labels if text_first else (),
        query_suffix=() if text_first else labels,
        key_prefix=labels if text_first else (),
        key_suffix=() if text_first else labels,
        verify=check_output(joined(v, tv), observed, "joint attention output", among=among),
    )
