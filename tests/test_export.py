"""Exports of one click: the zip's arrays are the rows written out from q and k here, the figure is a
real PNG and SVG naming every layer, and the command line gives the same as the app's button."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from spatial_attn.analysis.explore import Exploration, View
from spatial_attn.analysis.export import export_zip
from spatial_attn.cli import main
from spatial_attn.models import load_model


@pytest.fixture(scope="module")
def ddpm() -> Exploration:
    from spatial_attn.app.blocks import default_image

    return Exploration(load_model("ddpm-faces"), default_image()[0], timestep=250, seed=0)


def _reference_row(layer, cell: tuple[int, int]) -> np.ndarray:
    """Head mean of softmax(q_i k^T), from the stored q and k, on the key grid."""
    qw = layer.query_grid[1]
    q, k = layer.q[0].double(), layer.k[0].double()  # (h, N, d), (h, N', d)
    i = cell[0] * qw + cell[1]
    probs = torch.softmax(torch.einsum("hd,hnd->hn", q[:, i], k), -1).mean(0)
    return probs.numpy().reshape(layer.key_grid)


def _open(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(data))


def test_the_zip_holds_the_figure_and_every_layers_row(ddpm):
    archive = _open(export_zip(ddpm, (13, 9), View()))
    names = archive.namelist()
    assert names[:2] == ["figure.png", "figure.svg"] and names[-3:] == [
        "input.png",
        "rows.json",
        "index.html",
    ]
    described = json.loads(archive.read("rows.json"))
    assert described["pixel"] == [13, 9] and len(described["layers"]) == len(ddpm.layers)
    for layer, entry in zip(ddpm.layers, described["layers"], strict=True):
        cell = tuple(entry["cell"])
        assert entry["name"] == layer.name and cell == (
            13 * layer.query_grid[0] // 32,
            9 * layer.query_grid[1] // 32,
        )
        row = np.load(io.BytesIO(archive.read(entry["file"])))
        assert row.dtype == np.float32 and row.shape == layer.key_grid
        np.testing.assert_allclose(row, _reference_row(layer, cell), atol=1e-6)
    png = Image.open(io.BytesIO(archive.read("figure.png")))
    assert png.format == "PNG" and png.width > 1000
    svg = archive.read("figure.svg").decode()
    assert svg.startswith("<?xml") and all(layer.name in svg for layer in ddpm.layers) and "uniform" in svg


def test_only_the_formats_asked_for(ddpm):
    assert _open(export_zip(ddpm, (0, 0), View(), ("npy",))).namelist()[-1] == "rows.json"
    assert _open(export_zip(ddpm, (0, 0), View(heads_grid=True), ("png",))).namelist() == ["figure.png"]
    with pytest.raises(ValueError, match="formats must be some of png, svg, npy"):
        export_zip(ddpm, (0, 0), View(), ("pdf",))


def test_exporting_loads_matplotlib_only_when_it_draws():
    code = "import sys, spatial_attn.analysis.export, spatial_attn.cli; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_command_line_writes_the_same_rows_as_the_app(ddpm, tmp_path):
    out = tmp_path / "click.zip"
    assert main(["export", "--x", "9", "--y", "13", "--formats", "npy", "--out", str(out)]) == 0
    from_cli = _open(out.read_bytes())
    from_app = _open(export_zip(ddpm, (13, 9), View(), ("npy",)))
    assert from_cli.namelist() == from_app.namelist()
    for name in from_cli.namelist():
        assert from_cli.read(name) == from_app.read(name)


def test_the_command_line_reaches_the_sagan_generator(tmp_path):
    out = tmp_path / "gen.zip"
    assert (
        main(
            [
                "export",
                "--model",
                "sagan-faces",
                "--generate",
                "--seed",
                "3",
                "--formats",
                "npy",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    layers = json.loads(_open(out.read_bytes()).read("rows.json"))["layers"]
    assert [layer["name"] for layer in layers] == ["generator.attn"]


def test_the_download_button_writes_the_zip(ddpm):
    from spatial_attn.app.blocks import view_of
    from spatial_attn.app.views.download import DownloadView

    controls = (
        "head 1",
        "row: where it looks",
        "magma",
        "per map",
        "nearest",
        0.5,
        "layers × heads",
        "image",
    )
    path = DownloadView.export(view_of, SimpleNamespace(exploration=ddpm, point=(13, 9)), *controls)
    assert path.endswith("ddpm-faces-y13-x9.zip")
    described = json.loads(_open(Path(path).read_bytes()).read("rows.json"))
    assert described["head"] == "head 1" and described["pixel"] == [13, 9]


# -- what an export says about itself --------------------------------------------------------------
def test_rows_json_and_the_title_say_what_made_the_maps(tmp_path):
    """The provenance fields are those of the request, the input is the picture the model saw, and the
    figure's title says the same (read back from the SVG's text)."""
    import spatial_attn

    out = tmp_path / "p.zip"
    args = ["export", "--x", "9", "--y", "13", "--timestep", "600", "--seed", "7", "--head", "head 1"]
    assert main([*args, "--mode", "column", "--scale", "per-map", "--out", str(out)]) == 0
    archive = _open(out.read_bytes())
    described = json.loads(archive.read("rows.json"))
    expected = {"model": "ddpm-faces", "pretrained": True, "timestep": 600, "seed": 7, "pixel": [13, 9]}
    assert {k: described[k] for k in expected} == expected
    assert (described["head"], described["mode"]) == ("head 1", "column")
    assert described["version"] == spatial_attn.__version__ and described["input"] == "input.png"
    from spatial_attn.app.blocks import default_image

    again = Exploration(load_model("ddpm-faces"), default_image()[0], timestep=600, seed=7)
    saw = np.asarray(Image.open(io.BytesIO(archive.read("input.png"))))
    np.testing.assert_array_equal(saw, again.input)  # x_t at t = 600 with noise seed 7
    heading = "ddpm-faces · t = 600 · seed 7 · pixel (y, x) = (13, 9) · head 1 · column: who looks at it"
    svg = archive.read("figure.svg").decode()
    svg_text = " ".join(re.findall(r"<!-- (.*?) -->", svg))  # matplotlib writes each text as a comment
    assert f"{heading} · spatial-attn {spatial_attn.__version__}" in svg_text
    assert "index.html" in archive.namelist()


def test_an_untrained_twin_is_said_so(ddpm, tmp_path):
    out = tmp_path / "twin.zip"
    assert main(["export", "--model", "ddpm-faces (untrained)", "--formats", "npy", "--out", str(out)]) == 0
    described = json.loads(_open(out.read_bytes()).read("rows.json"))
    assert described["model"] == "ddpm-faces" and described["pretrained"] is False


def test_export_opens_your_own_folder_as_serve_does(tmp_path):
    import tiny_models

    folder = tiny_models.ddpm_pipeline(tmp_path / "ddpm")
    out = tmp_path / "own.zip"
    assert (
        main(["export", "--model", str(folder), "--timestep", "10", "--formats", "npy", "--out", str(out)])
        == 0
    )
    described = json.loads(_open(out.read_bytes()).read("rows.json"))
    assert described["model"] == "ddpm" and described["timestep"] == 10
    assert [layer["name"] for layer in described["layers"]] == [
        "down_blocks.1.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--x", "40", "--y", "3"], "point (3.0, 40.0) is outside the 32x32 image"),
        (["--head", "first"], "head must be 'mean', 'max' or 'head k'"),
        (["--model", "/no/such/folder"], "/no/such/folder"),
    ],
)
def test_a_request_it_cannot_answer_is_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "bad.zip"
    try:
        status = main(["export", *extra, "--out", str(out)])
    except SystemExit as stopped:  # a --model spec that cannot be opened stops before any run
        status = stopped.code
    err = capsys.readouterr().err.strip()
    assert status == 2 and message in err, err
    assert "\n" not in err and "Traceback" not in err and not out.exists()


def test_scale_names_have_ascii_spellings():
    from spatial_attn.analysis.render import SCALES, scale_named

    assert [scale_named(n) for n in ("uniform", "per-map", "shared", "percentile")] == list(SCALES)
    assert [scale_named(n) for n in SCALES] == list(SCALES)
    with pytest.raises(ValueError, match="choose one of uniform, per-map, shared, percentile"):
        scale_named("log")


def test_an_in_painter_export_says_which_eye_is_masked(tmp_path):
    """The in-painter sees one eye as mask tokens: the figure says so under its panels, as the app's
    note does, and rows.json carries the same note."""
    out = tmp_path / "inpaint.zip"
    assert main(["export", "--model", "vit-inpaint", "--formats", "svg,npy", "--out", str(out)]) == 0
    archive = _open(out.read_bytes())
    note = json.loads(archive.read("rows.json"))["input_note"]
    assert "eye masked" in note and "mask token" in note
    svg_text = " ".join(re.findall(r"<!-- (.*?) -->", archive.read("figure.svg").decode()))
    assert note in svg_text
