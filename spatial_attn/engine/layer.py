"""One captured attention call: its queries and keys, and the rows and columns they imply.

The softmax matrix of a spatial layer is ``N x N'`` (a 128x128 map gives N = 16384 and a 1 GiB
matrix), so it is never stored. A layer keeps what the model multiplied, ``q`` and ``k``, and
computes what a click asks for:

* a row (where query pixel ``i`` looks) is ``softmax(q_i . k^T)``: O(N' d) per head;
* a column (who looks at key pixel ``j``) is ``exp(q . k_j - lse)``: O(N d) once the per-query
  log-sum-exp normalisers ``lse`` are known, computed once per layer in memory-bounded chunks.

Where an adapter could not recover ``q`` and ``k`` (hand-written attention whose scores came from
something other than a product of two tensors), the layer keeps the probabilities the model
computed instead (:class:`StoredProbs`); both kinds answer the same two questions.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .grid import TokenLayout

Head = int | str | None

#: Memory allowed for one block of scores while computing normalisers or sampled rows.
_BLOCK_BYTES = 16 * 2**20


class StaleCapture(RuntimeError):
    """The model wrote into tensors a layer still needed after its attention call."""


@dataclass(frozen=True)
class Verification:
    """Whether the layer's probabilities reproduce what the model did with them.

    ``ok=None`` means it could not be checked, and ``detail`` says why; a map is then shown with that
    caveat rather than silently.
    """

    ok: bool | None
    max_error: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Row:
    """One query pixel's attention, reduced over heads, ready to draw and to read."""

    values: np.ndarray  # shaped like the key grid (or (N',) for non-spatial keys): the map
    special: dict[str, float]  # probability mass on each non-pixel key token (CLS, bias_k, ...)
    # Entropy and distance need a distribution: for head="max" (whose values do not sum to 1) they
    # are those of the head mean.
    entropy: float  # bits, of the whole row (map and special tokens)
    distance: float | None  # attention-weighted mean distance to the query, in image fractions
    token: int  # the query's token index i = start + y*W + x
    cell: tuple[int, int]  # the query cell (y, x) on this layer's query grid


