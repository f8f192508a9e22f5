"""What every view of the app shares: the models loaded once, one user's session, a checked run
request, and how a view follows the pinned pixel. It sits below ``blocks`` and the views, so a view
never imports the module that composes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..analysis.explore import Exploration
from ..engine.capture import keep_hooks
from . import serving
from .serving import Tickets

UNTRAINED = " (untrained)"


class Library:
    """The bundled models and their untrained twins, loaded once; afterwards only read.

    Each model's capture hooks are registered once, here, and kept for the model's life
    (:func:`~spatial_attn.engine.capture.keep_hooks`): a run then only joins and leaves them, instead
    of adding and removing a hook pair on every module while other users' runs use the same model.
    """

    def __init__(self, names: list[str] | None = None, placement: Any = None) -> None:
        """``placement`` (:class:`~spatial_attn.models.placement.Placement`): where the bundled models
        run (default CPU float32)."""
        from ..models import available_models, load_model

        where = {} if placement is None else {"device": placement.device, "dtype": placement.dtype}
        self.models = {}
        self._kept: list[Any] = []
        for name in names or available_models():
            try:
                self.models[name] = load_model(name, pretrained=True, **where)
                self.models[name + UNTRAINED] = load_model(name, pretrained=False, **where)
            except FileNotFoundError as missing:  # serve the others; say which one is absent
                warnings.warn(f"{name} is left out: {missing}", stacklevel=2)
        self._kept = [keep_hooks(model.module) for model in self.models.values()]
        self.judge = _judge(where)

    def add(self, model: Any) -> str:
        """Serve a user's own :class:`~spatial_attn.models.BundledModel` (listed first); its name."""
        self.models = {model.name: model, **self.models}
        self._kept.append(keep_hooks(model.module))
        return model.name

    def __getitem__(self, name: str) -> Any:
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(self.models)}")
        return self.models[name]

    def choices(self) -> list[str]:
        return list(self.models)


def _judge(where: dict) -> Any:
    """The judge of generated samples (``judge-faces``, the one ``spatial-attn eval`` scores them
    with), for the ablation tab's before / after verdicts. Not a model the app offers: it has no
    attention to click. None, with a warning, when its checkpoint is absent."""
    from ..models import JUDGE, load_model

    try:
        return load_model(JUDGE, pretrained=True, **where)
    except FileNotFoundError as missing:
        warnings.warn(f"samples are shown without a verdict: {missing}", stacklevel=3)
        return None


@dataclass
class Session:
    """One user's state: the current exploration, its source and the last click (a few hundred KB)."""

    exploration: Exploration
    source: Image.Image | None  # the clean image; None when the model generated it from the seed
    note: str
    point: tuple[int, int] = (0, 0)  # (y, x) in model-input pixels: the click, updated in place
    tickets: Tickets = field(default_factory=Tickets)  # orders its clicks; retired when replaced
    fit: str = "crop"  # how an image that is not square was made square (models.bundle.FITS)


def checked_run(library: Library, model: Any, timestep: Any, seed: Any) -> tuple[str, int | None, int]:
    """The model's name, the timestep (None for a model without one) and the seed, each checked with a
    message a person can read: a timestep of -0.5 or a seed of 2^64 is refused, not truncated."""
    name = serving.one_of(model, "model", library.choices())
    steps = library[name].num_timesteps
    t = serving.whole(timestep, "timestep", 0, steps - 1) if steps else None
    if not steps and timestep is not None:  # a model without timesteps ignores it, but not garbage
        serving.number(timestep, "timestep (ignored by this model)")
    return name, t, serving.whole(seed, "seed", 0, serving.SEED_MAX)


@dataclass(frozen=True)
class Follower:
    """A view that follows the pinned pixel (the mechanics, compare and prompt tabs). The event that
    draws the panels for a click or a display change draws it too, so a click is one event however
    many views follow it (each event costs the server its own handling, and a crowd of sessions
    clicking waits on the sum). ``draw(session, view, *inputs)`` returns one value per output; a tab
    never opened returns the "" it shows rather than ``gr.skip()``, which Gradio 6 answers by building
    a new component per output (most of a click's server time, measured with py-spy)."""

    inputs: list[Any]
    outputs: list[Any]
    draw: Callable[..., tuple]
