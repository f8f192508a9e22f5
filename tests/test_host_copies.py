"""A captured forward asks the host for nothing the plain forward does not.

On a GPU every ``.cpu()``, ``.numpy()``, ``.item()``, ``.tolist()`` (and ``float(t)``, ``int(t)``,
``bool(t)``, which call it) stops the queue of kernels until the device catches up: 48 of them per
ViT-B forward made the capture cost 5-10x the forward. On the CPU they are free, so this counts
them instead of timing them: between the forward's start and its end, in the plain and the captured
forward of each attention family; and then checks that the rows, asked for after the forward, are
right.
"""

from __future__ import annotations

import pytest
import torch
from conftest import reference_probs
from test_precision import FAMILIES, run_family

import spatial_attn as sa

#: What copies a tensor to the host or waits for its value.
HOST_READS = ("cpu", "numpy", "item", "tolist", "__float__", "__int__", "__bool__")


class HostReads:
    """Counts host reads of tensors while ``counting`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counting = False
        self.calls: list[str] = []
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name: str, method):
        def counted(t, *args, **kwargs):
            if self.counting:
                self.calls.append(name)
            return method(t, *args, **kwargs)

        return counted

    def forward(self, model: torch.nn.Module, inputs: tuple) -> list[str]:
        """The host reads made while ``model(*inputs)`` runs."""
        self.calls = []
        self.counting = True
        try:
            model(*inputs)
        finally:
            self.counting = False
        return self.calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", FAMILIES)
def test_a_captured_forward_reads_nothing_back_to_the_host(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, inputs = run_family(name, dtype)
    reads = HostReads(monkeypatch)
    with torch.no_grad():
        plain = reads.forward(model, inputs)
        with sa.capture(model) as cap:
            captured = reads.forward(model, inputs)
    assert sorted(captured) == sorted(plain), f"the capture added host reads: {captured} vs {plain}"
    assert cap.layers and all(layer.verified for layer in cap.layers)  # and the layers still check


def test_the_kept_keys_are_the_models_own_tensors_not_copies() -> None:
    """q and k stay where the model made them (here: views of its qkv projection), until a row asks."""
    model, inputs = run_family("sdpa")
    seen = {}
    block = model.blocks[0]
    block.qkv.register_forward_hook(lambda _m, _a, out: seen.setdefault("qkv", out))
    with torch.no_grad(), sa.capture(model) as cap:
        model(*inputs)
    q, k = cap.layers[0].scores._sources
    assert q.untyped_storage().data_ptr() == seen["qkv"].untyped_storage().data_ptr()
    assert k.untyped_storage().data_ptr() == seen["qkv"].untyped_storage().data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_made_in_torch_as_on_a_device_equal_the_reference(dtype: torch.dtype) -> None:
    """Off the CPU rows and columns are computed in torch where the tensors live; on the CPU the same
    path runs when a layer is told it is not on the host, and must give the reference rows."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 20, 8).to(dtype), torch.randn(2, 3, 20, 8).to(dtype)
    mask = torch.rand(2, 1, 20, 20) > 0.2
    mask[..., 0] = True  # every query may attend somewhere
    from spatial_attn.engine.layer import QKScores

    for causal in (False, True):
        host, device = QKScores(q, k, mask, causal, 0.3), QKScores(q, k, mask, causal, 0.3)
        device._host = False
        additive = torch.zeros(mask.shape).masked_fill(~mask, -torch.inf)
        if causal:
            additive = additive.masked_fill(torch.ones(20, 20, dtype=torch.bool).triu(1), -torch.inf)
        expected = reference_probs(q.float(), k.float(), 0.3, additive)  # (B, h, N, N')
        for b in range(2):
            for token in (0, 7, 19):
                for s in (host, device):
                    torch.testing.assert_close(torch.from_numpy(s.row(b, token)), expected[b, :, token])
            for s in (host, device):
                torch.testing.assert_close(
                    torch.from_numpy(s.column(b, 5)), expected[b, :, :, 5], atol=1e-5, rtol=1e-4
                )
