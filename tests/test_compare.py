"""The compare tab: two models' rows for the same click, each equal to a capture of that model made
directly on the same image, timestep and seed (the untrained twin by default)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import spatial_attn as sa
from spatial_attn.analysis.explore import Exploration, View
from spatial_attn.app.blocks import UNTRAINED, Library, default_image
from spatial_attn.app.views.compare import CompareView


@pytest.fixture(scope="module")
def view() -> CompareView:
    import gradio as gr

    with gr.Blocks():
        return CompareView(Library(), UNTRAINED)


FACE = default_image()[0]


def _session(name: str, library: Library, source=FACE, seed: int = 0) -> SimpleNamespace:
    model = library[name]
    ex = Exploration(model, source, timestep=250 if model.num_timesteps else None, seed=seed)
    return SimpleNamespace(exploration=ex, source=source, point=(13, 9))


def test_the_trained_model_is_compared_with_its_twin_by_default(view):
    session = _session("ddpm-faces", view.library)
    first, second, body = view.show(session, None, None, View())
    assert (first.value, second.value) == ("ddpm-faces", "ddpm-faces" + UNTRAINED)
    assert body.count('data-model="') == 2 and body.count("<figure") == 2 * len(session.exploration.layers)
    twin = view.library["ddpm-faces" + UNTRAINED]
    prepared = twin.prepare(session.source, timestep=250, seed=0)
    with torch.no_grad(), sa.capture(twin.module) as cap:
        twin.run(prepared)
    ran = view._run(session, "ddpm-faces" + UNTRAINED)  # the twin shares the trained model's name
    assert ran is not session.exploration and ran.model is twin
    assert view._run(session, "ddpm-faces" + UNTRAINED) is ran  # kept: later clicks only read rows
    for layer, direct in zip(ran.layers, cap.layers, strict=True):
        q, k = direct.q[0].double(), direct.k[0].double()
        i = 6 * 16 + 4 if direct.query_grid == (16, 16) else 3 * 8 + 2
        expected = torch.softmax(torch.einsum("hd,hnd->hn", q[:, i], k), -1).mean(0).numpy()
        cell = divmod(i, direct.query_grid[1])
        np.testing.assert_allclose(layer.row(*cell), expected.reshape(direct.key_grid), atol=1e-6)


def test_any_two_models_and_a_generated_face(view):
    session = _session("sagan-faces", view.library, source=None, seed=3)  # the SAGAN generator
    first, second, body = view.show(session, "sagan-faces", "vit-faces", View())
    assert (first.value, second.value) == ("sagan-faces", "vit-faces")
    assert 'data-layer="generator.attn"' in body and 'data-layer="blocks.3.self_attn"' in body
    assert view.twin_of("vit-faces" + UNTRAINED) == "vit-faces"
