"""``keep_hooks(model)``: the capture's hooks registered once for a model's life (the app's models), so a
capture only joins and leaves them; the same layers, the same output, the same isolation of threads."""

from __future__ import annotations

import torch
from test_hygiene import SIZES, _hook_count, _net, _run, crowd

import spatial_attn as sa
from spatial_attn.engine import keep_hooks


def _hooks(net: torch.nn.Module) -> list[int]:
    """The ids of every hook registered on ``net``'s modules."""
    return sorted(
        key for m in net.modules() for hooks in (m._forward_hooks, m._forward_pre_hooks) for key in hooks
    )


def test_kept_hooks_stay_across_captures_and_go_when_released() -> None:
    net, x = _net(), torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        plain = _run(net, x)
        kept = keep_hooks(net)
        registered = _hooks(net)
        assert registered
        for _ in range(3):
            with sa.capture(net) as cap:
                out = _run(net, x)
            assert _hooks(net) == registered  # nothing added or removed by the capture
            assert torch.equal(out, plain) and cap.layers.names() == ["0", "1"]
            assert all(layer.verified for layer in cap.layers)
        assert torch.equal(_run(net, x), plain)  # a plain forward meets the hooks and is unchanged
        kept.release()
        kept.release()  # twice is safe
    assert _hook_count(net) == 0


def test_a_capture_active_when_released_keeps_them_until_it_ends() -> None:
    net = _net()
    with keep_hooks(net), sa.capture(net) as cap:
        pass
    assert _hook_count(net) == 0 and cap.layers == []
    kept = keep_hooks(net)
    with sa.capture(net):
        kept.release()
        assert _hook_count(net) > 0  # the active capture still needs them
    assert _hook_count(net) == 0


def test_threads_capturing_a_kept_model_see_only_their_own_calls() -> None:
    """As tests/test_hygiene.py's, on hooks that stay: four threads capture one model, a fifth runs it."""
    shared = _net()
    with keep_hooks(shared):
        registered = _hooks(shared)
        failures, seen = crowd([shared] * len(SIZES), shared, rounds=40)
        assert _hooks(shared) == registered
    assert failures == []
    assert all(seen[i] == {(size, size)} for i, size in enumerate(SIZES))
    assert _hook_count(shared) == 0


def test_the_apps_library_keeps_its_models_hooks() -> None:
    from spatial_attn.app.state import Library

    library = Library(["vit-faces"])
    module = library["vit-faces"].module
    registered = _hooks(module)
    assert registered
    with torch.no_grad(), sa.capture(module):
        module(torch.randn(1, 3, 32, 32))
    assert _hooks(module) == registered


class _Attention(torch.nn.Module):
    """timm's attention written out: one ``qkv`` linear, SDPA, a projection (recorded by the mode)."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _LinearThatAttends(torch.nn.Linear):
    """A subclass of a leaf torch never hooks: its own forward may do anything, so it is hooked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(x[None], x[None], x[None])[0]


class _Patchy(torch.nn.Module):
    """Patch embedding (a strided convolution: it states the grid), norm, attention, MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.norm = torch.nn.LayerNorm(8)
        self.attn = _Attention()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
        self.odd = _LinearThatAttends(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 12, 8): a 3 x 4 grid
        t = t + self.attn(self.norm(t))
        return self.odd(t + self.mlp(t))


def test_hooks_only_where_attention_or_a_grid_can_be() -> None:
    """Torch's own leaves (linear, norm, activation, a stride-1 convolution) get no hook; the strided
    patch embedding, containers, the attention module and a leaf subclass with its own forward do;
    and the layers are named and placed as before, exactly."""
    torch.manual_seed(0)
    net, x = _Patchy().eval(), torch.randn(2, 3, 12, 16)
    with keep_hooks(net):
        hooked = {name for name, m in net.named_modules() if m._forward_pre_hooks}
        with torch.no_grad(), sa.capture(net) as cap:
            net(x)
    assert hooked == {"", "embed", "attn", "mlp", "odd"}
    assert cap.layers.names() == ["attn", "odd"]
    attn = cap.layers["attn"]
    assert attn.query_grid == (3, 4) and attn.verified
    with torch.no_grad():  # the reference: the block's softmax written out, in a separate forward
        t = net.norm(net.embed(x).flatten(2).transpose(1, 2))
        q, k, _ = net.attn.qkv(t).reshape(2, 12, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # (B, h, 12, 12); 1/sqrt(4)
    for b in range(2):
        row = attn.row(1, 2, batch=b)  # token 1 * 4 + 2 = 6
        torch.testing.assert_close(
            torch.from_numpy(row), probs[b, :, 6].mean(0).reshape(3, 4), atol=1e-6, rtol=0
        )


def test_the_captures_bookkeeping_is_not_seen_by_the_function_mode() -> None:
    """The hooks read shapes with torch functions disabled: the only calls the capture's function mode
    sees are the model's own (counted against the same forward under a bare counting mode)."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    net, x = _Patchy().eval(), torch.randn(1, 3, 12, 16)
    with torch.no_grad():
        with Count() as plain:
            net(x)
        with sa.capture(net), Count() as captured:  # the counter sits above the capture's own mode
            net(x)
    assert captured.calls == plain.calls
