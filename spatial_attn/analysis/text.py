"""Where words land: a text-conditioned model's cross-attention read per prompt token.

In a cross-attention layer the queries are the image's cells and the keys are the prompt's tokens,
so a clicked pixel's row is a distribution over tokens (a bar chart), and a token's column, one
value per query cell, is a map of where that word lands in the image. Joint attention (SD3) keeps
the text among its keys as special tokens ``text i``: the same reading applies to that part of the
row. Both come from the captured queries and keys like any row; here they are named by token and the
prompt's padding is folded into one entry, so the chart shows the prompt that was typed. No UI code:
the prompt view draws these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..engine.layer import AttentionLayer, Head, _reduce_heads, _spatial

if TYPE_CHECKING:
    from PIL import Image

    from ..models import BundledModel


@dataclass(frozen=True)
class PromptTokens:
    """The prompt's tokens as the model's keys, one bar per run of equal neighbours: CLIP pads with
    its end token (and SD3 appends a T5 half, all zeros without T5), so padding is one bar."""

    names: tuple[str, ...]  # every text token, in key order
    runs: tuple[tuple[int, int], ...]  # (start, stop) of each bar's tokens

    @classmethod
    def of(cls, names: Sequence[str]) -> PromptTokens:
        names = tuple(names)
        starts = [i for i in range(len(names)) if i == 0 or names[i] != names[i - 1]]
        return cls(names, tuple(zip(starts, [*starts[1:], len(names)], strict=True)))

    def labels(self) -> list[str]:
        """One label per bar: the token made readable, ``×n`` for a run, unique (a repeated word gets
        its position)."""
        labels: list[str] = []
        for a, b in self.runs:
            label = _readable(self.names[a]) + (f" ×{b - a}" if b - a > 1 else "")
            labels.append(label if label not in labels else f"{label} @{a}")
        return labels

    def fold(self, row: np.ndarray) -> np.ndarray:
        """A row over the text tokens -> one value per bar (a run's mass summed)."""
        return np.array([row[a:b].sum() for a, b in self.runs])

    def keys(self, label_index: int) -> slice:
        """The text tokens behind bar ``label_index``."""
        return slice(*self.runs[label_index])


def text_keys(layer: AttentionLayer, count: int) -> np.ndarray | None:
    """Where a prompt of ``count`` tokens sits among ``layer``'s keys, or None if it is not there.

    Cross-attention: the keys are the text, in order. Joint attention (SD3, MMDiT): image keys on the
    grid and the text as special keys labelled ``text 0``, ``text 1``, ...
    """
    if layer.query_grid is None:
        return None
    if layer.key_grid is None:
        return np.arange(count) if layer.keys.count == count else None
    where = {label: i for label, i in zip(layer.keys.labels, layer.keys.special_indices(), strict=True)}
    wanted = [f"text {i}" for i in range(count)]
    if len([label for label in where if label.startswith("text ")]) != count or not all(
        w in where for w in wanted
    ):
        return None
    return np.array([where[w] for w in wanted])


def text_layers(layers: Sequence[AttentionLayer], tokens: int) -> list[AttentionLayer]:
    """The layers whose queries are a grid and whose keys include the ``tokens`` prompt tokens."""
    return [layer for layer in layers if text_keys(layer, tokens) is not None]


def token_bars(
    layer: AttentionLayer, cell: tuple[int, int], prompt: PromptTokens, head: Head = None
) -> np.ndarray:
    """How much of query cell ``(y, x)``'s attention goes to each bar's tokens (all of it in
    cross-attention; in joint attention the rest goes to the image)."""
    keys = text_keys(layer, len(prompt.names))
    return prompt.fold(layer.token_probs(*cell, head=head)[keys])


def token_map(
    layer: AttentionLayer, prompt: PromptTokens, label_index: int, head: Head = None, batch: int = 0
) -> np.ndarray:
    """Where bar ``label_index``'s tokens are looked at: their columns summed, on the query grid.

    The column of one key is ``P[:, key]`` for every query; the per-query normalisers come from the
    captured scores, so the ``N x N'`` matrix is never built.
    """
    keys = text_keys(layer, len(prompt.names))[prompt.keys(label_index)]
    b = layer._batch(batch)
    cols = sum(layer.scores.column(b, int(j)) for j in keys)  # (heads, N)
    return _spatial(_reduce_heads(cols, layer._head(head)), layer.queries)


def _readable(token: str) -> str:
    """A tokenizer's piece without its word-boundary marks (CLIP's ``</w>``, GPT's ``Ġ``, T5's ``▁``)."""
    return token.replace("</w>", "").replace("Ġ", "").replace("▁", "") or token


def token_across(
    model: BundledModel,
    image: Image.Image,
    label: str,
    timesteps: Sequence[int],
    seed: int = 0,
    head: Head = None,
) -> list[tuple[int, list[tuple[AttentionLayer, np.ndarray]]]]:
    """Where the prompt's bar ``label`` lands at each of ``timesteps``: per timestep, every text layer
    and its map (DAAM sums these over layers and steps; here each stays apart).

    The model (holding the prompt: ``model.with_prompt(...)``) is re-run once per timestep on the same
    clean image with the same noise seed, so only t changes.
    """
    from .explore import Exploration

    frames = []
    for t in timesteps:
        ex = Exploration(model, image, timestep=int(t), seed=seed)
        prompt = PromptTokens.of(ex.prepared.tokens)
        labels = prompt.labels()
        if label not in labels:
            raise ValueError(f"token {label!r} is not in the prompt; choose one of {labels}")
        chosen = labels.index(label)
        layers = text_layers(ex.layers, len(prompt.names))
        frames.append((int(t), [(layer, token_map(layer, prompt, chosen, head)) for layer in layers]))
    return frames
