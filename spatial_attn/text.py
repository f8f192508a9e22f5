"""Where words land: a text-conditioned model's cross-attention read per prompt token.

In a cross-attention layer the queries are the image's cells and the keys are the prompt's tokens,
so a clicked pixel's row is a distribution over tokens (a bar chart), and a token's column, one
value per query cell, is a map of where that word lands in the image. Both come from the captured
queries and keys like any row; here they are named by token and the prompt's padding is folded into
one entry, so the chart shows the prompt that was typed. No UI code: the prompt view draws these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .layer import AttentionLayer, Head, _reduce_heads, _spatial


@dataclass(frozen=True)
class PromptTokens:
    """The prompt's tokens as the model's keys: ``shown`` of them by name, the rest padding."""

    names: tuple[str, ...]  # every key token, in order
    shown: int  # tokens 0 .. shown-1 are the prompt (start, words, end); the rest is padding

    @classmethod
    def of(cls, names: Sequence[str]) -> PromptTokens:
        """Padding is the run of tokens repeating the last one (CLIP pads with its end token)."""
        names = tuple(names)
        shown = len(names)
        while shown > 1 and names[shown - 1] == names[shown - 2]:
            shown -= 1
        return cls(names, shown)

    def labels(self) -> list[str]:
        """One label per bar: the shown tokens (made readable), then the padding if any."""
        words = [
            n.replace("</w>", "").replace("Ġ", "").replace("▁", "") or n for n in self.names[: self.shown]
        ]
        padding = len(self.names) - self.shown
        return words + ([f"padding ×{padding}"] if padding else [])

    def fold(self, row: np.ndarray) -> np.ndarray:
        """A row over every key token -> one value per label (the padding's mass summed)."""
        return np.append(row[: self.shown], row[self.shown :].sum()) if self.shown < len(row) else row

    def keys(self, label_index: int) -> slice:
        """The key tokens behind bar ``label_index`` (the padding bar: all of them)."""
        return slice(label_index, label_index + 1) if label_index < self.shown else slice(self.shown, None)


def text_layers(layers: Sequence[AttentionLayer], tokens: int) -> list[AttentionLayer]:
    """The cross-attention layers whose keys are the ``tokens`` prompt tokens and queries a grid."""
    return [
        layer
        for layer in layers
        if layer.query_grid is not None and layer.key_grid is None and layer.keys.count == tokens
    ]


def token_bars(
    layer: AttentionLayer, cell: tuple[int, int], prompt: PromptTokens, head: Head = None
) -> np.ndarray:
    """How query cell ``(y, x)`` spreads its attention over the prompt: one value per label, sum 1."""
    return prompt.fold(layer.token_probs(*cell, head=head))


def token_map(layer: AttentionLayer, keys: slice, head: Head = None, batch: int = 0) -> np.ndarray:
    """Where key tokens ``keys`` are looked at: their columns summed, on the query grid.

    The column of one key is ``P[:, key]`` for every query; the per-query normalisers come from the
    captured scores, so the ``N x N'`` matrix is never built (O(N N') for text's few keys).
    """
    b = layer._batch(batch)
    indices = range(layer.keys.count)[keys]
    cols = sum(layer.scores.column(b, j) for j in indices)  # (heads, N)
    return _spatial(_reduce_heads(cols, layer._head(head)), layer.queries)


def _readable(token: str) -> str:
    """A tokenizer's piece without its word-boundary marks (CLIP's ``</w>``, GPT's ``Ġ``, T5's ``▁``)."""
    return token.replace("</w>", "").replace("Ġ", "").replace("▁", "") or token
