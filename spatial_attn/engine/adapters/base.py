"""The contract between the capture (which owns every hook) and the adapters (which know one family).

An adapter never registers a hook itself. A *module adapter* names the modules it understands and the
submodule tensors it wants to see ("taps"); the capture hands it a :class:`Call` once the module has
run, and the adapter turns it into an :class:`Extracted`: queries, keys and how to verify them. A
*function adapter* watches torch functions (``scaled_dot_product_attention``, ``softmax``) called
outside any claimed module and does the same from their arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..layer import AttentionLayer, Check, Verification, compare, sample_queries, versions

Where = Literal["in", "out"]


@dataclass
class Extracted:
    """What an adapter read from one attention call.

    ``q`` is ``(B, h, N, d)``, with the softmax scale multiplied in or given as ``scale``; ``k`` is
    ``(B, h, N', d)``. ``keys`` says what the key tokens are: the query tokens themselves
    (``"self"``), those tokens pooled (``"pooled"``), tokens with no place in the image
    (``"text"``), or unknown (``"auto"``: decided from the counts). ``key_prefix``/``key_suffix``
    label key tokens added around them (MultiheadAttention's ``bias_k``, GLIDE's encoder keys);
    ``query_prefix``/``query_suffix`` do the same for queries (joint attention's text tokens are
    queries as well as keys).
    """

    q: torch.Tensor | None
    k: torch.Tensor | None
    mask: torch.Tensor | None = None
    causal: bool = False
    query_grid: tuple[int, int] | None = None
    key_grid: tuple[int, int] | None = None
    keys: Literal["self", "pooled", "text", "auto"] = "self"
    key_prefix: tuple[str, ...] = ()
    key_suffix: tuple[str, ...] = ()
    query_prefix: tuple[str, ...] = ()
    query_suffix: tuple[str, ...] = ()
    verify: Callable[[AttentionLayer], Check] | None = None  # a Check may defer its arithmetic
    probs: torch.Tensor | None = None  # (B, h, N, N') only where q and k could not be recovered
    scale: float = 1.0  # multiplies q k^T where it is not already folded into q (folded lazily)
    name_suffix: str = ""  # appended to the module name (an encoder layer names its ``self_attn``)
    require_grid: bool = False  # drop the call if its queries match no spatial grid (not attention)
    contracted: int | None = None  # the length the scores' product summed over, where q is not kept

    @property
    def summed(self) -> int | None:
        """The length of the axis ``q k^T`` summed over: the head dimension, unless the call
        multiplied over its tokens (channel attention)."""
        return int(self.q.shape[-1]) if self.q is not None else self.contracted

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, h, N, N')`` of the probabilities, whether they were kept or are made from q and k."""
        if self.probs is not None:
            b, h, n, m = self.probs.shape
            return b, h, n, m
        return (*self.q.shape[:3], self.k.shape[2])


class Declined(Exception):
    """A call that looks like attention but is no softmax over tokens (linear attention, a softmax
    over channels): the capture reports it in ``cap.problems`` as what it is, never as a map."""


@dataclass
class Call:
    """One forward of a claimed module, as its adapter sees it afterwards."""

    module: nn.Module
    args: tuple
    kwargs: dict
    taps: dict[str, torch.Tensor] = field(default_factory=dict)
    output: Any = None

    def arg(self, name: str, index: int, default: Any = None) -> Any:
        """A forward argument, whether it was passed by position or by keyword."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[index] if index < len(self.args) else default

    def first_output(self) -> torch.Tensor:
        """The module's output tensor (the first element when it returns a tuple)."""
        out = self.output
        return out[0] if isinstance(out, tuple | list) else out


class ModuleAdapter:
    """Knows one family of attention modules."""

    family: ClassVar[str]

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is an attention call of this family."""
        raise NotImplementedError

    def taps(self, module: nn.Module) -> dict[str, tuple[nn.Module, Where]]:
        """Submodule tensors to record during the call: role -> (submodule, its input or output)."""
        return {}

    def extract(self, call: Call) -> Extracted:
        """Queries, keys and a verification recipe from a finished call."""
        raise NotImplementedError


class FunctionAdapter:
    """Knows one torch function (or a few) that computes attention outside any known module."""

    family: ClassVar[str]
    functions: ClassVar[frozenset]

    def on_call(
        self, func: Callable, args: tuple, kwargs: dict, out: Any, batch: int | None
    ) -> Extracted | None:
        """Called after a watched function ran; returns an attention call, or None if it was not one.

        ``batch`` is the batch size of the model input, used to split flattened ``B*heads`` axes.
        """
        raise NotImplementedError


# -- small shared reshapes ---------------------------------------------------------------------


def has_submodules(module: nn.Module, *names: str) -> bool:
    """Whether ``module`` has all these submodules: how convolution-built attention is recognised."""
    return all(isinstance(getattr(module, n, None), nn.Module) for n in names)


def keep(t: torch.Tensor) -> torch.Tensor:
    """Detach and move to CPU at once, so a capture never holds a graph or device memory."""
    return t.detach().cpu()


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads*d) -> (B, heads, N, d)``: the head split every multi-head layer does."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, h, N, d)


def map_tokens(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, 1, N, C)``: a feature map flattened row-major, token y*W + x = (y, x)."""
    b, c, h, w = t.shape
    return t.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C)


