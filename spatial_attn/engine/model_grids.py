"""Token grids a model states while it runs, read as its modules are entered.

A sequence of ``count`` tokens fits many grids once special tokens (CLS, registers, text) are
allowed: 53 tokens are 7x7 + 4 or 6x6 + 17. The model knows which, and says it on the way: its
patch embedding turns an ``Hi x Wi`` image into an ``Hi/p x Wi/p`` map, and a packed sequence
comes with the ids of its image tokens (Flux's ``img_ids``). :func:`stated_grids` reads those
statements from one module call; the capture keeps them for the forward and lays tokens out on
them before any guess (:func:`spatial_attn.engine.grid.infer_layout`).
"""

from __future__ import annotations

import functools
import inspect
import threading

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .grid import Grid, StatedGrid, StatedQueries, as_grid, numbered

#: Forward arguments that carry the ids of packed image tokens: ``(L, 3)`` rows of
#: ``(frame, row, column)`` (diffusers' Flux; ``(B, L, 3)`` in its older releases).
_ID_ARGUMENTS = ("img_ids",)

#: Parameters of ``(1, n, C)`` tokens a module appends after the patches it embeds (YOLOS' detection
#: tokens: transformers' ``detection_tokens``, the original code's ``det_token``).
_SUFFIX_TOKENS = {"detection_tokens": "detection", "det_token": "detection"}

#: Learned queries a model holds, as an ``nn.Embedding`` or a ``(1,) n x C`` parameter: DETR and its
#: descendants (``query_position_embeddings``, the original ``query_embed``), BLIP-2's Q-Former
#: (``query_tokens``), Perceiver (``latents``).
_QUERIES = ("query_position_embeddings", "query_embed", "query_tokens", "latents")

Statement = StatedGrid | StatedQueries


def stated_grids(name: str, module: nn.Module, image_hw: Grid | None, kwargs: dict) -> list[Statement]:
    """The grids ``module`` states by being called (usually none): ``image_hw`` is ``(H, W)`` of its
    first tensor argument when that is 4D (the capture reads it once per call), ``kwargs`` its
    keyword arguments. Also the learned queries it holds (:class:`StatedQueries`)."""
    said = [_patch_grid(name, module, image_hw), _queries(name, module)]
    said += [_ids_grid(name, kwargs[key]) for key in _ID_ARGUMENTS if key in kwargs]
    return [s for s in said if s is not None]


def may_state(module: nn.Module) -> bool:
    """Whether :func:`stated_grids` can ever find something in ``module``'s calls, decided once when
    the capture's hooks are made, so that the ~90% of modules that never state a grid cost nothing
    per call: a strided convolution or an adaptive pooling, a module with ``patch_size``, appended
    tokens or learned queries, or one whose forward takes image ids (or any keyword)."""
    if isinstance(module, nn.Conv2d):
        return max(module.stride) > 1
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return True
    if "patch_size" in vars(module) or _suffix(module) or _queries("", module) is not None:
        return True
    return _takes_ids(type(module))


@functools.cache
def _takes_ids(cls: type[nn.Module]) -> bool:
    """Whether ``cls.forward`` can be passed one of :data:`_ID_ARGUMENTS` (by name, or as ``**kwargs``)."""
    try:
        params = inspect.signature(cls.forward).parameters.values()
    except (TypeError, ValueError):
        return True  # unreadable: keep asking at every call
    return any(p.name in _ID_ARGUMENTS or p.kind is p.VAR_KEYWORD for p in params)


