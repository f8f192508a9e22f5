"""Preprocessing as data: resize, centre crop or pad, normalise, read from a model's own config.

A model trained at 224 px sees a 1024 x 768 photo only after its preprocessing has resized it and cut
(or padded) it to 224 x 224. The app must show *that* picture, and a click on the photo must land on
the token of the pixel the model saw there, so the geometry is kept as numbers: the resized size and
the offset of the model's window inside it. One rule does both crop and pad: the resized image is
pasted at ``(-left, -top)`` onto a canvas of the model's input size (a positive offset crops, a
negative one pads), and a point moves by the same scale and offset.

Configs are read without torchvision: the transformers ``preprocessor_config.json`` keys
(``size``, ``crop_size``, ``crop_pct``, ``do_center_crop``, ``image_mean`` ...) and timm's
``pretrained_cfg`` (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

Size = tuple[int, int]  # (height, width)

#: transformers stores Pillow's resampling filters as ints; timm by name
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Geometry:
    """Where one source image went: resized to ``resized``, then the window at ``(top, left)`` of size
    ``out`` was kept (negative offsets: the window reaches past the image, i.e. padding)."""

    source: Size
    resized: Size
    top: int
    left: int
    out: Size

    def to_input(self, point: tuple[float, float]) -> tuple[int, int]:
        """A pixel ``(y, x)`` of the source image -> the pixel of the model's input that shows it."""
        (sh, sw), (rh, rw) = self.source, self.resized
        py, px = point
        if not (0 <= py < sh and 0 <= px < sw):
            raise ValueError(f"point {(py, px)} is outside the {sh}x{sw} image")
        y = math.floor((py + 0.5) * rh / sh) - self.top
        x = math.floor((px + 0.5) * rw / sw) - self.left
        oh, ow = self.out
        if not (0 <= y < oh and 0 <= x < ow):
            raise ValueError(
                f"pixel {(int(py), int(px))} of the {sh}x{sw} image was cropped away by the model's "
                f"preprocessing (it keeps a {oh}x{ow} window of the image resized to {rh}x{rw})"
            )
        return y, x

    def describe(self) -> str:
        """What was done, in words (crop and pad are visible, stretching is said)."""
        (sh, sw), (rh, rw), (oh, ow) = self.source, self.resized, self.out
        parts = [f"resized {sw}x{sh} -> {rw}x{rh}" if (rh, rw) != (sh, sw) else f"{sw}x{sh}"]
        if abs(rh / sh - rw / sw) > 0.02:
            parts.append("stretched: the model's preprocessing does not keep the aspect")
        if (self.top, self.left, oh, ow) != (0, 0, rh, rw):
            cut = self.top > 0 or self.left > 0 or oh < rh or ow < rw
            parts.append(f"{'centre-cropped' if cut else 'padded'} to {ow}x{oh}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model's input: resize, crop/pad to ``out``, scale and normalise.

    ``resize`` is ``("shortest_edge", n)``, ``("longest_edge", n)`` or ``("exact", (h, w))``.
    Normalised input = ``(pixels * rescale - mean) / std``, per channel.
    """

    resize: tuple[str, int | Size]
    out: Size
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale: float = 1 / 255
    resample: Image.Resampling = Image.Resampling.BICUBIC
    fill: tuple[int, int, int] = (0, 0, 0)  # padding colour

    def geometry(self, source: Size) -> Geometry:
        """The resized size and the window kept, for an image of ``source = (h, w)``."""
        sh, sw = source
        mode, n = self.resize
        if mode == "exact":
            rh, rw = n  # type: ignore[misc]
        else:
            edge = min(sh, sw) if mode == "shortest_edge" else max(sh, sw)
            factor = n / edge  # type: ignore[operator]
            rh, rw = max(1, round(sh * factor)), max(1, round(sw * factor))
        oh, ow = self.out
        return Geometry(source, (rh, rw), (rh - oh) // 2, (rw - ow) // 2, self.out)

    def apply(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray, Geometry]:
        """``image`` -> ((1, 3, H, W) float input, (H, W, 3) uint8 picture the model saw, geometry)."""
        rgb = image.convert("RGB")
        geo = self.geometry((rgb.height, rgb.width))
        rh, rw = geo.resized
        resized = rgb if (rh, rw) == geo.source else rgb.resize((rw, rh), self.resample)
        oh, ow = self.out
        canvas = Image.new("RGB", (ow, oh), self.fill)
        canvas.paste(resized, (-geo.left, -geo.top))  # positive offsets crop, negative ones pad
        pixels = np.array(canvas, dtype=np.uint8)  # (H, W, 3)
        x = torch.from_numpy(pixels).permute(2, 0, 1).float() * self.rescale  # (3, H, W)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((x - mean) / std)[None], pixels, geo


def square(size: int) -> Preprocess:
    """Diffusion models' habit: the shortest edge to ``size``, centre-cropped square, into [-1, 1]."""
    return Preprocess(("shortest_edge", size), (size, size), resample=Image.Resampling.LANCZOS)


def from_transformers(config: dict) -> Preprocess:
    """A ``preprocessor_config.json`` (ViT, DeiT, BEiT, CLIP, ConvNeXt, Swin, DINOv2 ... processors)."""
    size = config.get("size", 224)
    if isinstance(size, int):
        size = {"shortest_edge": size} if config.get("do_center_crop") else {"height": size, "width": size}
    crop = config.get("crop_size")
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "shortest_edge" in size:
        edge = size["shortest_edge"]
        if config.get("crop_pct") and edge < 384:  # ConvNeXt: resize past the crop, then cut it out
            resize, out = ("shortest_edge", int(edge / config["crop_pct"])), (edge, edge)
        else:
            resize, out = ("shortest_edge", edge), (edge, edge)
    elif "longest_edge" in size:
        edge = size["longest_edge"]
        resize, out = ("longest_edge", edge), (edge, edge)  # padded square
    else:
        out = (size["height"], size["width"])
        resize = ("exact", out)
    if config.get("do_resize") is False:
        raise ValueError("the preprocessor config turns resizing off: images must come at the model's size")
    if config.get("do_center_crop", crop is not None) and crop:
        out = (crop["height"], crop["width"])
    normalise = config.get("do_normalize", True)
    return Preprocess(
        resize=resize,
        out=out,
        mean=tuple(config.get("image_mean", (0.5,) * 3)) if normalise else (0.0,) * 3,
        std=tuple(config.get("image_std", (0.5,) * 3)) if normalise else (1.0,) * 3,
        rescale=config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0,
        resample=Image.Resampling(config.get("resample", Image.Resampling.BICUBIC)),
    )


def from_timm(cfg: dict) -> Preprocess:
    """timm's evaluation transform from a ``pretrained_cfg``: resize the shortest edge to
    ``floor(size / crop_pct)``, centre-crop ``size``, normalise with its mean and std."""
    _, h, w = cfg.get("input_size", (3, 224, 224))
    if cfg.get("crop_mode", "center") != "center":
        raise ValueError(f"timm crop_mode {cfg['crop_mode']!r} is not supported (only 'center')")
    scale = math.floor(min(h, w) / cfg.get("crop_pct", 0.875))
    return Preprocess(
        resize=("shortest_edge", scale),
        out=(h, w),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        resample=_RESAMPLE.get(cfg.get("interpolation", "bicubic"), Image.Resampling.BICUBIC),
    )
