"""Uploads: every kind of bad or unusual file gets a clear message or a noted conversion."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatial_attn.images import ImageError, load_image


def _save(tmp_path: Path, image: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` but which holds only a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not pixels")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "weights.png"
    path.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 4)  # a pickle dressed as a PNG
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)


def test_truncated(tmp_path):
    full = _save(tmp_path, Image.fromarray(np.random.randint(0, 255, (64, 64, 3), np.uint8)), "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:400])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(cut)


def test_over_50_megapixels_refused_before_decoding(tmp_path):
    # only a header: had the pixels been decoded, the message would say "truncated"
    path = _png_header_only(tmp_path / "huge.png", 10_000, 6_000)
    with pytest.raises(ImageError, match="60 megapixels"):
        load_image(path)


def test_one_pixel(tmp_path):
    with pytest.raises(ImageError, match="1x1"):
        load_image(_save(tmp_path, Image.new("RGB", (1, 1)), "dot.png"))


def test_rgba_flattened_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image, notes = load_image(_save(tmp_path, rgba, "clear.png"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    assert any("transparency" in n for n in notes)


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.info["transparency"] = 0
    image, notes = load_image(_save(tmp_path, palette, "pal.png", transparency=0))
    assert image.getpixel((0, 0)) == (0, 200, 0) and any("palette" in n for n in notes)


def test_sixteen_bit_grayscale_scaled(tmp_path):
    values = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    image, notes = load_image(_save(tmp_path, Image.fromarray(values), "deep.png"))
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.max() == 255 and pixels.min() == 0
    assert any("8 bits" in n for n in notes)


def test_cmyk(tmp_path):
    image, notes = load_image(_save(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "print.jpg"))
    r, g, b = image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60 and any("CMYK" in n for n in notes)


def test_exif_rotation_applied(tmp_path):
    wide = Image.new("RGB", (32, 16), (0, 0, 0))
    wide.paste((255, 0, 0), (0, 0, 16, 16))  # the left half of the stored pixels is red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image, notes = load_image(_save(tmp_path, wide, "phone.jpg", exif=exif, quality=95))
    assert image.size == (16, 32) and any("EXIF" in n for n in notes)
    assert image.getpixel((8, 4))[0] > 200 and image.getpixel((8, 28))[0] < 60  # red now on top
