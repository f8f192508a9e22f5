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

from .engine.capture import Capture, capture
from .engine.grid import TokenLayout, cell_at, cell_box
from .engine.layer import AttentionLayer, LayerList, Row, Verification

if TYPE_CHECKING:
    from .models import BundledModel

__version__ = "0.1.0"

__all__ = [
    "AttentionLayer",
    "Capture",
    "LayerList",
    "Row",
    "TokenLayout",
    "Verification",
    "capture",
    "cell_at",
    "cell_box",
    "launch",
    "load_model",
]


def load_model(name: str, pretrained: bool = True) -> BundledModel:
    """A bundled model, ready to run (``pretrained=False``: its untrained twin). Imports diffusers."""
    from .models import load_model as _load

    return _load(name, pretrained=pretrained)


def launch(model: str | Any = "ddpm-faces", **launch_kwargs: Any) -> Any:
    """Open the web app (imports gradio) on a bundled model's name, or on your own model wrapped in a
    :class:`~spatial_attn.models.BundledModel` subclass that says how an image becomes its input."""
    from .app.blocks import launch as _launch

    return _launch(model, **launch_kwargs)
