"""Uploads: every kind of bad or unusual file gets a clear message or a noted conversion."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatial_attn.app import images
from spatial_attn.app.images import ImageError, load_image


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


class _Marker:
    """Unpickling this creates ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(marker))
    pickle.loads(payload)  # the payload works: loading it makes the marker
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "weights.png"
    path.write_bytes(payload)  # a working pickle dressed as a PNG
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)
    assert not marker.exists()


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
    palette.paste(0, (0, 0, 4, 8))  # the left half uses the transparent index
    image, notes = load_image(_save(tmp_path, palette, "pal.png", transparency=0))
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent black became white
    assert image.getpixel((6, 0)) == (0, 200, 0)
    assert any("palette" in n for n in notes) and any("transparency" in n for n in notes)


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


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "gone.png")


def test_decompression_bomb_gets_our_message(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)  # over twice Pillow's own limit
    with pytest.raises(ImageError, match=r"declares more than \d+ megapixels; the limit is 50"):
        load_image(path)


def test_thin_image_refused_whichever_side_is_short(tmp_path):
    with pytest.raises(ImageError, match="1x4000"):
        load_image(_save(tmp_path, Image.new("RGB", (1, 4000)), "line.png"))
    with pytest.raises(ImageError, match="4000x2"):
        load_image(_save(tmp_path, Image.new("RGB", (4000, 2)), "row.png"))


def test_upload_over_the_size_cap(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.fromarray(np.random.randint(0, 255, (64, 64, 3), np.uint8)), "n.png")
    monkeypatch.setattr(images, "MAX_UPLOAD_MB", path.stat().st_size / 2**20 / 2)
    with pytest.raises(ImageError, match="MB; the limit is"):
        load_image(path)


def test_decoded_size_over_budget_refused_before_decoding(tmp_path):
    path = _png_header_only(tmp_path / "wide.png", 4_000, 2_000)  # 8 MP: 32 MB once decoded
    with pytest.raises(ImageError, match="would take 31 MB to decode"):
        load_image(path)


def test_all_black_sixteen_bit_stays_black(tmp_path):
    image, _ = load_image(_save(tmp_path, Image.fromarray(np.zeros((8, 8), np.uint16)), "night.png"))
    assert np.asarray(image).max() == 0


def test_invalid_exif_orientation_is_said_not_rotated(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 9
    image, notes = load_image(_save(tmp_path, Image.new("RGB", (32, 16)), "odd.jpg", exif=exif))
    assert image.size == (32, 16)
    assert any("orientation 9 is not valid" in n for n in notes)
    assert not any("rotated" in n for n in notes)


def test_animated_gif_says_which_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "blink.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image, notes = load_image(path)
    assert image.getpixel((0, 0))[0] > 200 and "the first of its 2 frames" in notes


def test_large_images_are_reduced_before_conversion(tmp_path):
    wide = Image.new("RGB", (4100, 1000), (10, 20, 30))
    image, notes = load_image(_save(tmp_path, wide, "wide.png"))
    assert max(image.size) <= images.WORK_SIDE and image.getpixel((0, 0)) == (10, 20, 30)
    assert any("reduced from 4100x1000" in n for n in notes)


_PEAK = """
import resource, sys
from spatial_attn.app.images import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_image(sys.argv[1])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize(
    ("mode", "size"),
    [("I;16", (3400, 3400)), ("RGBA", (2400, 2500)), ("RGB", (2400, 2500)), ("JPEG", (8000, 6000))],
)
def test_an_accepted_upload_costs_under_64_mb(tmp_path, mode, size):
    """The largest uploads still accepted, each decoded in a fresh interpreter: its peak memory."""
    w, h = size
    if mode == "JPEG":
        path = _save(tmp_path, Image.new("RGB", size, (90, 120, 150)), "photo.jpg", quality=80)
    else:
        ramp = np.linspace(0, 60000 if mode == "I;16" else 255, w * h).reshape(h, w)
        if mode == "I;16":
            picture = Image.fromarray(ramp.astype(np.uint16))
        else:
            picture = Image.fromarray(np.repeat(ramp[..., None], len(mode), -1).astype(np.uint8), mode)
        path = _save(tmp_path, picture, "big.png")
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 64
