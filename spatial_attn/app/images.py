"""Whatever a user uploads becomes an RGB image, or a short message saying why it cannot.

Files are decoded by Pillow only (nothing is ever unpickled). Every upload is served to many users
on one small machine, so what it may cost is bounded before a pixel is decoded: the file's size on
disk, its pixel count from the header, and the memory its decoded pixels would take (JPEGs are
decoded at a reduced scale, which costs nothing). Large images are then reduced before any
conversion, so no full-resolution copy is ever made. Every conversion (EXIF rotation, transparency,
palettes, 16-bit, CMYK, animation frames) is reported in a note: the user should know what the
model was actually shown.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

MAX_MEGAPIXELS = 50  # pixels the header may declare
MIN_SIDE = 4  # pixels on each side
#: Largest upload accepted, MB; ``SPATIAL_ATTN_MAX_UPLOAD_MB`` changes it (the app's upload route too).
MAX_UPLOAD_MB = float(os.environ.get("SPATIAL_ATTN_MAX_UPLOAD_MB", "20"))
#: Memory the decoded pixels may take, MB (Pillow's own layout: RGB is 4 bytes a pixel, so a PNG of
#: up to 6 megapixels; JPEGs are decoded at reduced scale first). Reducing an RGBA image costs about
#: as much again, so an upload's peak stays under 64 MB.
MAX_DECODED_MB = 24
#: Long side images are reduced to before conversion: the largest input any model here takes is 1024.
WORK_SIDE = 2048
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # others: 4
_STRIP = 256  # rows converted at a time
_ORIENTATIONS = range(1, 9)  # the eight EXIF orientations; anything else is invalid


class ImageError(ValueError):
    """An upload that cannot be used; the message is written for the person who uploaded it."""


def load_image(path: str | Path) -> tuple[Image.Image, list[str]]:
    """Decode an uploaded file into RGB (long side at most ``WORK_SIDE``), with notes on each
    conversion made."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ImageError(f"{name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"{name} is empty (0 bytes)")
    if size > MAX_UPLOAD_MB * 2**20:
        raise ImageError(f"{name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB:g} MB")
    image = _open(path)
    width, height = image.size
    if width * height > MAX_MEGAPIXELS * 1_000_000:
        raise ImageError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_MEGAPIXELS} megapixels"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height}; it needs at least {MIN_SIDE} pixels on each side")
    notes = []
    if image.format == "JPEG" and max(width, height) > WORK_SIDE:
        # decoded at 1/2, 1/4 or 1/8 scale, the smallest whose long side is still >= WORK_SIDE / 2
        shrink = WORK_SIDE / 2 / max(width, height)
        image.draft(image.mode, (math.ceil(width * shrink), math.ceil(height * shrink)))
    decoded = image.width * image.height * _BYTES_PER_PIXEL.get(image.mode, 4) / 2**20
    if decoded > MAX_DECODED_MB:
        raise ImageError(
            f"{name} ({width}x{height}, {image.mode}) would take {decoded:.0f} MB to decode; the limit is "
            f"{MAX_DECODED_MB} MB: save it smaller or as a JPEG"
        )
    try:
        image.load()
    except ValueError as error:
        raise _text_bomb(name, error) from None
    except (OSError, SyntaxError) as error:
        raise ImageError(f"{name} is truncated or corrupt ({error})") from None
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"the first of its {frames} frames")
    rgb, converted = to_rgb(image)
    if max(rgb.size) < max(width, height):
        notes.append(f"reduced from {width}x{height} to {rgb.width}x{rgb.height}")
    return rgb, notes + converted


def _open(path: Path) -> Image.Image:
    """The file's header, read (no pixel decoded), or a message for the person who uploaded it."""
    try:
        return Image.open(path)
    except Image.DecompressionBombError:
        raise ImageError(
            f"{path.name} declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; "
            f"the limit is {MAX_MEGAPIXELS} megapixels"
        ) from None
    except (UnidentifiedImageError, OSError):
        raise ImageError(
            f"{path.name} is not an image Pillow can read (PNG, JPEG, WebP, BMP, GIF, TIFF)"
        ) from None
    except ValueError as error:  # Pillow's own limit on a PNG's compressed text chunks
        raise _text_bomb(path.name, error) from None


def _text_bomb(name: str, error: ValueError) -> ImageError:
    """A PNG whose compressed text chunks (zTXt, iTXt) inflate past Pillow's limit: a decompression
    bomb in the metadata; said as such rather than in Pillow's words."""
    if "Decompressed" in str(error) or "too large" in str(error).lower():
        return ImageError(
            f"{name}: its PNG text metadata (zTXt/iTXt) inflates past "
            f"{PngImagePlugin.MAX_TEXT_CHUNK // 2**20} MB, the limit: save the image without metadata"
        )
    return ImageError(f"{name} is truncated or corrupt ({error})")


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """An RGB version of any Pillow image, long side reduced to at most ``WORK_SIDE`` first, and
    notes on what changed."""
    notes: list[str] = []
    orientation = _orientation(image)
    if orientation in _ORIENTATIONS and orientation != 1:
        image = ImageOps.exif_transpose(image)
        notes.append("rotated upright from its EXIF orientation")
    elif orientation is not None and orientation not in _ORIENTATIONS:
        notes.append(f"EXIF orientation {orientation} is not valid: shown as stored")
    mode = image.mode
    if mode.startswith("I;16"):
        image = _sixteen_to_eight(image)  # a lookup table, before any 4-byte copy is made
        notes.append(f"{mode} grayscale scaled to 8 bits")
    elif mode in ("P", "1"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("palette colours expanded to RGB" if mode == "P" else "1-bit converted to RGB")
    image = _reduced(image)
    mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append("transparency flattened onto white")
    elif mode in ("I", "F"):
        _, high = image.getextrema()
        scale = 255.0 / high if high > 0 else 0.0  # an all-black image stays black
        image = image.point(lambda v: v * scale).convert("L").convert("RGB")
        notes.append(f"{mode} grayscale scaled to 8 bits")
    elif mode == "CMYK":
        image = image.convert("RGB")
        notes.append("CMYK converted to RGB")
    elif mode != "RGB":
        if not notes:  # a mode of the file's own, not one made above
            notes.append(f"{mode} converted to RGB")
        image = image.convert("RGB")
    return image, notes


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    """16-bit grayscale to 8 bits, scaled so the brightest pixel is 255 (all black stays black).

    Done in strips of rows: a whole-image numpy or mode "I" copy would cost 2 to 4 times the
    decoded image."""
    _, top = image.getextrema()
    scale = 255.0 / top if top > 0 else 0.0
    width, height = image.size
    out = np.empty((height, width), np.uint8)
    for y in range(0, height, _STRIP):
        rows = np.asarray(image.crop((0, y, width, min(height, y + _STRIP))), dtype=np.float32)
        out[y : y + _STRIP] = np.rint(rows * scale)
    return Image.fromarray(out, "L")


def _reduced(image: Image.Image) -> Image.Image:
    """``image`` reduced by a whole factor (box filter) so its long side is at most ``WORK_SIDE``."""
    factor = math.ceil(max(image.size) / WORK_SIDE)
    return image.reduce(factor) if factor > 1 else image


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:
        return None