def _patch_grid(name: str, module: nn.Module, image_hw: Grid | None) -> StatedGrid | None:
    """The output grid of a strided convolution, of an adaptive pooling (PVTv2's linear mode pools
    its keys to 7x7), or of a module with a ``patch_size`` and no strided convolution of its own
    (RADIO's linear patch generator) called on a 4D image. A ``patch_size`` is a kernel where a
    convolution does the striding (PVTv2's overlapping embedding: kernel 3, stride 2): then the
    convolution states the grid. A module that appends tokens after the patches it embeds (YOLOS)
    states its grid with them."""
    if image_hw is None:
        return None
    hi, wi = image_hw
    if isinstance(module, nn.Conv2d) and max(module.stride) > 1:
        grid = _conv_out(module, (hi, wi))
        return StatedGrid(grid, f"the output of `{name}` (a stride-{_text(module.stride)} convolution)")
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = module.output_size
        h, w = (size, size) if isinstance(size, int) else size
        return StatedGrid((h or hi, w or wi), f"the output of `{name}` (adaptive pooling)")
    suffix = _suffix(module)
    patch = as_grid(vars(module).get("patch_size"))  # not getattr: diffusers warns on config keys
    if not suffix and patch is None:
        return None  # the common case, decided without walking the module's children
    conv = _strided_conv(module)
    if suffix and conv is not None:
        return StatedGrid(_conv_out(conv, (hi, wi)), f"the patches `{name}` embeds", suffix=suffix)
    if patch is not None and min(patch) > 0 and conv is None:
        grid = (hi // patch[0], wi // patch[1])
        return StatedGrid(grid, f"`{name}`: a {hi}x{wi} input in {_text(patch)} patches")
    return None


def _strided_conv(module: nn.Module) -> nn.Conv2d | None:
    """The first strided convolution inside ``module`` (its patch embedding's), if any."""
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1), None)


def _suffix(module: nn.Module) -> tuple[str, ...]:
    """Labels of the tokens ``module`` appends after its patches: ``detection 0``, ..."""
    for attribute, kind in _SUFFIX_TOKENS.items():
        tokens = vars(module)["_parameters"].get(attribute)
        if tokens is not None and tokens.ndim == 3:
            return numbered(kind, tokens.shape[1])
    return ()


def _queries(name: str, module: nn.Module) -> StatedQueries | None:
    """The learned queries ``module`` holds, if any (DETR's object queries, ...)."""
    for attribute in _QUERIES:
        held = vars(module)["_modules"].get(attribute, vars(module)["_parameters"].get(attribute))
        if isinstance(held, nn.Embedding):
            return StatedQueries(held.num_embeddings, f"`{name}.{attribute}`" if name else f"`{attribute}`")
        if isinstance(held, torch.Tensor) and held.ndim in (2, 3):
            return StatedQueries(held.shape[-2], f"`{name}.{attribute}`" if name else f"`{attribute}`")
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
    grid = _ids_shape(ids)
    if grid is None:
        return None
    where = f"`{name}`" if name else "the model"
    return StatedGrid(grid, f"the image ids passed to {where}", special="text")


_IDS_READ: WeakIdKeyDictionary = WeakIdKeyDictionary()  # ids tensor -> (its version, its grid or None)
_IDS_LOCK = threading.Lock()


def _ids_shape(ids: torch.Tensor) -> Grid | None:
    """``(H, W)`` of row-major image ids, or None. Reading them is a host read (a device sync on a
    GPU), so each ids tensor is read once: a pipeline passes the same ids to every denoising step,
    and an in-place change to them (a new version) is read again."""
    version = None if ids.is_inference() else ids._version
    with _IDS_LOCK:
        seen = _IDS_READ.get(ids)
    if seen is not None and version is not None and seen[0] == version:
        return seen[1]
    rows_cols = (ids[0] if ids.ndim == 3 else ids)[:, 1:3].tolist()  # (L, 2); plain Python from here
    top, left = min(r for r, _ in rows_cols), min(c for _, c in rows_cols)
    h = int(max(r for r, _ in rows_cols) - top) + 1
    w = int(max(c for _, c in rows_cols) - left) + 1
    expected = [[top + i // w, left + i % w] for i in range(len(rows_cols))]
    grid = (h, w) if h * w == len(rows_cols) and rows_cols == expected else None
    if version is not None:
        with _IDS_LOCK:
            _IDS_READ[ids] = (version, grid)
    return grid


def _text(pair: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(p) for p in pair)