def unverifiable(reason: str) -> Callable[[AttentionLayer], Verification]:
    """A verification recipe for calls whose output cannot be compared with (and why)."""
    return lambda layer: Verification(None, None, reason)


def to_heads(t: torch.Tensor, batch: int | None) -> torch.Tensor:
    """``(..., L, E) -> (B, h, L, E)`` for tensors of any leading shape.

    A single leading axis is split as ``B*h`` (batch-major, as ``head_to_batch_dim`` does) when it
    is a multiple of the model's batch ``batch``; otherwise it is the batch and there is one head.
    """
    lead = t.shape[:-2]
    if not lead:
        return t[None, None]
    if len(lead) == 1:
        n = lead[0]
        if batch and n != batch and n % batch == 0:
            return t.reshape(batch, n // batch, *t.shape[-2:])
        return t.unsqueeze(1)
    return t.reshape(lead[0], -1, *t.shape[-2:])


def check_output(
    values: torch.Tensor,
    observed: Callable[[torch.Tensor], torch.Tensor],
    what: str,
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    among: torch.Tensor | None = None,
) -> Callable[[AttentionLayer], Check]:
    """A recipe that checks the captured probabilities against what the model produced.

    For a sample of query tokens ``idx``, ``P[idx] @ values`` (``(B, h, s, dv)``) is mapped by
    ``project(out, idx)`` into the space of ``observed(idx)``, the model's own output at those
    queries, and the two are compared. Comparing where the model's numbers live (after its output
    projection or residual) keeps the tolerance meaningful. Only a few rows are computed. ``among``
    restricts the sample to the query tokens whose output the model exposes (default: all).

    The model's output rows are copied during the forward; the arithmetic waits until the layer's
    verification is first read (:attr:`AttentionLayer.verification`), so a capture costs the forward
    almost nothing. ``values`` is held until then, and a model that writes into it in place in the
    meantime leaves the layer unverified rather than wrongly checked.
    """

    def verify(layer: AttentionLayer) -> Callable[[], Verification]:
        idx = sample_queries(layer.queries.count) if among is None else among[sample_queries(len(among))]
        expected = observed(idx)  # (B, h | 1, s, ...): indexing copies the rows now
        version = versions(values)

        def later() -> Verification:
            if version is not None and versions(values) != version:
                return Verification(None, None, f"{what}: the model overwrote the values after the call")
            got = layer.sampled_output(values, idx)
            return compare(expected, project(got, idx) if project else got, what)

        return later

    return verify


def per_head(observed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``observed`` ``(B, h, N, dv)`` read at query tokens ``idx``, for :func:`check_output`."""
    return lambda idx: observed[:, :, idx]
