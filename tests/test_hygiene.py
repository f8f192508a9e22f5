"""The capture leaves no trace: hooks and the function mode go on exit, on error and on garbage
collection; threads do not see each other's calls; checkpoint re-runs are not counted twice."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from test_gan_attention import SelfAttn
from torch import nn
from torch.overrides import _is_torch_function_mode_enabled
from torch.utils.checkpoint import checkpoint

import spatial_attn as sa


class SdpaMap(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(c, 3 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, N, c)
        return x + F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(x.shape)


def _net() -> nn.Module:
    net = nn.Sequential(SdpaMap(), SelfAttn(16))
    net[1].gamma.data.fill_(0.5)
    return net.eval()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net[0](x)
    return net[1](out)[0]


def test_hooks_and_mode_removed_on_exit_and_output_bit_identical():
    net, x = _net(), torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        plain = _run(net, x)
        with sa.capture(net) as cap:
            assert _hook_count(net) > 0 and _is_torch_function_mode_enabled()
            out = _run(net, x)
    assert torch.equal(plain, out)
    assert _hook_count(net) == 0 and not _is_torch_function_mode_enabled()
    assert cap.layers.names() == ["0", "1"]
    assert cap.layers[0].family == "sdpa" and cap.layers[1].family == "sagan"


def test_hooks_removed_when_the_forward_raises():
    net = _net()
    with pytest.raises(RuntimeError, match="channels"), sa.capture(net):
        net(torch.randn(1, 3, 5, 5))
    assert _hook_count(net) == 0 and not _is_torch_function_mode_enabled()


def test_hooks_removed_when_a_forgotten_capture_is_collected():
    net = _net()
    cap = sa.capture(net)
    cap.__enter__()
    assert _hook_count(net) > 0
    del cap
    gc.collect()
    assert _hook_count(net) == 0 and not _is_torch_function_mode_enabled()


def test_layers_hold_no_graph():
    net, x = _net(), torch.randn(1, 16, 4, 4)
    with sa.capture(net) as cap:
        _run(net, x).sum().backward()
    assert all(not layer.q.requires_grad and not layer.k.requires_grad for layer in cap.layers)


SIZES = [(4, 4), (6, 3), (2, 5), (3, 3)]  # one map size per capturing thread


def crowd(nets: list[nn.Module], shared: nn.Module, rounds: int) -> tuple[list[str], dict[int, set]]:
    """Four threads capture ``nets[i]`` (each at its own map size, ``rounds`` times) while a fifth runs
    ``shared`` plainly, twice as often. The failures of any thread, and the layer grids each capturing
    thread saw."""
    failures: list[str] = []
    seen: dict[int, set] = {i: set() for i in range(len(SIZES))}

    def capturing(i: int) -> None:
        x = torch.randn(1, 16, *SIZES[i])
        for _ in range(rounds):
            try:
                with torch.no_grad(), sa.capture(nets[i]) as cap:
                    _run(nets[i], x)
                seen[i].add(tuple(layer.query_grid for layer in cap.layers))
            except Exception as error:  # a failure in any thread must reach the assertion
                failures.append(repr(error))

    def plain() -> None:
        x = torch.randn(1, 16, 4, 4)
        for _ in range(2 * rounds):
            try:
                with torch.no_grad():
                    _run(shared, x)
            except Exception as error:
                failures.append(f"plain forward: {error!r}")

    threads = [threading.Thread(target=capturing, args=(i,)) for i in range(len(SIZES))]
    threads.append(threading.Thread(target=plain))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures, seen


@pytest.mark.parametrize("same_model", [False, True])
def test_threads_do_not_see_each_other(same_model):
    """Four threads enter and leave captures of one model as fast as they can while a fifth runs it
    without capturing: nothing keeps them apart but the capture's own design. Each capture must see
    exactly its own thread's calls (sizes differ per thread), and no forward may fail."""
    shared = _net()
    nets = [shared if same_model else _net() for _ in range(4)]
    failures, seen = crowd(nets, shared, rounds=60)
    assert failures == []
    for i, size in enumerate(SIZES):
        assert seen[i] == {(size, size)}  # 2 layers per forward, both of this thread's size
    assert _hook_count(shared) == 0


