"""The bundled models load without unpickling, run as the app runs them, and show named attention.

Each model is loaded trained and as its random twin, and one forward is captured with the engine:
the layer names and grids must be the ones the model cards and the app promise.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spatial_attn as sa
from spatial_attn.data import KINDS
from spatial_attn.models import available_models, load_model
from spatial_attn.models.bundle import CHECKPOINTS, NOT_SHOWN

FACE = Path(__file__).resolve().parents[1] / "assets" / "faces" / "valid-0.png"

DDPM_LAYERS = {
    "down_blocks.1.attentions.0": (16, 16),
    "down_blocks.2.attentions.0": (8, 8),
    "mid_block.attentions.0": (8, 8),
    "up_blocks.0.attentions.0": (8, 8),
    "up_blocks.0.attentions.1": (8, 8),
    "up_blocks.1.attentions.0": (16, 16),
    "up_blocks.1.attentions.1": (16, 16),
}


@pytest.fixture(scope="module", params=[True, False], ids=["trained", "twin"])
def models(request):
    """Every bundled model, loaded once per module with pickle made unusable while loading."""
    with pytest.MonkeyPatch.context() as mp:
        for mod, fn in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
            mp.setattr(mod, fn, _forbidden(f"{mod.__name__}.{fn}"))
        return {name: load_model(name, pretrained=request.param) for name in available_models()}


def _forbidden(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} called: bundled models must load from safetensors and JSON only")

    return refuse


def _captured(bm, prepared) -> tuple[list, dict]:
    with sa.capture(bm.module) as cap, torch.no_grad():
        summary = bm.run(prepared)
    return list(cap.layers), summary


def _face() -> Image.Image:
    return Image.open(FACE)


def test_available_models_and_unknown_name():
    assert available_models() == ["ddpm-faces", "sagan-faces", "vit-faces", "vit-inpaint"]
    with pytest.raises(ValueError, match="choose one of"):
        load_model("gpt-faces")


def test_checkpoints_are_small_and_pickle_free():
    for name in (*available_models(), *NOT_SHOWN):
        files = [f for f in (CHECKPOINTS / name).rglob("*") if f.is_file()]
        assert sum(f.stat().st_size for f in files) <= 20 * 2**20, name
        assert any(f.suffix == ".safetensors" for f in files), name
        assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}], name
        assert (CHECKPOINTS / name / "README.md").exists(), name


def test_module_is_eval_cpu(models):
    for bm in models.values():
        assert not bm.module.training
        assert all(p.device.type == "cpu" for p in bm.module.parameters())
        assert bm.image_size == 32


def test_vit_layers_and_probs(models):
    bm = models["vit-faces"]
    prepared = bm.prepare(_face().resize((80, 60)))
    assert prepared.display.shape == (32, 32, 3) and prepared.display.dtype == np.uint8
    assert "80x60 -> 43x32, centre-cropped to 32x32 (fit: crop)" in prepared.note  # its shape kept
    layers, summary = _captured(bm, prepared)
    assert [layer.name for layer in layers] == [f"blocks.{i}.self_attn" for i in range(len(layers))]
    assert len(layers) >= 2
    for layer in layers:
        assert layer.query_grid == layer.key_grid == (8, 8)
        assert layer.heads == bm.config["heads"]
        row = layer.row(2, 3)
        assert row.shape == (8, 8) and 0 < row.sum() <= 1 + 1e-5  # CLS mass is left out
    assert list(summary["probs"]) == bm.labels == list(KINDS)
    assert abs(sum(summary["probs"].values()) - 1) < 1e-3
    with pytest.raises(ValueError, match="needs an image"):
        bm.prepare(None)
    with pytest.raises(ValueError):
        bm.sample(0)


def test_inpaint_layers_with_the_left_eye_masked(models):
    bm = models["vit-inpaint"]
    prepared = bm.prepare(_face())
    assert "left eye masked" in prepared.note and prepared.kwargs["mask"].sum() >= 4
    layers, summary = _captured(bm, prepared)
    assert [layer.name for layer in layers] == [f"blocks.{i}.self_attn" for i in range(bm.config["depth"])]
    for layer in layers:
        assert layer.query_grid == layer.key_grid == (8, 8) and layer.heads == bm.config["heads"]
        assert abs(layer.row(3, 2).sum() - 1) < 1e-5  # no CLS: the whole row is on the grid
    assert summary == {"masked_patches": int(prepared.kwargs["mask"].sum())}


def test_ddpm_layers_on_a_noised_image(models):
    bm = models["ddpm-faces"]
    prepared = bm.prepare(_face(), timestep=250, seed=3)
    assert "t=250" in prepared.note and prepared.display.shape == (32, 32, 3)
    layers, summary = _captured(bm, prepared)
    assert {layer.name: layer.query_grid for layer in layers} == DDPM_LAYERS
    assert all(layer.key_grid == layer.query_grid for layer in layers)
    assert summary == {"timestep": 250}
    assert layers[0].row(8, 4).shape == (16, 16)
    with pytest.raises(ValueError, match="timestep"):
        bm.prepare(_face(), timestep=bm.num_timesteps)


def test_ddpm_samples_then_noises_without_an_image(models):
    bm = models["ddpm-faces"]
    if not bm.pretrained:
        pytest.skip("the twin samples with the same code; once is enough (sampling is the slow part)")
    a, b = bm.prepare(seed=5), bm.prepare(seed=5)
    np.testing.assert_array_equal(a.display, b.display)  # the seed fixes the sample and the noise
    assert f"t={bm.num_timesteps // 2}" in a.note
    assert bm.sample(seed=0, n=2).shape == (2, 32, 32, 3)


def test_sagan_generator_and_discriminator(models):
    bm = models["sagan-faces"]
    gen = bm.prepare(seed=4)
    layers, summary = _captured(bm, gen)
    assert [(layer.name, layer.query_grid, layer.key_grid) for layer in layers] == [
        ("generator.attn", (16, 16), (16, 16))
    ]
    assert summary == {}
    np.testing.assert_array_equal(gen.display, bm.sample(seed=4)[0])  # display = what G drew
    layers, summary = _captured(bm, bm.prepare(_face()))
    assert [(layer.name, layer.query_grid) for layer in layers] == [("discriminator.attn", (16, 16))]
    assert isinstance(summary["score"], float)


def test_twin_is_fixed_and_differs_from_the_trained_model():
    for name in available_models():
        trained, twin, again = load_model(name), load_model(name, False), load_model(name, False)
        t, r, r2 = (m.module.state_dict() for m in (trained, twin, again))
        assert all(torch.equal(r[k], r2[k]) for k in r), name
        assert any(not torch.equal(t[k], r[k]) for k in t if t[k].is_floating_point()), name


def test_ddpm_opens_with_plain_diffusers():
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(CHECKPOINTS / "ddpm-faces", use_safetensors=True)
    assert pipe.unet.config.sample_size == 32
