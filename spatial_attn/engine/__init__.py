"""The capture engine: hooks that record every attention call of a forward, and the layers they make.

``capture`` owns the hooks; each family's knowledge lives in one adapter (``adapters/``); a layer
(``layer``) turns kept queries and keys into rows, columns and statistics; ``grid``, ``windows`` and
``model_grids`` place tokens on the image. Nothing here imports the rest of the package, nor gradio,
matplotlib or diffusers.
"""

from .capture import Capture, KeptHooks, capture, keep_hooks
from .grid import TokenLayout, cell_at, cell_box
from .layer import AttentionLayer, LayerList, Row, Verification

__all__ = [
    "AttentionLayer",
    "Capture",
    "KeptHooks",
    "LayerList",
    "Row",
    "TokenLayout",
    "Verification",
    "capture",
    "cell_at",
    "cell_box",
    "keep_hooks",
]
