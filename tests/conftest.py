"""Shared test helpers: reference attention computed explicitly, and a checker for captured layers.

References are written here from the definition, ``softmax(q @ k^T * scale + mask)``, on tensors the
tests take from the model themselves; they never call the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


def reference_probs(
    q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` for ``(B, h, N, d)`` inputs: the full ``(B, h, N, N')``."""
    q, k = q.detach(), k.detach()
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits + mask.detach().double()
    return torch.softmax(logits, dim=-1).float()


def assert_rows_match(
    layer,
    probs: torch.Tensor,
    q_offset: int = 0,
    k_offset: int = 0,
    atol: float = 1e-5,
    cells: int = 12,
) -> None:
    """Every checked row of ``layer`` (every head, the head mean, every batch entry) equals ``probs``.

    ``probs`` is the reference ``(B, h, N, N')`` including special tokens; ``q_offset``/``k_offset``
    say how many special tokens come before each grid (the test knows its model). Cells are spread
    over the whole grid.
    """
    b_, h_, _, _ = probs.shape
    qh, qw = layer.query_grid
    kh, kw = layer.key_grid
    assert layer.heads == h_ and layer.batch_size == b_
    flat = [(y, x) for y in range(qh) for x in range(qw)]
    pick = np.unique(np.linspace(0, len(flat) - 1, min(cells, len(flat))).round().astype(int))
    for b in range(b_):
        for y, x in (flat[i] for i in pick):
            i = q_offset + y * qw + x
            expected = probs[b, :, i, k_offset : k_offset + kh * kw].reshape(h_, kh, kw).numpy()
            for head in range(h_):
                np.testing.assert_allclose(layer.row(y, x, head=head, batch=b), expected[head], atol=atol)
            np.testing.assert_allclose(layer.row(y, x, batch=b), expected.mean(0), atol=atol)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for the browser tests (skipped where it is not installed)."""
    from browser import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium); under CI=true it is installed"
        )
    return path


@pytest.fixture(scope="session")
def served():
    """The real app, served on a free local port for the whole session (closed at the end): the
    running Blocks and its address."""
    import socket

    from spatial_attn.app.blocks import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch("ddpm-faces", host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def app_url(served):
    """The address of the real app (see ``served``)."""
    return served[1]
