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
