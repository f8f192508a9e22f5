"""``sa.capture(model)``: record every attention call of one forward, exactly, and leave no trace.

One :class:`Capture` owns every hook it makes (pytorch-grad-cam's lesson: leaks come from hooks
registered anywhere else). Inside ``with``:

* every module but torch's own leaves (:data:`_INERT`) gets a pre- and post-hook that keep a stack
  of running modules, so a call can be named after the module that made it and find the feature map
  it was flattened from;
* modules that an adapter recognises (SAGAN, diffusers, MultiheadAttention, ...) are *claimed*: their
  adapter reads queries and keys from the call, and while a claimed module runs nothing else inside it
  is recorded, so one attention call yields exactly one layer;
* a thread-local torch function mode watches ``scaled_dot_product_attention`` and ``softmax`` outside
  claimed modules. It is lifted while a claimed module runs, because torch's fused fast paths
  (``TransformerEncoderLayer`` in eval) turn themselves off under a mode, and capturing must not
  change a single bit of the model's output.

Many users share one model (the web app serves each model to everyone), so hooks are not the
capture's own: one :class:`_ModelHooks` per model registers them when the model's first capture
starts and removes them when its last one ends, and each call is dispatched to the captures of the
thread that made it (never during a backward pass: gradient checkpointing re-runs forwards there).
Why not a set of hooks per capture: torch reads a module's hooks and then, separately, which of
them take keyword arguments, so a hook added or removed by another thread in between is called
with the wrong arguments (``_exit() missing 'output'``). Here a capture's hooks cannot change while
its own forward runs, and a forward of another thread that meets a registration in flight calls a
hook that accepts both forms and has nothing to do. Hooks hold the captures weakly: a capture that
is dropped without ``__exit__`` releases itself.
"""

from __future__ import annotations

import contextlib
import fnmatch
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode, _pop_mode, _push_mode

from .adapters import FUNCTION_ADAPTERS, MODULE_ADAPTERS
from .adapters.base import Call, Declined, Extracted, FunctionAdapter, ModuleAdapter, keep
from .axes import check_heads, check_token_axes, per_sequence, stated_heads, token_order_problem
from .grid import (
    Grid,
    StatedGrid,
    TokenLayout,
    grid_layout,
    infer_layout,
    pooled_grid,
    single_query_layout,
    text_layout,
)
from .layer import AttentionLayer, LayerList, QKScores, StoredProbs, Verification
from .model_grids import Statement, may_state, stated_grids
from .windows import WindowLayout, may_window, read_window

GridOverride = Grid | dict[str, Grid] | None


class _Owner(NamedTuple):
    """What the hooks know of one module of the model, decided once when they are made."""

    name: str
    adapter: ModuleAdapter | None  # the adapter that claims its calls, if any
    states: bool  # whether it can state a grid or learned queries (model_grids.may_state)
    windowed: bool  # whether it can partition its input into windows (windows.may_window)
    reorders: str | None  # why tokens made inside it are not row-major (axes.token_order_problem)


#: Torch's own leaf modules, whose forward is one or two ops and never attention: they get no hook
#: (and so no frame). Nothing is lost: a frame names a functional attention call after the module
#: whose code made it, which such a leaf cannot be; a grid is read from the modules that state one
#: (a strided convolution is hooked for that); and a 4D feature map reaches the attention module
#: that flattens it as that module's own input. Exact types only: a subclass may override forward.
_INERT = frozenset(
    {
        nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
        nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.RMSNorm,
        nn.InstanceNorm1d, nn.InstanceNorm2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
        nn.GELU, nn.SiLU, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.Hardswish,
        nn.Embedding, nn.Flatten, nn.Unflatten, nn.Upsample, nn.AvgPool2d, nn.MaxPool2d,
    }
)  # fmt: skip


@dataclass
class _Frame:
    """A module that is running right now."""

    name: str
    module: nn.Module
    map_hw: Grid | None  # (H, W) of its input feature map, if its first tensor input is 4D
    call: Call | None = None  # set when this module is a claimed attention call
    inputs: tuple[tuple, dict] = ((), {})  # its forward's arguments (a windowed block's partition)


