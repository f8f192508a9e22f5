"""Models too large for one device, loaded the way accelerate loads them (weights offloaded to the
CPU or to disk, brought in by accelerate's own hooks for each module's forward), are captured exactly:
the capture's hooks coexist with accelerate's, and a row equals the softmax of the model's own q and k.

On a GPU machine the same hooks move weights to CUDA; here the execution device is the CPU, so the test
runs everywhere and exercises the same hook stacking (accelerate wraps ``forward``; we hook modules).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_precision import SdpaBlock, SoftmaxBlock, TokenViT

import spatial_attn as sa

accelerate = pytest.importorskip("accelerate")

HEADS, DIM, SIDE = 4, 64, 8  # TokenViT: a 32x32 image becomes 8x8 tokens of width 64


def _model() -> TokenViT:
    torch.manual_seed(0)
    return TokenViT(SdpaBlock(DIM, HEADS), SoftmaxBlock(DIM, HEADS), dim=DIM).eval()


def _reference_probs(model: TokenViT, x: torch.Tensor) -> list[torch.Tensor]:
    """Per block, ``softmax(q k^T / sqrt(d))`` ``(B, h, N, N)`` from the block's own qkv projection,
    in a separate forward of an un-offloaded copy (no capture)."""
    outputs: list[torch.Tensor] = []
    handles = [b.qkv.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    probs = []
    for qkv in outputs:
        b, n, _ = qkv.shape
        q, k, _ = qkv.reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
        probs.append(torch.softmax(q @ k.transpose(-2, -1) * (DIM // HEADS) ** -0.5, dim=-1))
    return probs


def _offloaded(kind: str, model: TokenViT, tmp_path) -> TokenViT:
    cpu = torch.device("cpu")
    if kind == "cpu":
        return accelerate.cpu_offload(model, execution_device=cpu)
    return accelerate.disk_offload(model, offload_dir=str(tmp_path / "offload"), execution_device=cpu)


@pytest.mark.parametrize("kind", ["cpu", "disk"])
def test_an_offloaded_model_is_captured_exactly(kind: str, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    reference = _model()
    expected = _reference_probs(reference, x)
    with torch.no_grad():
        plain_out = reference(x)
    model = _offloaded(kind, copy.deepcopy(reference), tmp_path)
    assert any(p.device.type == "meta" for p in model.parameters()), "the weights were not offloaded"
    with torch.no_grad(), sa.capture(model) as cap:
        out = model(x)
    torch.testing.assert_close(out, plain_out, rtol=0, atol=0)  # the capture changes no bit
    assert len(cap.layers) == 2 and cap.problems == []
    for layer, probs in zip(cap.layers, expected, strict=True):
        assert layer.query_grid == (SIDE, SIDE) and layer.verification.ok
        for batch in (0, 1):
            for y, x_ in ((0, 0), (3, 5), (7, 7)):
                token = y * SIDE + x_
                for head in range(HEADS):
                    torch.testing.assert_close(
                        torch.from_numpy(layer.row(y, x_, head=head, batch=batch)),
                        probs[batch, head, token].reshape(SIDE, SIDE),
                        rtol=1e-5,
                        atol=1e-6,
                    )


def test_offload_hooks_stay_in_place_after_the_capture(tmp_path):
    """The capture removes its own hooks and leaves accelerate's: the model still runs offloaded."""
    model = _offloaded("cpu", _model(), tmp_path)
    before = {name: dict(m._forward_pre_hooks) for name, m in model.named_modules()}
    with torch.no_grad(), sa.capture(model):
        model(torch.randn(1, 3, 32, 32))
    assert {name: dict(m._forward_pre_hooks) for name, m in model.named_modules()} == before
    assert all(hasattr(m, "_hf_hook") for m in model.modules() if list(m.parameters(recurse=False)))


class _SelfAttn(torch.nn.Module):
    """SAGAN's ``Self_Attn`` (no spectral norm), its gamma trained away from 0."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.query_conv = torch.nn.Conv2d(c, c // 8, 1)
        self.key_conv = torch.nn.Conv2d(c, c // 8, 1)
        self.value_conv = torch.nn.Conv2d(c, c, 1)
        self.gamma = torch.nn.Parameter(torch.tensor([0.7]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
        attention = torch.softmax(torch.bmm(q, self.key_conv(x).view(b, -1, h * w)), dim=-1)
        out = torch.bmm(self.value_conv(x).view(b, -1, h * w), attention.permute(0, 2, 1))
        return self.gamma * out.view(b, c, h, w) + x


@pytest.mark.parametrize("kind", ["cpu", "disk"])
def test_an_offloaded_sagan_layer_is_verified_without_reading_gamma(kind: str, tmp_path):
    """accelerate puts gamma back on the meta device before the block returns: the check fits the
    one number instead, and still catches rows that are not the model's (two keys swapped)."""
    torch.manual_seed(0)
    reference, x = _SelfAttn().eval(), torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        q = reference.query_conv(x).flatten(2).transpose(1, 2)  # (B, N, 2)
        probs = torch.softmax(q @ reference.key_conv(x).flatten(2), dim=-1)  # (B, N, N), no scale
    model = _offloaded(kind, copy.deepcopy(reference), tmp_path)
    assert model.gamma.device.type == "meta"
    with torch.no_grad(), sa.capture(model) as cap:
        model(x)
    (layer,) = cap.layers
    assert layer.verification.ok, layer.verification
    for b in (0, 1):
        torch.testing.assert_close(torch.from_numpy(layer.row(2, 3, batch=b)), probs[b, 15].reshape(5, 6))
    with torch.no_grad(), sa.capture(model) as wrong:
        model(x)
    k = wrong.layers[0].scores._sources[1]  # the keys the layer holds, (B, 1, N, d): two of them swapped
    k[:, :, [0, 7]] = k[:, :, [7, 0]]
    wrong.layers[0].scores._versions = None  # held as if in inference mode: the swap is not "stale"
    with pytest.warns(UserWarning, match="does not reproduce the output"):
        assert wrong.layers[0].verification.ok is False
