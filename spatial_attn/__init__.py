"""spatial-attn: click a pixel of an image model's input and see where it attends.

A ``C x H x W`` feature map is flattened into ``N = H*W`` tokens (token ``i = y*W + x`` is pixel
``(y, x)``); row ``i`` of an attention layer's softmax says where that pixel looks::

    import spatial_attn as sa
    with sa.capture(model) as cap:
        model(x)
    cap.layers[0].row(y, x)     # a map shaped like the layer's key grid

Importing this package loads only torch and numpy: no gradio, matplotlib or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import engine
from .engine import *  # noqa: F403 - the engine's public names are the package's

if TYPE_CHECKING:
    from .models import BundledModel

__version__ = "0.1.0"

__all__ = [*engine.__all__, "launch", "load_model", "show"]  # the engine's names, and three that open more


def load_model(name: str, pretrained: bool = True) -> BundledModel:
    """A bundled model, ready to run (``pretrained=False``: its untrained twin). Imports diffusers."""
    from .models import load_model as _load

    return _load(name, pretrained=pretrained)


def launch(model: str | Any = "ddpm-faces", **launch_kwargs: Any) -> Any:
    """Open the web app (imports gradio) on a bundled model's name, or on your own model wrapped in a
    :class:`~spatial_attn.models.BundledModel` subclass that says how an image becomes its input."""
    from .app.blocks import launch as _launch

    return _launch(model, **launch_kwargs)


def show(run: Any, image: Any = None, **options: Any) -> Any:
    """The hover panels, inline in a notebook (``_repr_html_``: a page with no server, as the export's
    ``index.html``): every layer's map for the pixel under the mouse.

    ``run`` is a model run (an :class:`~spatial_attn.analysis.explore.Exploration`), a bundled model
    (run here on ``image``, with ``timestep=`` and ``seed=``), or a capture (``sa.capture``'s result,
    or its layers) with ``image`` the ``(H, W, 3)`` picture its forward saw. Options: ``pixel=(y, x)``
    (the one shown when the mouse is elsewhere), ``head``, ``mode`` ("row" / "column"), ``scale``,
    ``cmap``, ``height`` (px). ``.save(path)`` writes the page. Loads neither gradio nor diffusers.
    """
    from .analysis.standalone import show as _show

    return _show(run, image, **options)