class Capture:
    """Records the attention layers of the forwards run inside its ``with`` block.

    Use :func:`capture` to make one. After the block, ``layers`` holds one
    :class:`~spatial_attn.engine.layer.AttentionLayer` per attention call, in call order, and ``problems``
    lists calls that were seen but could not be read (with the reason).
    """

    def __init__(
        self,
        model: nn.Module,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        grid: GridOverride = None,
    ) -> None:
        self.model = model
        self.layers = LayerList()
        self.problems: list[str] = []
        self._include = _patterns(include)
        self._exclude = _patterns(exclude)
        self._grid = grid
        self._hooks: _ModelHooks | None = None
        self._owners: dict[nn.Module, _Owner] = {}
        self._functions: list[FunctionAdapter] = []
        self._mode: _Watch | None = None
        self._lifted = False
        self._thread: int | None = None
        self._frames: list[_Frame] = []
        self._claim: _Frame | None = None
        self._input: tuple[int, Grid | None] | None = None  # (batch, (H, W)) of the outermost input
        self._stated: list[Statement] = []  # grids and queries the model stated in this forward
        self._counts: dict[str, int] = {}

    # -- lifetime -------------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if self._thread is not None:
            raise RuntimeError("this capture is already active; make a new one with sa.capture()")
        self._thread = threading.get_ident()
        try:
            self._register()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # a last resort, maybe during shutdown: never raise
            self.release()

    def release(self) -> None:
        """Leave the model's hooks (the last capture removes them) and pop the function mode. Safe to
        call twice, and from ``__del__``."""
        if self._hooks is not None:
            self._hooks.leave(self)
            self._hooks = None
        if self._mode is not None and threading.get_ident() == self._thread:
            if self._lifted:
                self._lifted = False
            elif _get_current_function_mode() is self._mode:
                _pop_mode()
            else:
                warnings.warn("another torch function mode was left above the capture's", stacklevel=2)
        self._mode = None
        self._frames.clear()
        self._claim = None

    def _register(self) -> None:
        self._hooks = _ModelHooks.join(self.model, self)
        self._owners = self._hooks.owners
        self._functions = [cls() for cls in FUNCTION_ADAPTERS]
        watched = frozenset().union(*(f.functions for f in self._functions))
        self._mode = _Watch(weakref.ref(self), watched)
        _push_mode(self._mode)

    # -- events from the hooks ------------------------------------------------------------------
    def _mine(self) -> bool:
        """The function mode acts for the capturing thread only, and never while autograd runs a
        backward."""
        return threading.get_ident() == self._thread and _forward_pass()

    def _on_enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name, adapter, states, _, _ = self._owners[module]
        first = _first_tensor(args, kwargs)
        map_hw = (first.shape[-2], first.shape[-1]) if first is not None and first.ndim == 4 else None
        frame = _Frame(name, module, map_hw, inputs=(args, kwargs))
        if not self._frames:
            if first is not None and first.ndim >= 1:
                self._input = (first.shape[0], map_hw)
            self._stated = []
        if states:
            self._stated += stated_grids(name, module, map_hw, kwargs)
        self._frames.append(frame)
        if adapter is not None and self._claim is None:
            frame.call = Call(module, args, kwargs)
            self._claim = frame
            self._lift_mode()

    def _on_exit(self, module: nn.Module, output: Any) -> None:
        while self._frames:
            frame = self._frames.pop()
            if frame.module is module:
                break
        else:
            return
        if frame is not self._claim:
            return
        try:  # the adapter runs while the claim holds, so its own math is not seen as attention
            if output is not None:  # None: the forward raised, and the exception is on its way
                call, adapter = frame.call, self._owners[module].adapter
                assert call is not None and adapter is not None
                call.output = output
                with _own_math():
                    self._record(frame.name, adapter.family, lambda: adapter.extract(call))
        finally:
            self._claim = None
            self._restore_mode()

    def _on_tap(self, owner: nn.Module, role: str, tensor: torch.Tensor) -> None:
        if self._claim is not None and self._claim.module is owner and self._claim.call is not None:
            self._claim.call.taps[role] = keep(tensor)

    def _on_function(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        if self._claim is not None:
            return
        batch = self._input[0] if self._input else None
        for adapter in self._functions:
            if func in adapter.functions:
                try:
                    extracted = adapter.on_call(func, args, kwargs, out, batch)
                except Declined as why:
                    name = self._context_name() or adapter.family
                    self._problem(f"{name} ({adapter.family}): not shown: {why}")
                    continue
                if extracted is not None:
                    with _own_math():
                        self._record(self._context_name(), adapter.family, lambda e=extracted: e)

    # -- turning an extraction into a layer -----------------------------------------------------
    def _record(self, base: str, family: str, extract: Callable[[], Extracted]) -> None:
        """Make a layer, unless its name is filtered out. A call an adapter cannot read becomes a
        problem report, never a crash of the user's forward. Excluded modules are still claimed, so
        the attention inside them does not resurface as another layer."""
        try:
            extracted = extract()
            base = base + extracted.name_suffix if base else family
            if not self._wanted(base):
                return
            check_token_axes(extracted, self._token_counts())
            problem = next((r for f in self._frames if (r := self._owners[f.module].reorders)), None)
            if problem is not None:
                raise Declined(problem)
            window = self._window(extracted)
            if window is not None:  # one window per batch entry: placed on the grid below
                queries = keys = window.local_layout()
            else:
                check_heads(extracted, stated_heads(f.module for f in reversed(self._frames)))
                queries, keys = self._layouts(base, extracted)
                images = self._input[0] if self._input and self._input[1] else None  # a 4D input: images
                queries, keys = (per_sequence(t, extracted, images) for t in (queries, keys))
            if extracted.require_grid and queries.grid is None and not queries.labels:  # no learned queries
                raise Declined(f"its {queries.count} tokens fit no grid ({queries.note})")
            name = self._unique(base)
            scores = (
                StoredProbs(extracted.probs)
                if extracted.probs is not None
                else QKScores(extracted.q, extracted.k, extracted.mask, extracted.causal, extracted.scale)
            )
            layer = AttentionLayer(name, family, scores, queries, keys)
            layer.verification = (
                extracted.verify(layer) if extracted.verify else Verification(None, None, "no output")
            )
            if window is not None:
                layer = window.place(layer)
        except Declined as why:
            self._problem(f"{base or family} ({family}): not shown: {why}")
            return
        except Exception as error:
            self._problem(f"{base or family} ({family}): could not be read: {error}")
            return
        self.layers.append(layer)  # verified when first asked: AttentionLayer.verification warns

    def _problem(self, message: str) -> None:
        """A call seen and not shown: said in ``problems`` and warned, never dropped silently."""
        self.problems.append(message)
        warnings.warn(message, stacklevel=3)

    def _token_counts(self) -> list[int]:
        """Token counts of the maps the model is running on now: the innermost feature map and the
        grid it stated last."""
        hints = [f.map_hw for f in reversed(self._frames) if f.map_hw is not None][:1]
        grids = [s.grid for s in self._stated if isinstance(s, StatedGrid)][-1:]
        return [h * w for h, w in hints + grids]

    def _layouts(self, name: str, ex: Extracted) -> tuple[TokenLayout, TokenLayout]:
        shape = ex.shape
        n, m = shape[2] - len(ex.query_prefix) - len(ex.query_suffix), shape[3]  # n: the map's queries
        override = self._override(name)
        hints = [f.map_hw for f in reversed(self._frames) if f.map_hw is not None]
        infer = partial(
            infer_layout,
            hints=hints,
            input_hw=self._input[1] if self._input else None,
            override=override,
            stated=self._stated,
        )
        if ex.query_grid is not None and override is None:
            queries = grid_layout(ex.query_grid, n, "grid from the layer's feature map")
        elif n == 1 < m:  # class attention, a pooling probe
            queries = single_query_layout(m)
        else:
            queries = infer(n)
        specials = len(ex.key_prefix) + len(ex.key_suffix)
        kind = ex.keys
        if kind == "auto":
            kind = "self" if m == n else "pooled"
        if kind == "self" and m - specials == n:
            base = queries
        elif kind == "pooled":
            base = _key_layout(queries, m - specials, ex.key_grid, infer)
        else:
            base = text_layout(m - specials)
        keys = base.with_special(ex.key_prefix, ex.key_suffix)
        return queries.with_special(ex.query_prefix, ex.query_suffix), keys

    def _window(self, ex: Extracted) -> WindowLayout | None:
        """The window partition of the innermost running block that made this call's sequences."""
        shape = ex.shape
        for frame in reversed(self._frames):
            if not self._owners[frame.module].windowed:
                continue
            window = read_window(frame.module, *frame.inputs, frame.name)
            if window is not None and window.fits(shape):
                return window
        return None

    def _override(self, name: str) -> Grid | None:
        if isinstance(self._grid, dict):
            return next((g for pat, g in self._grid.items() if fnmatch.fnmatchcase(name, pat)), None)
        return self._grid

    def _context_name(self) -> str:
        """The module a functional call belongs to: the innermost running one, skipping a bare
        ``nn.Softmax`` (the attention module is its parent)."""
        for frame in reversed(self._frames):
            if not isinstance(frame.module, nn.Softmax):
                return frame.name
        return ""

    def _unique(self, name: str) -> str:
        """``name`` for a module's first call, ``name#2``, ``name#3``, ... for later ones."""
        self._counts[name] = self._counts.get(name, 0) + 1
        count = self._counts[name]
        return name if count == 1 else f"{name}#{count}"

    def _wanted(self, name: str) -> bool:
        if self._include and not any(fnmatch.fnmatchcase(name, p) for p in self._include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self._exclude)

    # -- the function mode is lifted inside claimed modules (see module docstring) -------------
    def _lift_mode(self) -> None:
        if self._mode is not None and _get_current_function_mode() is self._mode:
            _pop_mode()
            self._lifted = True

    def _restore_mode(self) -> None:
        if self._lifted and self._mode is not None:
            _push_mode(self._mode)
            self._lifted = False


def capture(
    model: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    grid: GridOverride = None,
) -> Capture:
    """Capture the attention of every forward run inside ``with sa.capture(model) as cap:``.

    ``include``/``exclude`` are glob patterns on layer names (``"up_blocks.*"``). ``grid`` overrides
    grid inference: an ``(H, W)`` for every layer whose tokens it fits, or ``{pattern: (H, W)}``.
    """
    return Capture(model, include=include, exclude=exclude, grid=grid)


class _Watch(TorchFunctionMode):
    """The thread-local function mode: passes every call through, reports the watched ones."""

    def __init__(self, ref: weakref.ref[Capture], functions: frozenset) -> None:
        super().__init__()
        self._ref = ref
        self._functions = functions

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self._functions:
            cap = self._ref()
            if cap is not None and cap._mine() and not _OWN_MATH.depth:
                cap._on_function(func, args, kwargs, out)
        return out


class _ModelHooks:
    """The one owner of the hooks on one model, shared by every capture active on it.

    Registered when the model's first capture enters and removed when its last one leaves (see the
    module docstring for why they are not per capture); in between each call is handed to the
    captures of the calling thread. Captures are held weakly, so a forgotten one can still be
    collected, and its ``__del__`` leaves.
    """

    _lock = threading.RLock()  # re-entrant: a capture collected inside join() leaves from there
    _active: ClassVar[dict[int, _ModelHooks]] = {}  # id(model) -> its hooks, only while in use

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.pins = 0  # keep_hooks() holders: while any, the hooks stay when the last capture leaves
        self.owners: dict[nn.Module, _Owner] = {}
        self._captures: dict[int, list[weakref.ref[Capture]]] = {}  # thread id -> its captures
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        ref = weakref.ref(self)
        adapters = [cls() for cls in MODULE_ADAPTERS]
        for name, module in model.named_modules():
            if type(module) in _INERT and module is not model and not may_state(module):
                continue  # see _INERT: its calls need no frame, and its ops no watching
            adapter = next((a for a in adapters if a.matches(module)), None)
            self.owners[module] = _Owner(
                name, adapter, may_state(module), may_window(module), token_order_problem(module)
            )
            self._handles += [
                module.register_forward_pre_hook(partial(_enter, ref, module), with_kwargs=True),
                module.register_forward_hook(partial(_exit, ref, module), with_kwargs=True, always_call=True),
            ]
            for role, (sub, where) in (adapter.taps(module) if adapter else {}).items():
                self._handles.append(_tap(sub, where, partial(_on_tap, ref, module, role)))

    @classmethod
    def join(cls, model: nn.Module, capture: Capture) -> _ModelHooks:
        """The model's hooks, registered now if no capture is using them; ``capture`` (entered on
        this thread) receives this thread's calls from now on."""
        with cls._lock:
            hooks = cls._active.get(id(model))
            if hooks is None:
                hooks = cls._active[id(model)] = cls(model)
            hooks._captures.setdefault(threading.get_ident(), []).append(weakref.ref(capture))
            return hooks

    def leave(self, capture: Capture) -> None:
        """Stop sending calls to ``capture`` (and to captures already collected); the last one to
        leave removes the hooks."""
        with self._lock:
            for thread, refs in list(self._captures.items()):
                refs[:] = [r for r in refs if r() is not None and r() is not capture]
                if not refs:
                    del self._captures[thread]
            self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """Remove the hooks once no capture uses them and nobody keeps them (call with the lock)."""
        if not self._captures and not self.pins and self._handles:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            del self._active[id(self.model)]

    def receivers(self) -> list[Capture]:
        """The captures of the calling thread (none during a backward pass)."""
        refs = self._captures.get(threading.get_ident())
        if not refs or not _forward_pass():
            return []
        return [cap for cap in (r() for r in refs) if cap is not None]


class KeptHooks:
    """What :func:`keep_hooks` returns: ``release()`` (or leaving its ``with``) lets them go."""

    def __init__(self, model: nn.Module) -> None:
        with _ModelHooks._lock:
            hooks = _ModelHooks._active.get(id(model))
            if hooks is None:
                hooks = _ModelHooks._active[id(model)] = _ModelHooks(model)
            hooks.pins += 1
        self._hooks: _ModelHooks | None = hooks

    def release(self) -> None:
        """Stop keeping the hooks; they go with the last capture (now, if none is active). Safe twice."""
        with _ModelHooks._lock:
            hooks, self._hooks = self._hooks, None
            if hooks is not None:
                hooks.pins -= 1
                hooks._remove_if_unused()

    def __enter__(self) -> KeptHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def keep_hooks(model: nn.Module) -> KeptHooks:
    """Register the capture's hooks on ``model`` now and keep them until released, instead of once
    per capture.

    A capture otherwise registers a pre- and post-hook on each module it hooks when it starts and
    removes them when it ends: 38 of a 12-block ViT's 124 modules, ~0.7 ms per capture (~2 ms when
    all were hooked), more than a small model's whole forward on a GPU (bench/bench_gpu.py). A server that
    captures the same models all day (the app) keeps them for the models' life; then no hook is
    ever added or removed while another thread runs the model, and captures only join and leave.
    With no capture active the hooks find no receiver and return (a plain forward pays two
    function calls per module).
    """
    return KeptHooks(model)


class _Depth(threading.local):
    depth = 0


_OWN_MATH = _Depth()  # > 0 while a capture of this thread reads a call: its math is not the model's


@contextlib.contextmanager
def _own_math() -> Iterator[None]:
    """Marks the library's own reading and verification of a call, so that another capture active
    on the same thread (nested captures) does not record it as the model's attention."""
    _OWN_MATH.depth += 1
    try:
        yield
    finally:
        _OWN_MATH.depth -= 1


def _forward_pass() -> bool:
    """False while autograd runs a backward (checkpointed forwards re-run there)."""
    return torch._C._current_graph_task_id() == -1


# Hook functions live at module level and reach the hooks' owner through a weak reference. Each
# accepts both of torch's calling conventions (with and without kwargs): a forward of another thread
# can meet a registration in flight and call it the other way, and then it has nothing to do.


def _enter(
    ref: weakref.ref[_ModelHooks], module: nn.Module, _: nn.Module, args: tuple, *kwargs: dict
) -> None:
    hooks = ref()
    receivers = hooks.receivers() if hooks is not None else ()
    if receivers:
        with torch._C.DisableTorchFunction():  # the bookkeeping's shape reads are not the model's ops
            for cap in receivers:
                cap._on_enter(module, args, kwargs[0] if kwargs else {})


def _exit(ref: weakref.ref[_ModelHooks], module: nn.Module, _: nn.Module, args: tuple, *rest: Any) -> None:
    hooks = ref()
    for cap in hooks.receivers() if hooks is not None else ():
        cap._on_exit(module, rest[-1])  # rest: (kwargs, output) or (output,)


def _on_tap(ref: weakref.ref[_ModelHooks], owner: nn.Module, role: str, tensor: torch.Tensor) -> None:
    hooks = ref()
    for cap in hooks.receivers() if hooks is not None else ():
        cap._on_tap(owner, role, tensor)


def _tap(sub: nn.Module, where: str, record: Callable[[torch.Tensor], None]) -> Any:
    """A hook on ``sub`` that records its first input or its output."""
    if where == "in":
        return sub.register_forward_pre_hook(lambda _m, args: record(args[0]))
    return sub.register_forward_hook(lambda _m, _a, out: record(out))


def _key_layout(
    queries: TokenLayout, count: int, stated: Grid | None, infer: Callable[..., TokenLayout]
) -> TokenLayout:
    """Keys that are not the queries: pooled from the query grid (BigGAN); on a grid the model
    stated (PVTv2's 7x7 adaptive pooling, the encoder's map under DETR's object queries); or, when
    there are more keys than queries (one class token or probe over the patches, LeViT's subsampled
    queries), on their own grid, found as a query grid is; otherwise not spatial."""
    if queries.grid is not None:
        key_grid = stated or pooled_grid(queries.grid, count)
        if key_grid is not None and key_grid[0] * key_grid[1] == count:
            return grid_layout(key_grid, count, "keys pooled from the query grid")
    own = infer(count, guess=count > queries.count)
    return own if own.grid is not None else text_layout(count)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)


def _patterns(p: str | Iterable[str] | None) -> list[str]:
    if p is None:
        return []
    return [p] if isinstance(p, str) else list(p)
