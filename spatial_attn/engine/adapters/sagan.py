"""SAGAN's ``Self_Attn`` (Zhang et al. 2019), the layer the seed question quotes.

Three 1x1 convolutions make queries and keys with C/8 channels and values with C. The energy is the
plain product ``q^T k`` (no 1/sqrt(d) scale), softmax runs over keys, and the block returns
``gamma * (V A^T) + x``. Queries, keys and values are read from the convolutions' outputs, so the
layer holds exactly what the model multiplied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..layer import AttentionLayer, Check, Verification
from .base import Call, Extracted, ModuleAdapter, check_output, has_submodules, map_tokens, unverifiable


class SaganAdapter(ModuleAdapter):
    """Modules with ``query_conv``, ``key_conv``, ``value_conv`` and a ``gamma`` residual weight."""

    family = "sagan"

    def matches(self, module: nn.Module) -> bool:
        return has_submodules(module, "query_conv", "key_conv", "value_conv") and hasattr(module, "gamma")

    def taps(self, module: nn.Module) -> dict:
        return {
            "q": (module.query_conv, "out"),
            "k": (module.key_conv, "out"),
            "v": (module.value_conv, "out"),
        }

    def extract(self, call: Call) -> Extracted:
        q, k, v = call.taps["q"], call.taps["k"], call.taps["v"]  # (B, C/8 | C/8 | C, H, W)
        held = call.module.gamma.detach().reshape(-1)[0]
        # on the device, read when checked; None where accelerate has put the weight back on the
        # meta device by the time the module returns (offloaded models): then it is fitted below
        gamma = None if held.is_meta else held.clone()
        x = map_tokens(call.arg("x", 0).detach())[:, 0]  # (B, N, C)
        out = map_tokens(call.first_output().detach())[:, 0]  # (B, N, C)

        def project(o: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            attended, residual = o[:, 0], x[:, idx]
            scale = gamma if gamma is not None else fitted_gamma(attended, out[:, idx] - residual)
            return scale * attended + residual

        check = check_output(map_tokens(v), lambda idx: out[:, idx], "gamma * attention + x", project=project)
        return Extracted(
            q=map_tokens(q),
            k=map_tokens(k),
            query_grid=tuple(q.shape[-2:]),
            verify=_unless_zero(gamma, check),
        )


def fitted_gamma(attended: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """The one number that best maps the rows' ``V A^T`` onto what the block added to its input
    (least squares), for a gamma the capture could not read. The check stays a real one: rows that are
    not the model's give an ``attended`` that no single number maps onto ``moved``."""
    a, m = attended.double(), moved.double()
    return ((a * m).sum() / (a * a).sum().clamp_min(1e-300)).to(attended.dtype)


def _unless_zero(
    gamma: torch.Tensor | None, check: Callable[[AttentionLayer], Check]
) -> Callable[[AttentionLayer], Check]:
    """``check``, unless ``gamma`` is 0 (attention does not reach the output: nothing to compare).
    Reading gamma's value asks the device for it, so it waits until the check is read, after the
    forward. A gamma not read (None) is fitted by the check itself."""

    def verify(layer: AttentionLayer) -> Callable[[], Verification]:
        later = check(layer)

        def when_read() -> Verification:
            if gamma is not None and float(gamma) == 0:
                return unverifiable("gamma is 0: attention does not reach the output yet, nothing to check")(
                    layer
                )
            return later() if callable(later) else later

        return when_read

    return verify
