"""The bundled models behind one small interface: what the app needs to show a model's attention.

``load_model(name)`` returns a :class:`BundledModel`: the module to capture (eval mode, CPU), and the
two steps around the forward whose attention is shown. ``prepare`` turns a user's image (or a seed)
into that forward's inputs plus the picture the attention is drawn over; ``run`` is the forward
itself, exactly one, so a caller's ``sa.capture`` sees one call per attention layer.

Weights come from ``checkpoints/<name>/`` as safetensors and JSON only (never pickle).
``pretrained=False`` builds the same architecture from :data:`TWIN_SEED` instead: the untrained
twin the app shows beside the trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.tensors import to_tensor, to_uint8
from ..resources import locate, searched
from .judge import Judge, JudgeConfig
from .placement import Placement, place
from .preprocess import Preprocess
from .sagan import SAGAN, SAGANConfig
from .vit import ViT, ViTConfig
from .vit_inpaint import InpaintConfig, InpaintViT, eye_mask
from .weights import load_config, load_weights

#: Where the bundled weights live: the checkout's ``checkpoints/``, an installed wheel's copy, or
#: ``$SPATIAL_ATTN_CHECKPOINTS`` (see :mod:`spatial_attn.resources`).
CHECKPOINTS = locate("checkpoints")
#: The random twins' initialisation seed (fixed, so the untrained maps are the same every time).
TWIN_SEED = 1234
#: How an image that is not square becomes a square model's input: its centre square (the default, a
#: round sun stays round), the whole image squeezed, or the whole image on a black square.
FITS = ("crop", "stretch", "pad")


@dataclass(frozen=True)
class Prepared:
    """Inputs of the forward whose attention is shown, and what to draw that attention over."""

    args: tuple  # positional inputs (tensors, batch 1)
    kwargs: dict
    display: np.ndarray  # (H, W, 3) uint8
    note: str  # what was done to get here, for the user
    #: text-conditioned models: the prompt's tokens, in the order of the cross-attention keys
    tokens: tuple[str, ...] = ()


@dataclass
class BundledModel:
    """A ready-to-run model; subclasses say how images become inputs and what a forward returns."""

    name: str
    kind: str  # "ddpm" | "sagan" | "vit" | "vit-inpaint" for the bundled ones; any label for your own
    pretrained: bool
    module: nn.Module  # eval mode, CPU: the root to pass to ``sa.capture``
    image_size: int = 32
    labels: list[str] | None = None
    num_timesteps: int | None = None
    config: dict = field(default_factory=dict, repr=False)
    fit: str = "crop"  # one of FITS: how an image that is not square is made square
    #: Whether ``prepare(None, seed=s)`` makes its own input (the app then offers "new sample" and
    #: keeps a generated face when the user switches model); models that need an image leave it False.
    generates = False
    #: The largest side of an uploaded image the app keeps (bigger ones are shrunk first): the bundled
    #: models see 32x32, so 256 is plenty and bounds each user's session.
    max_source = 256
    #: Whether ``prepare`` accepts ``prompt=`` (text-conditioned models; the app then shows a prompt box).
    takes_prompt = False
    #: Whether the model was trained with one eye hidden (an in-painter): its eye query is then the
    #: hidden eye's, so the evaluation hides the query eye with :meth:`mask_eye` before it runs.
    masks_eye = False

    @property
    def placement(self) -> Placement:
        """The device and dtype the module runs in (those of its first parameter)."""
        return Placement.of(self.module)

    def place(self, placement: Placement) -> BundledModel:
        """Move the model to ``placement`` (in place; returns it). Its inputs follow it there."""
        placement.apply(self.module)
        return self

    def placed(self, t: torch.Tensor) -> torch.Tensor:
        """An input made on the CPU (drawn from a seeded CPU generator, so it is the same on every
        device) moved to the module's device, and to its dtype when it is floating point."""
        return self.placement.put(t)

    def prepare(
        self, image: Image.Image | None = None, *, timestep: int | None = None, seed: int = 0
    ) -> Prepared:
        """The forward's inputs for ``image`` (any size and mode), and the picture to draw over.

        ``image=None`` asks a generative model to make its own input from ``seed``; a model that
        cannot must raise ``ValueError`` (the app shows the message). ``Prepared.display`` is what
        the heatmaps are overlaid on, so it must be the picture the model actually saw.

        The default suits a model whose forward takes the image tensor alone: ``to_input(image)``.
        """
        x, pixels, note = self.to_input(image)
        return Prepared(args=(self.placed(x),), kwargs={}, display=pixels, note=note)

    def run(self, prepared: Prepared) -> dict:
        """One forward pass on prepared inputs; returns a small JSON-able summary."""
        raise NotImplementedError

    def mask_eye(self, prepared: Prepared, centre: np.ndarray, radius: float) -> Prepared:
        """``prepared`` with the eye at ``centre`` (y, x) of ``radius`` pixels hidden from the model:
        only a model that :attr:`masks_eye` can."""
        raise ValueError(f"{self.name} sees the whole image: it hides no eye")

    def sample(self, seed: int, n: int = 1) -> np.ndarray:
        """(n, S, S, 3) uint8 images drawn from ``seed``: what "new sample" shows, and what eval judges."""
        raise ValueError(f"{self.name} does not generate images: give it one")

    def input_pixel(self, point: tuple[float, float], source_hw: tuple[int, int]) -> tuple[int, int]:
        """The pixel ``(y, x)`` of the model's input that shows pixel ``point`` of a ``source_hw`` image
        (through the same resize and crop or pad as :meth:`to_input`; a pixel the crop cut away is
        refused with a message that says so)."""
        return self._fitting().geometry(source_hw).to_input(point)

    def with_fit(self, fit: str) -> BundledModel:
        """This model (the same module) making images square by ``fit``, one of :data:`FITS`."""
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}; got {fit!r}")
        return self if fit == self.fit else replace(self, fit=fit)

    def _fitting(self) -> Preprocess:
        s = self.image_size
        resize = {"crop": ("shortest_edge", s), "pad": ("longest_edge", s), "stretch": ("exact", (s, s))}
        return Preprocess(resize[self.fit], (s, s), resample=Image.Resampling.LANCZOS)

    def to_input(self, image: Image.Image | None) -> tuple[torch.Tensor, np.ndarray, str]:
        """Any PIL image -> ((1, 3, S, S) in [-1, 1], the (S, S, 3) uint8 picture, a note that says
        how it was made square)."""
        if image is None:
            raise ValueError(f"{self.name} needs an image: upload one or pick an example")
        _, pixels, geometry = self._fitting().apply(image)  # (S, S, 3) uint8
        x = to_tensor(pixels[None])  # (1, 3, S, S)
        (h, w), s = geometry.source, self.image_size
        if (h, w) == (s, s):
            return x, pixels, f"{s}x{s} image"
        if self.fit == "stretch":
            note = f"resized {w}x{h} -> {s}x{s}" + (", stretched (fit: stretch)" if h != w else "")
        else:
            note = geometry.describe() + (f" (fit: {self.fit})" if h != w else "")
        return x, pixels, note


