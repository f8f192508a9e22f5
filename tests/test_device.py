"""``--device``/``--dtype`` and ``load_model(..., device=, dtype=)``: a model runs where it is put, with
everything it makes, and a device this machine lacks is one clear line, not a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import spatial_attn as sa
from spatial_attn.analysis.explore import Exploration, View
from spatial_attn.cli import main
from spatial_attn.models.placement import place
from spatial_attn.resources import locate

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@NO_CUDA
@pytest.mark.parametrize("command", ["export", "serve"])
def test_cuda_on_a_machine_without_it_is_one_clear_line(command: str, tmp_path, capsys) -> None:
    out = ["--out", str(tmp_path / "a.zip")] if command == "export" else []
    with pytest.raises(SystemExit) as stop:
        main([command, "--device", "cuda", "--dtype", "float16", *out])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err and "--device cpu" in err
    assert not list(tmp_path.iterdir())  # nothing was run or written


def test_placement_names() -> None:
    assert place().device == torch.device("cpu") and place().dtype == torch.float32  # the default
    assert place("auto", "bf16").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert place("cpu", "float16").dtype == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        place("cpu", "int8")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        place("gpu")


def test_the_default_stays_cpu_float32() -> None:
    model = sa.load_model("vit-faces")
    assert model.placement == place("cpu", "float32")


@pytest.mark.parametrize("name", ["vit-faces", "ddpm-faces", "sagan-faces"])
def test_a_bundled_model_in_bfloat16_runs_end_to_end_and_its_click_matches_float32(name: str) -> None:
    """Inputs, noise and the forward in bfloat16; every layer verified (the tolerance knows bf16); the
    click's maps are those of the float32 model within bfloat16's rounding."""
    face = Image.open(locate("assets") / "faces" / "valid-0.png")
    runs = {}
    for dtype in ("float32", "bfloat16"):
        model = sa.load_model(name, dtype=dtype)
        assert next(model.module.parameters()).dtype == getattr(torch, dtype)
        ex = Exploration(model, face, timestep=400 if model.num_timesteps else None, seed=3)
        assert all(t.dtype == getattr(torch, dtype) for t in ex.prepared.args if t.is_floating_point())
        assert ex.layers and all(layer.verified is True for layer in ex.layers)
        runs[dtype] = ex.click((10, 20), ex.image_hw, View(), draw=False)
    for full, half in zip(runs["float32"], runs["bfloat16"], strict=True):
        assert half.values.dtype == np.float32 and half.cell == full.cell
        np.testing.assert_allclose(half.values, full.values, atol=0.05 * full.values.max() + 1e-3)


@pytest.mark.parametrize("kind", ["vit", "sd", "dit"])
def test_your_own_folder_in_bfloat16_runs_end_to_end(kind: str, tmp_path) -> None:
    """A transformers classifier, a Stable Diffusion pipeline (VAE and text encoder moved with its UNet)
    and a DiT, opened as ``--model FOLDER --dtype bfloat16`` opens them: inputs placed, layers verified."""
    import tiny_models

    from spatial_attn.cli import open_models

    folder = {"vit": tiny_models.vit_classifier, "sd": tiny_models.sd_pipeline, "dit": tiny_models.dit}[kind](
        tmp_path / kind
    )
    (model,) = open_models([[str(folder), None]], placement=place("cpu", "bfloat16"))
    assert next(model.module.parameters()).dtype == torch.bfloat16
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    ex = Exploration(model, image, timestep=300 if model.num_timesteps else None, seed=1)
    floating = [t for t in (*ex.prepared.args, *ex.prepared.kwargs.values()) if isinstance(t, torch.Tensor)]
    assert all(t.dtype == torch.bfloat16 for t in floating if t.is_floating_point())
    assert ex.layers and all(layer.verified is True for layer in ex.layers)
    assert all(np.isfinite(c.values).all() for c in ex.click((5, 7), ex.image_hw, View(), draw=False))


def test_folders_are_read_in_the_dtype_by_their_own_library(tmp_path) -> None:
    """``from_pretrained(torch_dtype=...)``, not a float32 load cast afterwards."""
    import tiny_models

    from spatial_attn.models.sources import open_model

    vit = open_model(str(tiny_models.vit_classifier(tmp_path / "vit")), dtype=torch.bfloat16)
    sd = open_model(str(tiny_models.sd_pipeline(tmp_path / "sd")), dtype=torch.bfloat16)
    for module in (vit.module, sd.module, sd.vae, sd.text.encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert next(open_model(str(tmp_path / "vit")).module.parameters()).dtype == torch.float32  # default