def test_a_forward_meeting_hooks_in_flight_does_not_fail():
    """One thread enters and leaves captures, so the hooks come and go all the time; another runs the
    model plainly, with a hook of its user's own that yields the interpreter (as any hook doing I/O
    does). Torch reads the hooks, runs the user's, then asks which take kwargs: by then the capture's
    may have gone, and it is called the other way. That must not fail the user's forward."""
    net = _net()
    stop = threading.Event()
    failures: list[str] = []
    pause = lambda *_: time.sleep(1e-4)  # noqa: E731
    users = [m.register_forward_pre_hook(pause) for m in net.modules()]
    users += [m.register_forward_hook(pause) for m in net.modules()]

    def plain() -> None:
        x = torch.randn(1, 16, 4, 4)
        while not stop.is_set():
            try:
                with torch.no_grad():
                    _run(net, x)
            except Exception as error:
                failures.append(repr(error))

    runner = threading.Thread(target=plain)
    runner.start()
    x = torch.randn(1, 16, 4, 4)
    try:
        for _ in range(200):
            with torch.no_grad(), sa.capture(net):
                _run(net, x)
    finally:
        stop.set()
        runner.join()
        for handle in users:
            handle.remove()
    assert failures == []


def test_captures_of_one_model_share_one_set_of_hooks():
    """Twenty users capturing one model cost one hook pair per module, not twenty."""
    net = _net()
    modules = len(list(net.modules()))
    with sa.capture(net), sa.capture(net):
        both = _hook_count(net)
    assert both == 2 * modules + _taps(net)
    assert _hook_count(net) == 0


def _taps(net: nn.Module) -> int:
    with sa.capture(net):
        return _hook_count(net) - 2 * len(list(net.modules()))


def test_nested_captures_of_one_model_both_record():
    net = _net()
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad(), sa.capture(net) as outer:
        _run(net, x)
        with sa.capture(net) as inner:
            _run(net, x)
        assert _hook_count(net) > 0  # the outer capture still holds the hooks
    assert [len(outer.layers), len(inner.layers)] == [4, 2]
    assert _hook_count(net) == 0


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_reruns_are_not_counted(reentrant):
    net = _net().train()
    x = torch.randn(1, 16, 4, 4, requires_grad=True)
    with sa.capture(net) as cap:
        out = checkpoint(_run, net, x, use_reentrant=reentrant)
        out.sum().backward()
    assert cap.layers.names() == ["0", "1"]


def test_include_exclude_and_numbering():
    net, x = _net(), torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        with sa.capture(net, include="1") as only_sagan:
            _run(net, x)
            _run(net, x)
        with sa.capture(net, exclude=["1*"]) as no_sagan:
            _run(net, x)
    assert only_sagan.layers.names() == ["1", "1#2"]
    assert no_sagan.layers.names() == ["0"]


class Tokens(nn.Module):
    """Receives an image and attends over ``count`` tokens of its own making (a ViT-like layer)."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        t = torch.randn(1, 1, self.count, 8)
        return F.scaled_dot_product_attention(t, t, t)


def _grid_of(count: int, image_hw: tuple[int, int], **kwargs) -> sa.AttentionLayer:
    model = Tokens(count)
    with sa.capture(model, **kwargs) as cap:
        model(torch.randn(1, 3, *image_hw))
    return cap.layers[0]


def test_grid_inference_from_aspect_ratio_and_override():
    layer = _grid_of(2 + 72, (60, 120))  # 2 special tokens + a 6x12 grid, on a 1:2 image
    assert layer.query_grid == (6, 12) and layer.queries.labels == ("CLS", "special 1")
    assert "aspect" in layer.queries.note and "ambiguous" not in layer.queries.note
    layer = _grid_of(2 + 72, (60, 120), grid=(8, 9))  # the caller knows better
    assert layer.query_grid == (8, 9) and layer.queries.labels == ("CLS", "special 1")


def test_ambiguous_or_impossible_grids_say_so():
    layer = _grid_of(17, (16, 16))  # 4x4 + CLS, or 3x3 + 8 special tokens
    assert layer.query_grid == (4, 4) and "ambiguous" in layer.queries.note
    assert "grid=" in layer.queries.note
    layer = _grid_of(100, (10, 30))  # no 1:3 grid has 92..100 cells
    assert layer.query_grid is None and "grid=" in layer.queries.note


def test_capture_cannot_be_entered_twice():
    cap = sa.capture(_net())
    with cap, pytest.raises(RuntimeError, match="already active"), cap:
        pass


def test_importing_the_engine_loads_no_ui_or_diffusers():
    """The engine works in a notebook or a training script: no gradio, matplotlib or diffusers."""
    import subprocess
    import sys

    code = "import sys, spatial_attn; print(sorted({'gradio', 'matplotlib', 'diffusers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
