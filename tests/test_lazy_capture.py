"""Issue 9, item 9: what made capture cheap must not make it wrong.

The forward under capture keeps references and copies only the model's few sampled output rows;
q and k are copied, and verification computed, when first needed. These tests pin the guarantees
that come with that: nothing says "verified" before the check ran, a check that fails still warns,
a model that overwrites what a layer still needs is caught, and a check run while another capture
is active is not mistaken for the model's attention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_rows_match, reference_probs
from torch import nn

import spatial_attn as sa
from spatial_attn.engine.layer import AttentionLayer, Verification


class SdpaBlock(nn.Module):
    """timm-style attention over a feature map: one qkv projection, heads split by views, SDPA."""

    def __init__(self, channels: int = 16, heads: int = 2, overwrite: str = "") -> None:
        super().__init__()
        self.heads, self.overwrite = heads, overwrite
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # (B, h, N, d): views of one buffer, sharing one version counter
        if self.overwrite == "v":
            v = v.clone()  # a buffer of its own, so that writing into it leaves q and k untouched
        self.seen = (q.detach().clone(), k.detach().clone())
        out = F.scaled_dot_product_attention(q, k, v)
        if self.overwrite == "q":
            q.mul_(0)  # e.g. a buffer reused for the next step
        elif self.overwrite == "v":
            v.mul_(0)
        return out.transpose(-1, -2).reshape(b, c, h, w)


def _capture(block: nn.Module, batch: int = 2) -> sa.Capture:
    with torch.no_grad(), sa.capture(block) as cap:
        block(torch.randn(batch, 16, 4, 6))
    return cap


def test_verification_runs_when_first_read_and_only_then(monkeypatch):
    calls = []
    original = AttentionLayer.sampled_output
    monkeypatch.setattr(
        AttentionLayer, "sampled_output", lambda self, *a: calls.append(1) or original(self, *a)
    )
    block = SdpaBlock().eval()
    (layer,) = _capture(block).layers
    assert calls == []  # the forward under capture did not verify
    assert layer.verified is True and len(calls) == 1
    assert layer.verification.ok is True and len(calls) == 1  # computed once
    q, k = block.seen
    assert_rows_match(layer, reference_probs(q, k, 8**-0.5), cells=24)


def test_a_failed_check_warns_when_read():
    (layer,) = _capture(SdpaBlock().eval()).layers
    layer.verification = lambda: Verification(False, 1.0, "made to fail")
    with pytest.warns(UserWarning, match="does not reproduce the output .made to fail"):
        assert layer.verified is False


def test_queries_overwritten_after_the_call_are_caught_not_shown():
    (layer,) = _capture(SdpaBlock(overwrite="q").eval()).layers
    assert layer.verified is None and "overwrote" in layer.verification.detail  # v shares q's buffer
    with pytest.raises(RuntimeError, match="wrote into the captured queries"):
        layer.row(1, 2)


def test_values_overwritten_after_the_call_leave_the_layer_unverified():
    block = SdpaBlock(overwrite="v").eval()
    (layer,) = _capture(block).layers
    assert layer.verified is None and "overwrote the values" in layer.verification.detail
    q, k = block.seen
    assert_rows_match(layer, reference_probs(q, k, 8**-0.5), cells=24)  # q and k were not touched


def test_a_check_read_inside_another_capture_is_not_recorded_there():
    """On a 4x4 map every query is sampled, so the check's own softmax is 16 x 16 over the grid
    another capture of a 4x4 model would take for attention."""
    with torch.no_grad(), sa.capture(first := SdpaBlock().eval()) as cap:
        first(torch.randn(2, 16, 4, 4))
    (layer,) = cap.layers
    other = SdpaBlock().eval()
    with torch.no_grad(), sa.capture(other) as cap:
        other(torch.randn(1, 16, 4, 4))
        assert layer.verified is True  # softmax and products of the check run here
    assert len(cap.layers) == 1 and cap.layers[0].batch_size == 1  # the model's call, not the check
    assert not cap.problems


def test_inference_mode_copies_at_once():
    """Inference tensors have no version counter to check later, so nothing is deferred for them."""
    block = SdpaBlock(overwrite="q").eval()
    with torch.inference_mode(), sa.capture(block) as cap:
        block(torch.randn(1, 16, 4, 6))
    q, k = block.seen
    assert_rows_match(cap.layers[0], reference_probs(q, k, 8**-0.5), cells=24)