class QKScores:
    """Attention probabilities as a function of stored queries and keys: ``softmax(q k^T + mask)``.

    ``q`` is ``(B, h, N, d)``, ``k`` is ``(B, h, N', d)``, and ``scale`` multiplies ``q k^T``; ``mask``
    broadcasts to ``(B, h, N, N')`` and is either boolean (True = may attend, as in
    ``scaled_dot_product_attention``) or additive. ``causal`` hides keys ``j > i``.

    The tensors are kept as the model made them, where it made them (on its device, in its dtype,
    often transposed views of its projections): nothing is copied, converted or moved to the host
    during the model's forward. What a click needs is made on first use, on the layer's device, in
    float32, a piece at a time: a row reads the one query it asks for and the float32, contiguous
    keys of its batch entry (made once per entry: a row read from a view took a strided path ~100x
    slower); columns and normalisers, which read every query, make the whole scaled float32 copies
    (:meth:`_materialise`) and release the model's tensors. Version counters are checked whenever the
    model's tensors are read, so a model that wrote into them in place after the call is caught, not
    silently shown; inference tensors, which have no counters, are copied at once (on the device).

    On the CPU one row or one column (what a click asks for) is computed with numpy on the calling
    thread, blocks of rows (verification, normalisers) with torch; both read the same memory. The
    split is by size because of threads: a torch op spreads even a tiny row over its thread pool, and
    on a busy 2-core machine waking the second thread costs ~16 ms for ~10 us of arithmetic; numpy's
    BLAS does the opposite to blocks (bench/README.md). On another device everything runs there in
    torch, and only the ``(h, N')`` row or ``(h, N)`` column crosses to the host.
    """

    def __init__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        scale: float = 1.0,
    ) -> None:
        if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} are not (B, h, N, d) pairs")
        self._shape = (*q.shape[:3], k.shape[2])
        self._sources: tuple[torch.Tensor, torch.Tensor] | None = (q.detach(), k.detach())
        self._scale = scale
        self._versions = versions(q, k)
        self.device = q.device
        self._host = q.device.type == "cpu"  # numpy rows on the calling thread (see the class doc)
        self._q: torch.Tensor | None = None
        self._k: torch.Tensor | None = None
        self._keys: dict[int, Any] = {}  # batch -> k[batch] (h, N', d) as rows read it (see _host_keys)
        self._borrowed: set[int] = set()  # batches whose keys are the model's memory, not copies
        if self._versions is None:
            self._materialise()
        self.mask, self.causal = mask, causal
        self._bias_all: torch.Tensor | None = None  # additive float32 (B|1, h|1, N|1, N'), on first use
        self._lse: dict[int, torch.Tensor] = {}

    def _fresh_sources(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The model's q and k, if still held, after checking that it did not write into them."""
        sources = self._sources
        if sources is not None and self._versions is not None and versions(*sources) != self._versions:
            raise StaleCapture(
                "the model wrote into the captured queries or keys in place after its attention call; "
                "their rows can no longer be computed"
            )
        return sources

    def _materialise(self) -> None:
        """The whole float32, contiguous, scaled copies of q and k, on the layer's device. Threads
        that race here both make the same copies; ``_sources`` is cleared last, so whoever sees it
        cleared finds them set."""
        sources = self._fresh_sources()
        if sources is None:
            return
        q, k = sources
        q = q.float() * self._scale if self._scale != 1.0 else q.float()
        self._q, self._k = q.contiguous(), k.float().contiguous()
        self._sources = None  # the model's tensors (and whatever they are views of) can go
        self._keys, self._borrowed = {}, set()

    def _batch_keys(self, batch: int) -> torch.Tensor:
        """``k[batch]`` as float32, contiguous, on the layer's device: ``(h, N', d)``, made on its
        first row (the torch path, off the CPU)."""
        keys = self._keys.get(batch)
        if keys is None:
            sources = self._fresh_sources()
            if sources is None:
                assert self._k is not None
                return self._k[batch]
            keys = self._keys[batch] = sources[1][batch].float().contiguous()
        return keys

    def _host_keys(self, batch: int) -> np.ndarray:
        """``k[batch]`` ``(h, N', d)`` as float32 numpy (the CPU path): the model's own memory where
        BLAS reads it as it is (float32 heads whose token rows are contiguous: a head split of a
        projection, a ``qkv`` pack), so a first click copies nothing and costs what a later one does;
        otherwise a contiguous copy, made by numpy on its first row."""
        keys = self._keys.get(batch)
        if keys is None:
            sources = self._fresh_sources()
            if sources is None:
                assert self._k is not None
                return self._k[batch].numpy()
            k = sources[1][batch]
            readable = k.dtype == torch.float32 and k.stride(-1) == 1 and k.stride(1) >= k.shape[-1]
            keys = self._keys[batch] = k.numpy() if readable else _float32(k)
            if readable:
                self._borrowed.add(batch)
        return keys

    def _query(self, batch: int, token: int) -> torch.Tensor:
        """One query of every head, float32 and scaled: ``(h, d)``."""
        sources = self._fresh_sources()
        if sources is None:
            assert self._q is not None
            return self._q[batch, :, token]
        q = sources[0][batch, :, token].float()
        return q * self._scale if self._scale != 1.0 else q

    def _host_query(self, batch: int, token: int) -> np.ndarray:
        """:meth:`_query` as numpy, made by numpy where it can (a torch op, even this small, may
        wait for its thread pool on a busy machine)."""
        sources = self._fresh_sources()
        if sources is None or sources[0].dtype != torch.float32:
            return self._query(batch, token).numpy()
        return sources[0][batch, :, token].numpy() * np.float32(self._scale)  # (h, d), a new array

    def regrouped(self, entries: int) -> QKScores:
        """These scores with their batch and head axes regrouped as ``(entries, B*h/entries, N, N')``,
        order kept (a windowed call that folded windows into heads, or heads into its batch). As lazy
        as these: nothing is converted or scaled during the model's forward."""
        b, h, n, m = self.shape
        sources = self._sources
        q, k = sources if sources is not None else (self.q, self.k)
        scale = self._scale if sources is not None else 1.0  # the copies have the scale folded in
        mask = self.mask
        if mask is not None:
            mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape)).expand(b, h, n, m)
            mask = mask.reshape(entries, -1, n, m)
        q, k = q.reshape(entries, -1, n, q.shape[-1]), k.reshape(entries, -1, m, k.shape[-1])
        return QKScores(q, k, mask, self.causal, scale)

    @property
    def q(self) -> torch.Tensor:
        """Queries ``(B, h, N, d)``, float32, the softmax scale folded in, on the layer's device."""
        self._materialise()
        assert self._q is not None
        return self._q

    @property
    def k(self) -> torch.Tensor:
        """Keys ``(B, h, N', d)``, float32, on the layer's device."""
        self._materialise()
        assert self._k is not None
        return self._k

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, h, N, N')``."""
        b, h, n, m = self._shape
        return b, h, n, m

    def _bias(self, batch: int, queries: torch.Tensor | slice, keys: slice) -> torch.Tensor | None:
        """The additive mask for a block of queries x keys, ``(h|1, n|1, m)`` on the layer's device;
        None if unmasked."""
        bias: torch.Tensor | None = None
        if self.mask is not None:
            if self._bias_all is None:
                self._bias_all = _additive(self.mask).to(self.device)
            m = self._bias_all[batch if self._bias_all.shape[0] > 1 else 0]  # (h|1, N|1, N'|1)
            m = m[:, queries] if m.shape[1] > 1 else m
            bias = m[:, :, keys] if m.shape[2] > 1 else m
        if self.causal:
            _, _, n, m = self.shape
            qi = torch.arange(n, device=self.device)[queries].reshape(-1, 1)
            kj = torch.arange(m, device=self.device)[keys].reshape(1, -1)
            causal = torch.zeros(kj.shape, device=self.device).masked_fill(kj > qi, -torch.inf)[None]
            bias = causal if bias is None else bias + causal
        return bias

    def _logits(self, batch: int, token: int) -> torch.Tensor:
        """``q_i k^T + mask`` of one query token, every head, in torch: ``(h, N')``."""
        logits = (self._batch_keys(batch) @ self._query(batch, token)[:, :, None])[..., 0]  # (h, N')
        bias = self._bias(batch, torch.tensor([token]), slice(None))
        return logits if bias is None else logits + bias[:, 0]

    def logits(self, batch: int, token: int) -> np.ndarray:
        """``q_i k^T + mask`` of one query token, every head: ``(h, N')`` (numpy, this thread)."""
        if not self._host:
            return self._logits(batch, token).cpu().numpy()
        k, q = self._host_keys(batch), self._host_query(batch, token)
        # a stacked matrix-vector product: BLAS per head, ~2.5x faster than the equivalent einsum
        logits = np.matmul(k, q[:, :, None])[..., 0]  # (h, N')
        if self.mask is None and not self.causal:
            return logits
        bias = self._bias(batch, torch.tensor([token]), slice(None))
        return logits if bias is None else logits + bias[:, 0].numpy()

    def row(self, batch: int, token: int) -> np.ndarray:
        """The probability row of one query token, every head: ``(h, N')``."""
        if not self._host:
            return torch.softmax(self._logits(batch, token), dim=-1).cpu().numpy()
        return _softmax_(self.logits(batch, token))  # logits is a fresh array: normalised in place

    def probs(self, batch: int, queries: torch.Tensor) -> torch.Tensor:
        """Probability rows of a block of query tokens: ``(h, s, N')`` (torch, on the layer's device)."""
        queries = queries.to(self.device)
        logits = self.q[batch][:, queries] @ self.k[batch].transpose(-1, -2)  # (h, s, N')
        bias = self._bias(batch, queries, slice(None))
        if bias is not None:
            logits = logits + bias
        return torch.softmax(logits, dim=-1)

    def _lse_of(self, batch: int) -> torch.Tensor:
        """Per-query log-sum-exp of the logits, ``(h, N)``: computed once, in bounded chunks."""
        if batch not in self._lse:
            _, h, n, m = self.shape
            step = block_rows(h, m)
            k_t = self.k[batch].transpose(-1, -2)  # (h, d, N')
            # Written into one preallocated output: appending each chunk's small result to a list
            # pinned every 16 MiB logits block in the heap (glibc could not give them back), and
            # the column of a 128 x 128 map grew RSS by 6.6 GiB instead of ~0.
            lse = torch.empty(h, n, device=self.device)
            for start in range(0, n, step):
                block = slice(start, min(n, start + step))
                logits = self.q[batch][:, block] @ k_t  # (h, step, N')
                bias = self._bias(batch, block, slice(None))
                if bias is not None:
                    logits = logits + bias
                lse[:, block] = torch.logsumexp(logits, dim=-1)
                del logits  # freed before the next block is allocated
            self._lse[batch] = lse
        return self._lse[batch]

    def lse(self, batch: int) -> np.ndarray:
        """Per-query log-sum-exp of the logits, ``(h, N)`` (numpy)."""
        return self._lse_of(batch).cpu().numpy()

    def column(self, batch: int, key: int) -> np.ndarray:
        """Probability that every query gives to key token ``key``: ``(h, N)`` (numpy, this thread)."""
        bias = self._bias(batch, slice(None), slice(key, key + 1))  # (h|1, N|1, 1)
        if not self._host:
            logits = torch.einsum("hnd,hd->hn", self.q[batch], self.k[batch, :, key])  # (h, N)
            logits = logits if bias is None else logits + bias[..., 0]
            return torch.exp(logits - self._lse_of(batch)).cpu().numpy()
        logits = np.einsum("hnd,hd->hn", self.q[batch].numpy(), self.k[batch, :, key].numpy())  # (h, N)
        if bias is not None:
            logits = logits + bias[..., 0].numpy()
        return np.exp(logits - self.lse(batch))

    def nbytes(self) -> int:
        """Memory held: queries, keys, their copies and the mask (never an N x N' matrix of our own)."""
        held = sum(t.nbytes for t in self._sources) if self._sources else 0
        keys = [k for batch, k in self._keys.items() if batch not in self._borrowed]
        copies = [self._q, self._k, self._bias_all, *keys, *self._lse.values()]
        return held + sum(t.nbytes for t in copies if t is not None)


