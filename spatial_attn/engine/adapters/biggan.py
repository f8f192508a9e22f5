"""BigGAN's attention (Brock et al. 2019; BigGAN-PyTorch ``layers.Attention``): pooled keys.

``theta``, ``phi`` and ``g`` are 1x1 convolutions with C/8, C/8 and C/2 channels; ``phi`` and ``g``
are max-pooled 2x2, so a query pixel of the H x W grid attends to an H/2 x W/2 grid of keys, and the
output convolution ``o`` maps the attended values back to C channels (``gamma * o(...) + x``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Call, Extracted, ModuleAdapter, check_output, has_submodules, map_tokens, per_head


class BigGanAdapter(ModuleAdapter):
    """Modules with ``theta``, ``phi``, ``g``, ``o`` convolutions and a ``gamma`` residual weight."""

    family = "biggan"

    def matches(self, module: nn.Module) -> bool:
        return has_submodules(module, "theta", "phi", "g", "o") and hasattr(module, "gamma")

    def taps(self, module: nn.Module) -> dict:
        return {
            "q": (module.theta, "out"),
            "k": (module.phi, "out"),
            "v": (module.g, "out"),
            "attended": (module.o, "in"),
        }

    def extract(self, call: Call) -> Extracted:
        q = call.taps["q"]  # (B, C/8, H, W)
        k = F.max_pool2d(call.taps["k"], [2, 2])  # (B, C/8, H/2, W/2)
        v = F.max_pool2d(call.taps["v"], [2, 2])  # (B, C/2, H/2, W/2)
        attended = map_tokens(call.taps["attended"])  # (B, 1, N, C/2): what `o` received
        return Extracted(
            q=map_tokens(q).float(),
            k=map_tokens(k),
            query_grid=tuple(q.shape[-2:]),
            key_grid=tuple(k.shape[-2:]),
            keys="pooled",
            verify=check_output(map_tokens(v), per_head(attended), "input of o"),
        )
