"""Packed sequences (issue 9, item 8): Flux's image tokens placed by the ``img_ids`` its forward gets.

Flux packs 2x2 latent patches into one token each and never builds a feature map: the grid exists
only in the ids. The reference is computed here from the queries and keys each attention call
received, recorded by the test's own function mode, on a forward run without the capture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference_probs
from torch.overrides import TorchFunctionMode

import spatial_attn as sa

TEXT, H, W = 5, 4, 6


class RecordSdpa(TorchFunctionMode):
    """Keeps ``softmax(q k^T / sqrt(d))`` of every ``scaled_dot_product_attention`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.probs: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k = (args[0], args[1]) if args else (kwargs["query"], kwargs["key"])
            assert kwargs.get("attn_mask") is None and len(args) < 4  # Flux passes no mask
            assert kwargs.get("scale") is None  # the default scale, 1/sqrt(d)
            self.probs.append(reference_probs(q, k, q.shape[-1] ** -0.5))
        return func(*args, **kwargs)


def _flux():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        axes_dims_rope=(2, 2, 4),
    ).eval()


def _inputs(batch: int, ids: torch.Tensor) -> dict:
    torch.manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, H * W, 16),  # latents packed 2x2: one token per 2x2 patch
        "encoder_hidden_states": torch.randn(batch, TEXT, 32),
        "pooled_projections": torch.randn(batch, 16),
        "timestep": torch.ones(batch),
        "img_ids": ids,
        "txt_ids": torch.zeros(TEXT, 3),
    }


def image_ids(h: int = H, w: int = W) -> torch.Tensor:
    """Flux's ``_prepare_latent_image_ids``: ``(frame 0, row, column)`` per token, row-major."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


@pytest.mark.parametrize("batch", [1, 2])
def test_flux_grid_from_the_image_ids(batch: int) -> None:
    model = _flux()
    inputs = _inputs(batch, image_ids())
    with torch.no_grad():
        with RecordSdpa() as recorded:
            model(**inputs)
        with sa.capture(model) as cap:
            model(**inputs)
    assert len(cap.layers) == len(recorded.probs) == 2  # one double and one single block
    for layer, probs in zip(cap.layers, recorded.probs, strict=True):
        assert layer.query_grid == layer.key_grid == (H, W), layer.queries.note
        assert "image ids" in layer.queries.note and not layer.queries.ambiguous
        assert layer.keys.grid_slice == slice(TEXT, TEXT + H * W)  # text first, then the image
        for b in range(batch):
            for y, x in [(0, 0), (1, 4), (H - 1, W - 1)]:
                i = TEXT + y * W + x
                for head in range(layer.heads):
                    expected = probs[b, head, i, TEXT:].reshape(H, W).numpy()
                    np.testing.assert_allclose(layer.row(y, x, head=head, batch=b), expected, atol=1e-5)
                stats = layer.attend(y, x, batch=b)
                assert sum(stats.special.values()) == pytest.approx(
                    float(probs[b, :, i, :TEXT].sum(-1).mean())
                )
        assert layer.verification.ok is True


def test_flux_ids_that_are_no_grid_ask_for_one() -> None:
    """Ids of another layout (here: columns first) state nothing; the layer says to pass grid=, and
    grid= places it."""
    model = _flux()
    transposed = image_ids(W, H)[:, [0, 2, 1]]  # column-major: token i is not (i // W, i % W)
    with torch.no_grad(), sa.capture(model) as cap:
        model(**_inputs(1, transposed))
    layer = cap.layers[0]
    assert layer.query_grid is None and "pass grid=" in layer.queries.note
    with torch.no_grad(), sa.capture(model, grid=(H, W)) as cap:
        model(**_inputs(1, transposed))
    assert cap.layers[0].query_grid == (H, W)


def test_flux_ids_are_read_once_per_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the ids is a host read (a device sync on a GPU): the same ids tensor, passed to every
    denoising step, is read by the first captured forward only; ids changed in place are read again,
    and a grid they no longer make is no longer stated."""
    from test_host_copies import HostReads

    model, ids = _flux(), image_ids()
    reads = HostReads(monkeypatch)
    counts, grids = [], []
    with torch.no_grad():
        for step in range(3):
            if step == 2:
                ids[:, [1, 2]] = ids[:, [2, 1]].clone()  # in place: now column-major
            with sa.capture(model) as cap:
                counts.append(len(reads.forward(lambda: model(**_inputs(1, ids)), ())))
            grids.append(cap.layers[0].query_grid)
    assert counts[1] == 0 < counts[0] and counts[2] > 0
    assert grids == [(H, W), (H, W), None]