class StoredProbs:
    """Probabilities kept as the model computed them, ``(B, h, N, N')``.

    The fallback for attention whose queries and keys could not be recovered; it costs the full
    matrix, so it is used only where nothing smaller is known. Kept where the model made them, in its
    dtype; what a click reads is converted to float32 and moved to the host then.
    """

    def __init__(self, probs: torch.Tensor) -> None:
        if probs.ndim != 4:
            raise ValueError(f"probabilities must be (B, h, N, N'), got {tuple(probs.shape)}")
        self.p = probs.detach()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, h, N, N')``."""
        b, h, n, m = self.p.shape
        return b, h, n, m

    def row(self, batch: int, token: int) -> np.ndarray:
        """The stored row of one query token: ``(h, N')``."""
        return _host(self.p[batch, :, token])

    def probs(self, batch: int, queries: torch.Tensor) -> torch.Tensor:
        """Stored rows ``(h, s, N')``, float32."""
        return self.p[batch][:, queries.to(self.p.device)].float()

    def column(self, batch: int, key: int) -> np.ndarray:
        """Stored column ``(h, N)``."""
        return _host(self.p[batch, :, :, key])

    def nbytes(self) -> int:
        """Memory held by the matrix."""
        return self.p.nbytes


Scores = QKScores | StoredProbs

