"""One pixel's row across diffusion timesteps: each frame equals a capture made directly at that t
(same image, same noise seed), and the tab draws them as a filmstrip and an animated GIF."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import spatial_attn as sa
from spatial_attn.analysis import timesteps
from spatial_attn.analysis.explore import Exploration
from spatial_attn.models import load_model


def _face() -> Image.Image:
    from spatial_attn.app.blocks import default_image

    return default_image()[0]


def test_spread_covers_both_ends():
    assert timesteps.spread(10, 1000) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert timesteps.spread(1, 1000) == [0]
    with pytest.raises(ValueError, match="at least 1"):
        timesteps.spread(0, 1000)


def test_each_frame_is_the_row_of_a_capture_at_its_timestep():
    model = load_model("ddpm-faces")
    name = "up_blocks.1.attentions.0"
    frames = timesteps.rows_across(model, _face(), name, (13, 9), [10, 500, 990], seed=4)
    assert [f.timestep for f in frames] == [10, 500, 990]
    for frame in frames:
        prepared = model.prepare(_face(), timestep=frame.timestep, seed=4)
        with torch.no_grad(), sa.capture(model.module) as cap:
            model.run(prepared)
        layer = cap.layers[name]
        q, k = layer.q[0].double(), layer.k[0].double()
        i = 6 * 16 + 4  # pixel (13, 9) on the 16 x 16 grid
        expected = torch.softmax(torch.einsum("hd,hnd->hn", q[:, i], k), -1).mean(0).reshape(16, 16)
        assert frame.cell == (6, 4)
        np.testing.assert_allclose(frame.values, expected.numpy(), atol=1e-6)
        np.testing.assert_array_equal(frame.picture, prepared.display)
    assert frames[0].entropy < frames[-1].entropy  # noise spreads attention out


def test_models_without_timesteps_are_refused():
    with pytest.raises(ValueError, match="no timesteps"):
        timesteps.rows_across(load_model("vit-faces"), _face(), "blocks.0.self_attn", (0, 0), [0])


def test_the_tab_draws_a_filmstrip_and_a_gif():
    from spatial_attn.app.views.timesteps import TimestepsView

    ex = Exploration(load_model("ddpm-faces"), _face(), timestep=250, seed=0)
    session = SimpleNamespace(exploration=ex, point=(13, 9))
    strip, gif, note = TimestepsView.show(session, "mid_block.attentions.0", 4)
    assert strip.width == 4 * 192 + 3 * 6 and "t = 0, 333, 666, 999" in note
    with Image.open(gif) as animation:
        assert animation.n_frames == 4 and Path(gif).suffix == ".gif"
    vit = SimpleNamespace(exploration=Exploration(load_model("vit-faces"), _face()), point=(0, 0))
    assert TimestepsView.show(vit, "blocks.0.self_attn", 4)[2].endswith("for diffusion models.")
