"""Uploads keep their shape: a 640x480 photo of a round sun is centre-cropped for the square bundled
models by default (the sun stays round), or stretched, or padded when asked; the note, ``/attend`` and
the pixel mapping all follow the same geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from spatial_attn.analysis.explore import Exploration
from spatial_attn.models import load_model
from spatial_attn.models.bundle import FITS

SIZE = (640, 480)  # (width, height) of the photo


def _sun() -> Image.Image:
    """A white disc of radius 160 px at the centre of a black 640x480 photo."""
    photo = Image.new("RGB", SIZE, (0, 0, 0))
    ImageDraw.Draw(photo).ellipse([320 - 160, 240 - 160, 320 + 160, 240 + 160], fill=(255, 255, 255))
    return photo


def _extent(pixels: np.ndarray) -> tuple[int, int]:
    """Height and width, in input pixels, of the bright disc."""
    bright = pixels.mean(-1) > 127
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.fixture(scope="module")
def ddpm():
    return load_model("ddpm-faces")


def test_the_default_crop_keeps_a_round_sun_round(ddpm):
    _, pixels, note = ddpm.to_input(_sun())
    h, w = _extent(pixels)
    assert abs(h - w) <= 1 and h == pytest.approx(32 * 320 / 480, abs=1.5)  # 480 px -> 32: the disc is 21
    assert note == "resized 640x480 -> 43x32, centre-cropped to 32x32 (fit: crop)"


def test_stretch_and_pad_are_said_and_shaped_as_named(ddpm):
    _, stretched, note = ddpm.with_fit("stretch").to_input(_sun())
    h, w = _extent(stretched)
    assert w < h - 3 and note == "resized 640x480 -> 32x32, stretched (fit: stretch)"  # an ellipse
    _, padded, note = ddpm.with_fit("pad").to_input(_sun())
    h, w = _extent(padded)
    assert abs(h - w) <= 1 and note == "resized 640x480 -> 32x24, padded to 32x32 (fit: pad)"
    assert padded[:4].max() == 0 and padded[-4:].max() == 0  # black bars above and below
    with pytest.raises(ValueError, match="fit must be one of crop, stretch, pad"):
        ddpm.with_fit("zoom")
    assert ddpm.with_fit("crop") is ddpm and ddpm.with_fit("pad").module is ddpm.module


@pytest.mark.parametrize("fit", FITS)
def test_a_pixel_of_the_photo_lands_where_the_input_shows_it(ddpm, fit):
    """The disc's centre and its left edge map to the input pixels that show them; under the crop a
    pixel it cut away is refused, saying so."""
    model = ddpm.with_fit(fit)
    _, pixels, _ = model.to_input(_sun())
    y, x = model.input_pixel((240, 320), (480, 640))
    assert pixels[y, x].mean() > 200 and (y, x) == (16, 16)
    edge = model.input_pixel((240, 170), (480, 640))  # 10 px inside the disc's left edge
    assert pixels[edge].mean() > 127
    if fit == "crop":
        with pytest.raises(ValueError, match="cropped away"):
            model.input_pixel((240, 5), (480, 640))


def test_a_square_image_is_unchanged_by_the_fit(ddpm):
    from spatial_attn.app.blocks import default_image

    face = default_image()[0]
    pictures = {fit: ddpm.with_fit(fit).to_input(face)[1] for fit in FITS}
    assert all(np.array_equal(p, pictures["crop"]) for p in pictures.values())
    assert Exploration(ddpm, face, timestep=250).prepared.note.startswith("32x32 image")


def test_the_app_control_refits_the_upload_and_attend_says_which(tmp_path):
    from spatial_attn.app.blocks import Handlers, attend
    from spatial_attn.app.state import Library

    photo = tmp_path / "sun.png"
    _sun().save(photo)
    handlers = Handlers(Library(["ddpm-faces"]))
    view = ("mean", "row: where it looks", "viridis", "per map", "nearest", 0.65, "per layer", "image")
    out = dict(
        zip(Handlers.RERAN, handlers.uploaded(None, str(photo), "ddpm-faces", 250, 0, *view), strict=True)
    )
    assert "centre-cropped to 32x32 (fit: crop)" in out["note"] and "640×480" in out["note"]
    padded = dict(
        zip(Handlers.RERAN, handlers.refit(out["state"], "pad", "ddpm-faces", 250, 0, *view), strict=True)
    )
    assert "padded to 32x32 (fit: pad)" in padded["note"] and padded["state"].fit == "pad"
    assert padded["state"].source is out["state"].source  # the upload itself, made square anew
    _, rows = attend(handlers.library, str(photo), "ddpm-faces", 250, 320, 240)
    # the app keeps an upload at 256 px at most (said in its notes), then the model makes it square
    assert rows["input_note"].startswith("resized 256x192 -> 43x32, centre-cropped to 32x32 (fit: crop)")
    assert rows["model_pixel"] == [16, 16]
