"""Whatever a user uploads becomes an RGB image, or a short message saying why it cannot.

Files are decoded by Pillow only (nothing is ever unpickled), and an image's size is read from its
header and checked before any pixel is decoded, so a 50,000 x 50,000 PNG costs nothing. Every
conversion (EXIF rotation, transparency, palettes, 16-bit, CMYK) is reported in a note, because the
user should know what the model was actually shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_MEGAPIXELS = 50
MIN_SIDE = 4


class ImageError(ValueError):
    """An upload that cannot be used; the message is written for the person who uploaded it."""


def load_image(path: str | Path) -> tuple[Image.Image, list[str]]:
    """Decode an uploaded file into RGB, with notes on each conversion made."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ImageError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{name} is empty (0 bytes)")
    try:
        image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name} is too large to open: {error}") from None
    except (UnidentifiedImageError, OSError):
        raise ImageError(
            f"{name} is not an image Pillow can read (PNG, JPEG, WebP, BMP, GIF, TIFF)"
        ) from None
    width, height = image.size
    if width * height > MAX_MEGAPIXELS * 1_000_000:
        raise ImageError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_MEGAPIXELS} megapixels"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height}; it needs at least {MIN_SIDE} pixels on each side")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name} is truncated or corrupt ({error})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """An RGB version of any Pillow image, and notes on what changed."""
    notes: list[str] = []
    if _orientation(image) not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append("rotated upright from its EXIF orientation")
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        notes.append("palette colours expanded to RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append("transparency flattened onto white")
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max()
        scaled = values / top * 255.0 if top > 0 else values
        image = Image.fromarray(scaled.clip(0, 255).round().astype(np.uint8)).convert("RGB")
        notes.append(f"{mode} grayscale scaled to 8 bits")
    elif mode == "CMYK":
        image = image.convert("RGB")
        notes.append("CMYK converted to RGB")
    elif mode != "RGB":
        image = image.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    return image, notes


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:
        return None