#: A verification, or what computes it when first asked (see :attr:`AttentionLayer.verification`).
Check = Verification | Callable[[], Verification]


@dataclass
class AttentionLayer:
    """One attention call captured from a model (see the module docstring for how rows are made)."""

    name: str
    family: str
    scores: Scores
    queries: TokenLayout
    keys: TokenLayout

    def __post_init__(self) -> None:
        self._verification: Check = Verification(None, None, "not run")
        _, _, n, m = self.scores.shape
        if (n, m) != (self.queries.count, self.keys.count):
            raise ValueError(
                f"{self.name}: scores are {n}x{m} tokens, layouts say {self.queries.count}x{self.keys.count}"
            )

    # -- what the layer is ----------------------------------------------------------------------
    @property
    def heads(self) -> int:
        """Number of attention heads."""
        return self.scores.shape[1]

    @property
    def batch_size(self) -> int:
        """Batch entries captured (classifier-free guidance keeps its halves apart here)."""
        return self.scores.shape[0]

    @property
    def query_grid(self) -> tuple[int, int] | None:
        """``(H, W)`` of the query tokens (None if they are not spatial)."""
        return self.queries.grid

    @property
    def key_grid(self) -> tuple[int, int] | None:
        """``(h, w)`` of the key tokens; None when keys are not spatial (text tokens)."""
        return self.keys.grid

    @property
    def q(self) -> torch.Tensor | None:
        """Queries ``(B, heads, N, d)``, softmax scale folded in (None when only probs are kept)."""
        return self.scores.q if isinstance(self.scores, QKScores) else None

    @property
    def k(self) -> torch.Tensor | None:
        """Keys ``(B, heads, N', d)`` (None when only probabilities are kept)."""
        return self.scores.k if isinstance(self.scores, QKScores) else None

    @property
    def single_query(self) -> bool:
        """One query that is not a pixel (CaiT's class attention, SigLIP's pooling probe) over keys on
        a grid. Its query grid is 1x1, so a click anywhere in the image maps to it and shows its row."""
        return self.queries.count == 1 and self.keys.grid is not None and self.keys.grid_size > 1

    @property
    def verification(self) -> Verification:
        """Whether the captured rows reproduce what the model computed with them.

        Adapters take what they need to check during the forward (a few of the model's output rows)
        and may leave the arithmetic for the first time this is read: the forward under capture then
        does no more than keep references. The check runs before anything reports the layer as
        verified, with torch function modes disabled, so a capture active at that moment does not
        mistake it for the model's attention; a failure warns then.
        """
        if callable(self._verification):
            try:
                with torch._C.DisableTorchFunction():
                    self._verification = self._verification()
            except StaleCapture as stale:
                self._verification = Verification(None, None, str(stale))
            if self._verification.ok is False:
                warnings.warn(
                    f"{self.name}: captured attention does not reproduce the output "
                    f"({self._verification.detail})",
                    stacklevel=2,
                )
        return self._verification

    @verification.setter
    def verification(self, check: Check) -> None:
        self._verification = check

    @property
    def verified(self) -> bool | None:
        """Shortcut for ``verification.ok``."""
        return self.verification.ok

    def nbytes(self) -> int:
        """Memory this layer holds."""
        return self.scores.nbytes()

    # -- what a click asks ----------------------------------------------------------------------
    def row(self, y: int, x: int, head: Head = None, batch: int = 0) -> np.ndarray:
        """Where query pixel ``(y, x)`` looks: a map shaped like ``key_grid``.

        ``head`` is a head index, ``None``/``"mean"`` for the mean over heads, or ``"max"``. Mass
        on special key tokens is left out of the map; :meth:`attend` reports it. A
        :attr:`single_query` layer has a 1x1 query grid: its one row is ``row(0, 0)``.

        This is what a click asks of every layer, so it computes the row and nothing else (no
        entropy or distance, unlike :meth:`attend`).
        """
        token = self.queries.token(y, x)
        probs = self.scores.row(self._batch(batch), token)  # (h, N')
        return _spatial(_reduce_heads(probs, self._head(head)), self.keys)

    def column(self, y: int, x: int, head: Head = None, batch: int = 0) -> np.ndarray:
        """How much every query pixel attends to key pixel ``(y, x)``: a map shaped like
        ``query_grid``."""
        key = self.keys.token(y, x)
        cols = self.scores.column(self._batch(batch), key)  # (h, N)
        return _spatial(_reduce_heads(cols, self._head(head)), self.queries)

    def attend(self, y: int, x: int, head: Head = None, batch: int = 0) -> Row:
        """The row of query pixel ``(y, x)`` with its statistics (special-token mass, entropy,
        mean distance)."""
        token = self.queries.token(y, x)
        return self.attend_token(token, head, batch, cell=(y, x))

    def attend_token(
        self, token: int, head: Head = None, batch: int = 0, cell: tuple[int, int] = (-1, -1)
    ) -> Row:
        """The row of any query token, special ones (a CLS query) included."""
        if not 0 <= token < self.queries.count:
            raise ValueError(f"token {token} is outside the {self.queries.count} queries")
        probs = self.scores.row(self._batch(batch), token)  # (h, N')
        head_index = self._head(head)
        row = _reduce_heads(probs, head_index)
        dist = row if head_index != "max" else probs.mean(0)
        return Row(
            values=_spatial(row, self.keys),
            special=self.keys.special_values(row),
            entropy=_entropy_bits(dist),
            distance=self._mean_distance(dist, cell),
            token=token,
            cell=cell,
        )

    def row_of_token(self, token: int | str, head: Head = None, batch: int = 0) -> np.ndarray:
        """The row of a query that is not a pixel, as a map shaped like ``key_grid``.

        ``token`` is a query token index or the label of a special query token: ``"text 3"`` for
        the fourth text token of joint attention (SD3, AuraFlow), ``"CLS"`` for a ViT's class token.
        Their mass on special keys is in :meth:`attend_token`'s ``special``.
        """
        if isinstance(token, str):
            labels = self.queries.labels
            if token not in labels:
                raise ValueError(f"{self.name} has no query token {token!r}; its special ones: {labels}")
            token = self.queries.special_indices()[labels.index(token)]
        return self.attend_token(token, head, batch).values

    def logits(self, y: int, x: int, head: int, batch: int = 0) -> np.ndarray:
        """One head's scores for query pixel ``(y, x)`` before the softmax: ``q_i . k_j`` (scale folded
        into q, mask added) for every key token ``j``, special ones included: ``(N',)``.

        This is the step the softmax hides; the app shows it to explain how a row is made. None of it
        exists when only probabilities were captured.
        """
        if not isinstance(self.scores, QKScores):
            raise ValueError(f"{self.name} kept probabilities only; its logits are unknown")
        token = self.queries.token(y, x)
        b, h = self._batch(batch), self._head(head)
        if not isinstance(h, int):
            raise ValueError("logits are per head: pass a head index")
        return self.scores.logits(b, token)[h]

    def token_probs(self, y: int, x: int, head: Head = None, batch: int = 0) -> np.ndarray:
        """The whole row of query pixel ``(y, x)`` over every key token, special ones included:
        ``(N',)``, summing to 1 (for the mean over heads, or one head)."""
        token = self.queries.token(y, x)
        return _reduce_heads(self.scores.row(self._batch(batch), token), self._head(head))

    def head_rows(self, y: int, x: int, batch: int = 0) -> np.ndarray:
        """Every head's map for query pixel ``(y, x)``: ``(heads, *key_grid)``."""
        token = self.queries.token(y, x)
        return np.stack([_spatial(p, self.keys) for p in self.scores.row(self._batch(batch), token)])

    def sampled_output(self, values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``P[queries] @ values`` for every batch entry: ``(B, h, s, dv)``.

        Adapters compare this with what the model produced to verify the capture, on a sample of
        queries so that verification stays O(s N' d).
        """
        v = values.detach().float()  # rows of windowed scores are placed on the host: bring them to v
        rows = (self.scores.probs(b, queries).to(v.device) for b in range(self.batch_size))
        return torch.stack([p @ v[b] for b, p in enumerate(rows)])

    # -- helpers --------------------------------------------------------------------------------
    def _batch(self, batch: int) -> int:
        if not 0 <= batch < self.batch_size:
            raise ValueError(f"batch {batch} is outside the {self.batch_size} captured entries")
        return batch

    def _head(self, head: Head) -> int | str:
        if head is None or head == "mean":
            return "mean"
        if head == "max":
            return "max"
        if isinstance(head, int) and not isinstance(head, bool) and 0 <= head < self.heads:
            return head
        raise ValueError(f"head must be None, 'mean', 'max' or 0..{self.heads - 1}; got {head!r}")

    def _mean_distance(self, dist: np.ndarray, cell: tuple[int, int]) -> float | None:
        """Expected distance from the query cell's centre to the attended key cells' centres."""
        if self.queries.grid is None or self.keys.grid is None or cell[0] < 0 or self.single_query:
            return None  # a single query is no pixel: it has no place to measure from
        (qh, qw), (kh, kw) = self.queries.grid, self.keys.grid
        qy, qx = (cell[0] + 0.5) / qh, (cell[1] + 0.5) / qw
        ky = (np.arange(kh) + 0.5) / kh
        kx = (np.arange(kw) + 0.5) / kw
        d = np.sqrt((ky[:, None] - qy) ** 2 + (kx[None, :] - qx) ** 2).ravel()
        w = dist[self.keys.grid_slice]
        total = float(w.sum())
        return float((w * d).sum()) / total if total > 0 else None


class LayerList(list):
    """The captured layers in call order; also indexable by name (``layers["mid_block.attentions.0"]``)."""

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for layer in self:
                if layer.name == key:
                    return layer
            raise KeyError(f"no layer named {key!r}; captured: {', '.join(self.names())}")
        return super().__getitem__(key)

    def names(self) -> list[str]:
        """Layer names in call order."""
        return [layer.name for layer in self]


def compare(
    expected: torch.Tensor, got: torch.Tensor, what: str, ran_in: torch.dtype | None = None
) -> Verification:
    """Verification from the model's own output (``expected``) and our recomputation (``got``).

    The tolerance follows the dtype the model ran in (``ran_in``, default ``expected``'s): our float32
    recomputation from the model's own q, k and v differs from its output by the rounding of that
    dtype, about one unit of its last mantissa bit relative to the output's scale (measured: up to
    0.9 eps in bfloat16 and float16, for SDPA, MHA, encoder layers, diffusers and SAGAN). Four units
    pass every correct layer; a capture that swaps two heads is off by 4e-2 to 0.6 of the scale, so it
    is still caught in bfloat16 (eps 2^-7). Float32 keeps the floor of 2e-3 it always had, which also
    covers TF32 convolutions and matmuls on a GPU.
    """
    tolerance = max(_FLOAT32_RTOL, _EPS_UNITS * torch.finfo(ran_in or expected.dtype).eps)
    expected, got = expected.float(), got.float()
    if expected.shape != got.shape:
        return Verification(
            False, None, f"{what}: shapes differ {tuple(expected.shape)} vs {tuple(got.shape)}"
        )
    err = float((expected - got).abs().max()) if expected.numel() else 0.0
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    ok = err <= 1e-4 + tolerance * scale
    return Verification(
        ok, err, f"{what}: max |difference| {err:.2e} (allowed {tolerance:.0e} of {scale:.2e})"
    )


def block_rows(heads: int, keys: int) -> int:
    """Query rows per block so that one block of float32 scores, ``(heads, rows, keys)``, stays within
    :data:`_BLOCK_BYTES`: what bounds the memory of everything computed over a whole layer."""
    return max(1, _BLOCK_BYTES // (4 * heads * keys))


def query_blocks(scores: Scores, batch: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """The probabilities of every query of batch entry ``batch``, a block of rows at a time:
    ``(rows, probs (h, s, N'))``. Statistics over a whole layer (what every key receives, every
    query's entropy, attention rollout) are sums over these blocks, so none holds the N x N' matrix."""
    _, h, n, m = scores.shape
    step = block_rows(h, m)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        yield rows, scores.probs(batch, torch.arange(rows.start, rows.stop))


def coarsest(*tensors: torch.Tensor) -> torch.dtype:
    """The least precise floating dtype among ``tensors`` (float32 if none is floating): the one a
    model's computation was rounded to, for :func:`compare`."""
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    return max(floating, key=lambda d: torch.finfo(d).eps, default=torch.float32)


#: Relative tolerance of a float32 check, and of any dtype at least as precise.
_FLOAT32_RTOL = 2e-3
#: Units of the dtype's last mantissa bit (``finfo.eps``) allowed between the model and the rows.
_EPS_UNITS = 4


@functools.lru_cache(maxsize=256)
def sample_queries(count: int, n: int = 16) -> torch.Tensor:
    """Up to ``n`` query tokens spread evenly over the axis (first and last included).

    Asked once per layer during the forward, and the same few sizes come back every time: cached,
    because ``torch.unique`` cost a 5-token ViT's captured forward a tenth of its time. Callers only
    index with the tensor returned, never write into it."""
    return torch.unique(torch.linspace(0, count - 1, min(n, count)).round().long())


def _reduce_heads(per_head: np.ndarray, head: int | str) -> np.ndarray:
    """(h, n) -> (n,) by the head choice."""
    if head == "mean":
        return np.add.reduce(per_head, 0) * np.float32(1 / len(per_head))
    if head == "max":
        return per_head.max(0)
    return per_head[head]


def _spatial(values: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """The grid block of a token vector, shaped like the grid (or the whole vector if not spatial)."""
    part = values[layout.grid_slice]
    return part if layout.grid is None else part.reshape(layout.grid)


def _entropy_bits(p: np.ndarray) -> float:
    """Shannon entropy in bits of a probability vector (zeros contribute nothing)."""
    p = p[p > 0].astype(np.float64)
    return float(-(p * np.log2(p)).sum())


def versions(*tensors: torch.Tensor) -> tuple[int, ...] | None:
    """Version counters (torch bumps a tensor's with every in-place write), to tell later whether the
    model overwrote what a capture holds; None for inference tensors, which have none."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple(t._version for t in tensors)


def _softmax_(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place (``logits`` is overwritten and returned), shifted by the
    maximum so that exp never overflows. In place because a click computes one per layer and each
    temporary array cost as much as the arithmetic."""
    logits -= logits.max(-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(-1, keepdims=True)
    return logits


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """A mask broadcastable to ``(B, h, N, N')`` as additive float32 (boolean True = may attend)."""
    mask = mask.detach().reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, -torch.inf)
    return mask.float()


def _float32(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor (any view) as a new contiguous float32 array, copied by numpy on this thread: the
    same copy in torch spreads over its thread pool, and on a busy 2-core machine the first click
    of a 32-layer UNet took 120 ms instead of ~3 (see :class:`QKScores`). bfloat16 is float32's top
    16 bits, so its conversion is a shift."""
    if t.dtype == torch.bfloat16:
        bits = t.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32)  # a contiguous copy
        return (bits << 16).view(np.float32)
    if t.dtype in (torch.float16, torch.float32, torch.float64):
        return np.ascontiguousarray(t.numpy(), dtype=np.float32)
    return t.float().contiguous().numpy()


def _host(t: torch.Tensor) -> np.ndarray:
    """A small result as a float32 numpy array on the host (contiguous, writable when copied)."""
    return t.float().cpu().numpy()
