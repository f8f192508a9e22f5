"""Where a model runs: ``--device`` and ``--dtype`` read once, checked, and applied the same way by
the app, ``spatial-attn serve``/``export`` and ``sa.load_model``.

Defaults stay CPU float32. ``auto`` picks CUDA when torch sees it. A device this machine lacks is a
``ValueError`` with a one-line message, raised before any model is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: The dtypes a model may run in, by the names users type.
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class Placement:
    """A device and a floating-point dtype."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def of(cls, module: nn.Module) -> Placement:
        """Where ``module`` runs: its first parameter's device and dtype (CPU float32 if it has none)."""
        first = next(module.parameters(), None)
        if first is None:
            return cls(torch.device("cpu"), torch.float32)
        return cls(first.device, first.dtype)

    def apply(self, module: nn.Module) -> None:
        """Move ``module`` here. Its dtype is changed only if it is not already this one: a folder read
        with ``from_pretrained(torch_dtype=...)`` keeps the modules its library keeps in float32."""
        module.to(self.device)
        if Placement.of(module).dtype != self.dtype:
            module.to(self.dtype)

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on this device, and in this dtype if it is floating point (timesteps, labels and
        token ids keep theirs)."""
        return t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)


def place(device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32") -> Placement:
    """``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``) and ``dtype`` (``float32``,
    ``float16``, ``bfloat16``, their short names, or a torch dtype), checked against this machine."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose float32, float16 or bfloat16")
        dtype = DTYPES[dtype.lower()]
    if dtype not in DTYPES.values():
        raise ValueError(
            f"dtype {dtype} is not a floating-point dtype a model runs in: float32, float16, bfloat16"
        )
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        where = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto ({error})") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
            "use --device cpu, or --device auto to take CUDA only when it is present"
        )
    if where.type == "cuda" and where.index is not None and where.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return Placement(where, dtype)