class ViTModel(BundledModel):
    """Classifies an image into valid face / each kind of broken face (the ViT, and the judge's CNN)."""

    def run(self, prepared: Prepared) -> dict:
        probs = torch.softmax(self.module(*prepared.args, **prepared.kwargs)[0], dim=-1)  # (classes,)
        return {"probs": {label: round(float(p), 4) for label, p in zip(self.labels, probs, strict=True)}}


class InpaintModel(BundledModel):
    """Paints back the patches hidden under the mask token: on a face, the left eye is hidden."""

    masks_eye = True
    #: The app's mask is placed around the located eye's centre as for the largest eye faces draw:
    #: a located radius can run small (a bar's area reads as a smaller disc) and leave its tips.
    APP_RADIUS = 3.4

    def prepare(
        self, image: Image.Image | None = None, *, timestep: int | None = None, seed: int = 0
    ) -> Prepared:
        from ..data.eyes import locate_eyes

        x, pixels, note = self.to_input(image)
        hidden = torch.zeros(1, (self.image_size // self.config["patch"]) ** 2, dtype=torch.bool)  # (1, N)
        bare = Prepared(
            args=(self.placed(x),), kwargs={"mask": self.placed(hidden)}, display=pixels, note=note
        )
        found = locate_eyes(pixels)
        if found is None:
            return replace(
                bare, note=f"{note}; no two eyes found, nothing masked (it was trained to paint an eye)"
            )
        return self.mask_eye(bare, found[0][0], self.APP_RADIUS)

    def mask_eye(self, prepared: Prepared, centre: np.ndarray, radius: float) -> Prepared:
        """Every patch the eye's pixels can touch (:func:`~.vit_inpaint.eye_mask`) set to the mask
        token; the display shows those patches grey, as the model sees no pixel of them."""
        cfg = self.module.cfg  # the config the module was built with (not re-read per call)
        hidden = eye_mask(np.asarray(centre, np.float32)[None], np.array([radius]), cfg)  # (1, N)
        grid = hidden.reshape(cfg.grid, cfg.grid).repeat(cfg.patch, 0).repeat(cfg.patch, 1)  # (H, W)
        side = "left" if centre[1] < self.image_size / 2 else "right"
        note = (
            f"{prepared.note}; {side} eye masked: its {int(hidden.sum())} patches are the mask token (grey "
            "in what the model sees); click it to see where it looks for the other eye"
        )
        return replace(
            prepared,
            kwargs={"mask": self.placed(torch.from_numpy(hidden))},
            display=np.where(grid[..., None], np.uint8(128), prepared.display),
            note=note,
        )

    def run(self, prepared: Prepared) -> dict:
        self.module(*prepared.args, **prepared.kwargs)
        return {"masked_patches": int(prepared.kwargs["mask"].sum())}


class SAGANModel(BundledModel):
    """With an image: the discriminator judges it. Without: the generator draws a face from a seed."""

    generates = True

    def _z(self, seed: int, n: int) -> torch.Tensor:
        return self.placed(
            torch.randn(n, self.config["z_dim"], generator=torch.Generator().manual_seed(seed))
        )

    def prepare(
        self, image: Image.Image | None = None, *, timestep: int | None = None, seed: int = 0
    ) -> Prepared:
        if image is not None:
            x, pixels, note = self.to_input(image)
            return Prepared(
                args=(), kwargs={"image": self.placed(x)}, display=pixels, note=f"{note}; discriminator"
            )
        z = self._z(seed, 1)  # (1, z_dim)
        return Prepared(
            args=(),
            kwargs={"z": z},
            display=self.sample(seed)[0],
            note=f"generator on z drawn with seed {seed}",
        )

    def run(self, prepared: Prepared) -> dict:
        out = self.module(*prepared.args, **prepared.kwargs)
        return {"score": round(float(out[0]), 4)} if "image" in prepared.kwargs else {}

    def sample(self, seed: int, n: int = 1) -> np.ndarray:
        with torch.no_grad():
            return to_uint8(self.module(z=self._z(seed, n)))


@dataclass
class DDPMModel(BundledModel):
    """The UNet's noise prediction on a face noised to a timestep (a real one, or one it sampled)."""

    scheduler: Any = None  # diffusers DDPMScheduler: the training noise schedule
    generates = True

    def prepare(
        self, image: Image.Image | None = None, *, timestep: int | None = None, seed: int = 0
    ) -> Prepared:
        from .ddpm import FAST_ETA, FAST_STEPS, add_noise, sample, signal_fraction

        t = self.num_timesteps // 2 if timestep is None else int(timestep)
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep must be in [0, {self.num_timesteps}), got {t}")
        if image is None:
            x0 = sample(self.module, self.scheduler, seed)  # (1, 3, 32, 32)
            note = f"sampled a face with seed {seed} (DDIM, {FAST_STEPS} steps, eta {FAST_ETA:g})"
        else:
            x0, _, note = self.to_input(image)
        xt = add_noise(self.scheduler, x0.float().cpu(), t, seed)  # (1, 3, 32, 32), float32 on the CPU
        note += f"; noised to t={t} with seed {seed} ({signal_fraction(self.scheduler, t):.0%} signal)"
        args = (self.placed(xt), self.placed(torch.tensor([t])))
        return Prepared(args=args, kwargs={}, display=to_uint8(xt)[0], note=note)

    def run(self, prepared: Prepared) -> dict:
        self.module(*prepared.args, **prepared.kwargs)
        return {"timestep": int(prepared.args[1][0])}

    def sample(self, seed: int, n: int = 1) -> np.ndarray:
        from .ddpm import sample

        return to_uint8(sample(self.module, self.scheduler, seed, n=n))


def _load_plain(
    wrapper: type[BundledModel], model_cls: type[nn.Module], config_cls: type, name: str, kind: str
) -> Callable[[Path, bool], BundledModel]:
    """A loader for a model of this package's own (``model_cls(config_cls(...))``) served as ``wrapper``;
    the labels, where its config lists them (the judge's kinds), come along."""

    def load(path: Path, pretrained: bool) -> BundledModel:
        config, cfg, module = _build(model_cls, config_cls, path, pretrained)
        labels = list(config["labels"]) if "labels" in config else None
        return wrapper(
            name=name,
            kind=kind,
            pretrained=pretrained,
            module=module,
            image_size=cfg.image_size,
            labels=labels,
            config=config,
        )

    return load


def _load_ddpm(path: Path, pretrained: bool) -> DDPMModel:
    from diffusers import DDPMScheduler, UNet2DModel

    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    if pretrained:
        # low_cpu_mem_usage=False: the default wants `accelerate` and warns when it is missing;
        # a 3.5 MB model gains nothing from it
        unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True, low_cpu_mem_usage=False)
    else:
        with torch.random.fork_rng(devices=[]):  # the twin's seed must not reset the caller's RNG
            torch.manual_seed(TWIN_SEED)
            unet = UNet2DModel.from_config(UNet2DModel.load_config(path / "unet"))
    return DDPMModel(
        name="ddpm-faces",
        kind="ddpm",
        pretrained=pretrained,
        module=unet.eval(),
        image_size=unet.config.sample_size,
        num_timesteps=scheduler.config.num_train_timesteps,
        config=dict(unet.config),
        scheduler=scheduler,
    )


def _build(
    model_cls: type[nn.Module], config_cls: type, path: Path, pretrained: bool
) -> tuple[dict, Any, nn.Module]:
    """``path``'s JSON config, the model's config dataclass built from it, and the module.

    The config file also records training settings, so only the dataclass's own fields are passed.
    The module is built seeded with TWIN_SEED inside a forked RNG (loading a model must not reset the
    caller's random stream), then, if pretrained, loaded strictly from safetensors.
    """
    config = load_config(path)
    cfg = config_cls(**{k: v for k, v in config.items() if k in config_cls.__dataclass_fields__})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TWIN_SEED)
        module = model_cls(cfg)
    if pretrained:
        module.load_state_dict(load_weights(path))
    return config, cfg, module.eval()


