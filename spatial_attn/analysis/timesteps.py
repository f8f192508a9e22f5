"""One pixel's row in one layer across diffusion timesteps (same image, same noise seed).

A DDPM's attention changes with the noise level: at large t the input is mostly noise and the rows
are diffuse, near t = 0 they lock onto the image's structure. :func:`rows_across` re-runs the model
once per timestep on the same clean image with the same noise seed, so only t changes, and returns
each run's picture (x_t) and the clicked pixel's row; :func:`spread` picks evenly spaced timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..engine.grid import cell_at

if TYPE_CHECKING:
    from ..models import BundledModel


@dataclass(frozen=True)
class Frame:
    """One timestep: the model's input, the clicked pixel's row in the layer, and where it was."""

    timestep: int
    picture: np.ndarray  # (H, W, 3) uint8: x_t
    values: np.ndarray  # the row on the key grid
    tokens: int  # length of the whole row (special tokens included), for the "× uniform" scale
    cell: tuple[int, int]  # the query cell on ``grid``
    grid: tuple[int, int]
    entropy: float  # bits


def spread(count: int, num_timesteps: int) -> list[int]:
    """``count`` timesteps evenly spaced from 0 to the last one, both included."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return sorted({round(t) for t in np.linspace(0, num_timesteps - 1, count)})


def rows_across(
    model: BundledModel,
    image: Image.Image,
    layer_name: str,
    point: tuple[int, int],
    timesteps: list[int],
    seed: int = 0,
    head: int | str | None = None,
) -> list[Frame]:
    """The row of model-input pixel ``point`` in layer ``layer_name`` at each of ``timesteps``."""
    from .explore import Exploration

    if not model.num_timesteps:
        raise ValueError(f"{model.name} has no timesteps: only diffusion models do")
    frames = []
    for t in timesteps:
        ex = Exploration(model, image, timestep=int(t), seed=seed)
        layer = next((la for la in ex.layers if la.name == layer_name), None)
        if layer is None:
            raise ValueError(
                f"no layer {layer_name!r}; the model has {', '.join(la.name for la in ex.layers)}"
            )
        cell = cell_at(point, ex.image_hw, layer.query_grid)
        row = layer.attend(*cell, head=head)
        frames.append(
            Frame(int(t), ex.input, row.values, layer.keys.count, cell, layer.query_grid, row.entropy)
        )
    return frames
