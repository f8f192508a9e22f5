"""Token grids a model states while it runs, read as its modules are entered.

A sequence of ``count`` tokens fits many grids once special tokens (CLS, registers, text) are
allowed: 53 tokens are 7x7 + 4 or 6x6 + 17. The model knows which, and says it on the way: its
patch embedding turns an ``Hi x Wi`` image into an ``Hi/p x Wi/p`` map, and a packed sequence
comes with the ids of its image tokens (Flux's ``img_ids``). :func:`stated_grids` reads those
statements from one module call; the capture keeps them for the forward and lays tokens out on
them before any guess (:func:`spatial_attn.engine.grid.infer_layout`).
"""

from __future__ import annotations

import torch
from torch import nn

from .grid import Grid, StatedGrid, as_grid

#: Forward arguments that carry the ids of packed image tokens: ``(L, 3)`` rows of
#: ``(frame, row, column)`` (diffusers' Flux; ``(B, L, 3)`` in its older releases).
_ID_ARGUMENTS = ("img_ids",)


def stated_grids(name: str, module: nn.Module, image_hw: Grid | None, kwargs: dict) -> list[StatedGrid]:
    """The grids ``module`` states by being called (usually none): ``image_hw`` is ``(H, W)`` of its
    first tensor argument when that is 4D (the capture reads it once per call), ``kwargs`` its
    keyword arguments."""
    said = [_patch_grid(name, module, image_hw)]
    said += [_ids_grid(name, kwargs[key]) for key in _ID_ARGUMENTS if key in kwargs]
    return [s for s in said if s is not None]


def _patch_grid(name: str, module: nn.Module, image_hw: Grid | None) -> StatedGrid | None:
    """The output grid of a strided convolution or of a module with a ``patch_size`` (timm's and
    transformers' patch embeddings, RADIO's linear patch generator) called on a 4D image."""
    if image_hw is None:
        return None
    hi, wi = image_hw
    if isinstance(module, nn.Conv2d) and max(module.stride) > 1:
        grid = _conv_out(module, (hi, wi))
        return StatedGrid(grid, f"the output of `{name}` (a stride-{_text(module.stride)} convolution)")
    patch = as_grid(vars(module).get("patch_size"))  # not getattr: diffusers warns on config keys
    if patch is not None and min(patch) > 0:
        grid = (hi // patch[0], wi // patch[1])
        return StatedGrid(grid, f"`{name}`: a {hi}x{wi} input in {_text(patch)} patches")
    return None


def _conv_out(conv: nn.Conv2d, size: Grid) -> Grid:
    """``Conv2d``'s output size, by its documented formula (a strided one cannot pad ``"same"``)."""
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    return tuple(  # type: ignore[return-value]
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(size, padding, conv.dilation, conv.kernel_size, conv.stride, strict=True)
    )


def _ids_grid(name: str, ids: object) -> StatedGrid | None:
    """The grid of packed image tokens whose ids enumerate rows and columns row-major (token
    ``i = y*W + x`` has row ``y`` and column ``x``); anything else (several images, a crop) states
    nothing, and the layer asks for ``grid=``."""
    if not isinstance(ids, torch.Tensor) or ids.ndim not in (2, 3) or ids.shape[-1] < 3:
        return None
    rows_cols = (ids[0] if ids.ndim == 3 else ids)[:, 1:3].tolist()  # (L, 2); plain Python from here
    top, left = min(r for r, _ in rows_cols), min(c for _, c in rows_cols)
    h = int(max(r for r, _ in rows_cols) - top) + 1
    w = int(max(c for _, c in rows_cols) - left) + 1
    expected = [[top + i // w, left + i % w] for i in range(len(rows_cols))]
    if h * w != len(rows_cols) or rows_cols != expected:
        return None
    where = f"`{name}`" if name else "the model"
    return StatedGrid((h, w), f"the image ids passed to {where}", special="text")


def _text(pair: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(p) for p in pair)