_LOADERS = {
    "ddpm-faces": _load_ddpm,
    "sagan-faces": _load_plain(SAGANModel, SAGAN, SAGANConfig, "sagan-faces", "sagan"),
    "vit-faces": _load_plain(ViTModel, ViT, ViTConfig, "vit-faces", "vit"),
    "vit-inpaint": _load_plain(InpaintModel, InpaintViT, InpaintConfig, "vit-inpaint", "vit-inpaint"),
    "judge-faces": _load_plain(ViTModel, Judge, JudgeConfig, "judge-faces", "judge"),
}
#: The judge of generated samples: what ``spatial-attn eval`` scores samples with and the app's
#: ablation tab shows the verdict of.
JUDGE = "judge-faces"
#: Loaded by name like the others, but not offered by the app: the judge has no attention to click.
NOT_SHOWN = (JUDGE,)


def available_models() -> list[str]:
    """Names the app serves (each also as its untrained twin, ``pretrained=False``); ``load_model``
    also accepts :data:`NOT_SHOWN`."""
    return sorted(set(_LOADERS) - set(NOT_SHOWN))


def load_model(
    name: str,
    pretrained: bool = True,
    *,
    root: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
) -> BundledModel:
    """A bundled model by name; ``pretrained=False`` gives its untrained twin (same architecture).

    ``root`` is the folder holding ``<name>/`` (default :data:`CHECKPOINTS`). ``device`` and
    ``dtype`` say where it runs (:func:`~spatial_attn.models.placement.place`); its inputs, noise and
    samples are made there too.
    """
    placement = place(device, dtype)  # a bad device or dtype fails before anything is read
    if name not in _LOADERS:
        raise ValueError(f"unknown model {name!r}: choose one of {available_models()}")
    path = Path(root or CHECKPOINTS) / name
    if not path.is_dir():
        where = searched("checkpoints") if root is None else f"looked in {root}"
        raise FileNotFoundError(
            f"{name} is missing ({where}); "
            f"or train it with `spatial-attn train {name.removesuffix('-faces')}`"
        )
    return _LOADERS[name](path, pretrained).place(placement)
