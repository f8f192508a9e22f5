"""``torch.nn.MultiheadAttention`` (ViTs with a CLS token), also inside ``nn.TransformerEncoderLayer``.

MultiheadAttention keeps its projections as raw parameters and may run as one fused kernel, and the
encoder layer's eval fast path skips ``self_attn.forward`` altogether. So queries and keys are
recomputed from the module's inputs and weights, as ``F.multi_head_attention_forward`` does (scale
``1/sqrt(head_dim)``, ``bias_k``/``add_zero_attn`` keys appended, boolean masks meaning *masked*),
and an encoder layer is claimed whole and reported under its ``self_attn`` name. Verification runs
the sampled rows through the rest of the module (output projection; for an encoder layer also the
residuals, norms and feed-forward) and compares with the module's output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Call, Extracted, ModuleAdapter, check_output, keep, split_heads, unverifiable


class MultiheadAdapter(ModuleAdapter):
    """``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``."""

    family = "mha"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention | nn.TransformerEncoderLayer)

    def extract(self, call: Call) -> Extracted:
        if isinstance(call.module, nn.TransformerEncoderLayer):
            return _encoder_layer(call)
        mha: nn.MultiheadAttention = call.module
        raw = [call.arg(n, i) for i, n in enumerate(("query", "key", "value"))]
        query, key, value = (_batch_first(mha, keep(t)) for t in raw)
        ex = _attention(mha, query, key, value, call.arg("attn_mask", 5), call.arg("key_padding_mask", 3))
        if _dropout_active(mha):
            ex.verify = unverifiable("dropout is active (training mode); rows are pre-dropout")
        else:
            out = _batch_first(mha, keep(call.first_output()))  # (B, L, E)
            ex.verify = check_output(
                _values(mha, value),
                lambda idx: out[:, idx],
                "MHA output",
                project=lambda o, idx: _out_proj(mha, o),
            )
        if raw[1] is not raw[0]:  # cross-attention: keys are other tokens
            ex.keys = "auto"
        return ex


def _encoder_layer(call: Call) -> Extracted:
    """An encoder layer's self-attention, from the layer's input (after ``norm1`` if norm-first)."""
    layer: nn.TransformerEncoderLayer = call.module
    mha = layer.self_attn
    src = _batch_first(mha, keep(call.arg("src", 0)))  # (B, L, E)
    x = _norm(layer.norm1, src) if layer.norm_first else src
    ex = _attention(mha, x, x, x, call.arg("src_mask", 1), call.arg("src_key_padding_mask", 2))
    ex.name_suffix = ".self_attn"
    if _dropout_active(layer):
        ex.verify = unverifiable("dropout is active (training mode); rows are pre-dropout")
    else:
        out = _batch_first(mha, keep(call.first_output()))

        def rest_of_layer(o: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            y = src[:, idx] + _out_proj(mha, o)  # residual around attention
            if layer.norm_first:
                return y + _feed_forward(layer, _norm(layer.norm2, y))
            y = _norm(layer.norm1, y)
            return _norm(layer.norm2, y + _feed_forward(layer, y))

        ex.verify = check_output(
            _values(mha, x), lambda idx: out[:, idx], "encoder layer output", project=rest_of_layer
        )
    return ex


def _attention(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
) -> Extracted:
    """Queries, keys and mask of one MultiheadAttention call; inputs are batch-first ``(B, L, E)``."""
    wq, wk, _ = _weights(mha)
    bq, bk, _ = _biases(mha)
    heads = mha.num_heads
    q = split_heads(F.linear(query, wq, bq), heads)  # (B, h, L, hd)
    k = split_heads(F.linear(key, wk, bk), heads)  # (B, h, S, hd)
    k, suffix = _extra_keys(mha, k, mha.bias_k)
    bias = _mask(attn_mask, key_padding_mask, q.shape[0], heads, len(suffix))
    return Extracted(q=q, k=k, scale=mha.head_dim**-0.5, mask=bias, key_suffix=suffix)


def _values(mha: nn.MultiheadAttention, value: torch.Tensor) -> torch.Tensor:
    """Projected values ``(B, h, S', hd)``, with the same extra keys as the keys."""
    _, _, wv = _weights(mha)
    _, _, bv = _biases(mha)
    v = split_heads(F.linear(value, wv, bv), mha.num_heads)
    return _extra_keys(mha, v, mha.bias_v)[0]


def _extra_keys(
    mha: nn.MultiheadAttention, t: torch.Tensor, learned: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Append ``bias_k``/``bias_v`` and the ``add_zero_attn`` zero token, as MHA does, and name them."""
    b, h, _, hd = t.shape
    labels: tuple[str, ...] = ()
    if learned is not None:
        extra = learned.detach().reshape(1, 1, h, hd).transpose(1, 2).expand(b, h, 1, hd)
        t, labels = torch.cat([t, extra], dim=2), (*labels, "bias_k")
    if mha.add_zero_attn:
        t, labels = torch.cat([t, t.new_zeros(b, h, 1, hd)], dim=2), (*labels, "zero")
    return t, labels


def _mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    extra: int,
) -> torch.Tensor | None:
    """MHA's masks as one additive ``(B|1, h|1, L|1, S')`` tensor (boolean True means masked here)."""
    parts = []
    if attn_mask is not None:
        m = _additive(keep(attn_mask))
        parts.append(
            m.reshape(batch, heads, *m.shape[-2:]) if m.ndim == 3 else m.reshape(1, 1, *m.shape[-2:])
        )
    if key_padding_mask is not None:
        parts.append(_additive(keep(key_padding_mask)).reshape(batch, 1, 1, -1))
    if not parts:
        return None
    total = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return F.pad(total, (0, extra))  # appended keys are never masked


def _additive(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype != torch.bool:
        return mask.float()
    return torch.zeros(mask.shape, device=mask.device).masked_fill(mask, -math.inf)


def _dropout_active(module: nn.Module) -> bool:
    """Whether a training-mode forward dropped attention weights or activations at random."""
    if not module.training:
        return False
    mhas = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]
    drops = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    return any(m.dropout > 0 for m in mhas) or any(d.p > 0 for d in drops)


def _weights(mha: nn.MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if mha._qkv_same_embed_dim:
        return _d(mha.in_proj_weight).chunk(3)
    return _d(mha.q_proj_weight), _d(mha.k_proj_weight), _d(mha.v_proj_weight)


def _biases(mha: nn.MultiheadAttention) -> tuple[torch.Tensor | None, ...]:
    if mha.in_proj_bias is None:
        return None, None, None
    return _d(mha.in_proj_bias).chunk(3)


def _out_proj(mha: nn.MultiheadAttention, o: torch.Tensor) -> torch.Tensor:
    """``(B, h, s, hd)`` per-head outputs -> ``(B, s, E)`` through the output projection."""
    b, h, s, hd = o.shape
    merged = o.transpose(1, 2).reshape(b, s, h * hd)
    return F.linear(merged, *_like(merged, mha.out_proj.weight, mha.out_proj.bias))


def _feed_forward(layer: nn.TransformerEncoderLayer, y: torch.Tensor) -> torch.Tensor:
    hidden = layer.activation(F.linear(y, *_like(y, layer.linear1.weight, layer.linear1.bias)))
    return F.linear(hidden, *_like(hidden, layer.linear2.weight, layer.linear2.bias))


def _norm(norm: nn.LayerNorm, y: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(y, norm.normalized_shape, *_like(y, norm.weight, norm.bias), norm.eps)


def _d(t: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter as a plain tensor (None stays None: layers may have no bias)."""
    return None if t is None else t.detach()


def _like(x: torch.Tensor, *params: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Parameters as plain tensors in ``x``'s dtype: verification recomputes the module's tail in
    float32 from a half-precision model's weights."""
    return [None if p is None else p.detach().to(x.dtype) for p in params]


def _batch_first(mha: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    """Inputs as ``(B, L, E)`` whatever the module's convention (unbatched inputs get B = 1)."""
    if t.ndim == 2:
        return t.unsqueeze(0)
    return t if mha.batch_first else t.transpose(0, 1)
