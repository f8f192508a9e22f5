"""Your own models in the app: image backbones and classifiers, and denoisers with their scheduler.

Two :class:`~spatial_attn.models.bundle.BundledModel` kinds cover what ``--model PATH`` opens
(:mod:`spatial_attn.models.sources` builds them from folders): an :class:`ImageModel` takes the image
through its own preprocessing and runs once (a transformers or timm backbone, a classifier, your
factory's module); a :class:`DiffusionModel` noises the preprocessed image (or its VAE latents) to the
chosen timestep with the folder's scheduler and runs the denoiser once, conditioned on a prompt when
the folder has a text encoder. Both keep the preprocessing geometry, so a click on the original photo
lands on the token of the pixel the model saw there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.tensors import to_uint8
from .bundle import BundledModel, Prepared
from .placement import Placement
from .preprocess import Preprocess

#: Top predictions a classifier reports.
TOP = 5


@dataclass
class PreprocessedModel(BundledModel):
    """A model whose images go through a :class:`Preprocess` (resize, crop or pad, normalise)."""

    preprocess: Preprocess | None = None
    #: photos up to 2048 px reach the model's own preprocessing untouched (the issue's 224 to 1024 px)
    max_source = 2048

    def to_input(self, image: Image.Image | None) -> tuple[torch.Tensor, np.ndarray, str]:
        if image is None:
            raise ValueError(f"{self.name} needs an image: upload one or pick an example")
        x, pixels, geometry = self.preprocess.apply(image)
        return x, pixels, geometry.describe()

    def input_pixel(self, point: tuple[float, float], source_hw: tuple[int, int]) -> tuple[int, int]:
        return self.preprocess.geometry(source_hw).to_input(point)


def _call(module: nn.Module, x: torch.Tensor) -> Any:
    return module(x)


@dataclass
class ImageModel(PreprocessedModel):
    """One forward on the preprocessed image; a classifier also reports its top predictions."""

    #: how the module is called on the input tensor (transformers wants ``pixel_values=``)
    forward: Callable[[nn.Module, torch.Tensor], Any] = field(default=_call, repr=False)

    def run(self, prepared: Prepared) -> dict:
        out = self.forward(self.module, prepared.args[0])
        logits = getattr(out, "logits", out)
        if not (isinstance(logits, torch.Tensor) and logits.ndim == 2 and self.labels):
            return {}
        probs = torch.softmax(logits[0].float(), dim=-1)  # (classes,)
        values, indices = probs.topk(min(TOP, len(probs)))
        top = zip(values.tolist(), indices.tolist(), strict=True)
        return {"top": [[self.labels[i], round(p, 4)] for p, i in top]}


@dataclass
class TextEncoder:
    """A tokenizer and its encoder: a prompt -> ``encoder_hidden_states`` and the tokens' names."""

    tokenizer: Any
    encoder: nn.Module
    #: PixArt's pipeline masks the padding out of the encoder and of cross-attention; SD's does not
    masked: bool = False
    #: a tokenizer without a length of its own (T5's is "very large") pads to this many tokens
    longest: int = 512

    @torch.no_grad()
    def __call__(self, prompt: str) -> tuple[torch.Tensor, tuple[str, ...], dict]:
        """``(encoder_hidden_states (1, L, D), the L tokens' names, other inputs of the denoiser)``."""
        tokens = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=min(self.tokenizer.model_max_length, self.longest),
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids  # (1, L)
        mask = tokens.attention_mask if self.masked else None  # (1, L)
        device = next(self.encoder.parameters()).device
        hidden = self.encoder(ids.to(device), attention_mask=None if mask is None else mask.to(device))[0]
        hidden = hidden.float().cpu()  # (1, L, D); placed with the denoiser's other inputs
        extra = {"encoder_attention_mask": mask} if self.masked else {}
        return hidden, tuple(self.tokenizer.convert_ids_to_tokens(ids[0].tolist())), extra


@dataclass
class SD3Text:
    """SD3's encoders through its pipeline's own ``encode_prompt``: CLIP-L and CLIP-G side by side on
    the CLIP tokens, then T5's tokens after them (zeros when the folder has no T5), so the text is
    exactly what the pipeline feeds its transformer; the pooled CLIP vectors go in too."""

    pipeline: Any
    max_length: int = 256  # T5 tokens, the pipeline's default

    @torch.no_grad()
    def __call__(self, prompt: str) -> tuple[torch.Tensor, tuple[str, ...], dict]:
        pipe = self.pipeline
        hidden, _, pooled, _ = pipe.encode_prompt(
            prompt,
            prompt,
            prompt,
            device="cpu",
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_length,
        )  # (1, 77 + max_length, D), (1, P)
        clip = pipe.tokenizer(
            prompt, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True
        )
        names = pipe.tokenizer.convert_ids_to_tokens(clip.input_ids)
        if pipe.tokenizer_3 is None:
            names += ["(no T5)"] * self.max_length
        else:
            t5 = pipe.tokenizer_3(prompt, padding="max_length", max_length=self.max_length, truncation=True)
            names += pipe.tokenizer_3.convert_ids_to_tokens(t5.input_ids)
        return hidden, tuple(names), {"pooled_projections": pooled}


@dataclass
class DiffusionModel(PreprocessedModel):
    """The denoiser's one forward on the image (or its latents) noised to ``t``.

    ``call`` says how the denoiser takes its inputs: ``"unet"`` (``UNet2DModel``), ``"conditioned"``
    (``UNet2DConditionModel``, PixArt: ``encoder_hidden_states``), ``"class"`` (DiT: a class label),
    ``"joint"`` (SD3: text states and a pooled text vector, one softmax over image and text).
    """

    scheduler: Any = None
    vae: nn.Module | None = None
    text: TextEncoder | SD3Text | None = None
    call: str = "unet"
    text_dim: int | None = None  # width of the text encoder's states (PixArt: its caption channels)
    pooled_dim: int | None = None  # SD3: width of the pooled text vector
    default_prompt: str = "a photo"

    @property
    def takes_prompt(self) -> bool:  # type: ignore[override]
        return self.text is not None

    def place(self, placement: Placement) -> DiffusionModel:
        """The denoiser, the VAE and the text encoder on ``placement`` (SD3's three encoders stay on
        the CPU: their text is moved over)."""
        for module in (self.module, self.vae, getattr(self.text, "encoder", None)):
            if module is not None:
                placement.apply(module)
        return self

    def with_prompt(self, prompt: str) -> DiffusionModel:
        """This model with ``prompt`` as its default: the same modules, a per-user prompt."""
        return replace(self, default_prompt=prompt)

    def prepare(
        self,
        image: Image.Image | None = None,
        *,
        timestep: int | None = None,
        seed: int = 0,
        prompt: str | None = None,
    ) -> Prepared:
        t = self.num_timesteps // 2 if timestep is None else int(timestep)
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep must be in [0, {self.num_timesteps}), got {t}")
        x0, _, note = self.to_input(image)  # (1, 3, H, W) in [-1, 1]
        with torch.no_grad():
            if self.vae is not None:
                x0 = self._encode(x0)  # (1, c, H/f, W/f)
                note += f"; encoded by the VAE to {x0.shape[2]}x{x0.shape[3]} latents"
            xt = self._noise(x0, t, seed)
        note += f"; noised to t={t} with seed {seed}"
        kwargs, tokens = self._condition(xt, t, prompt)
        if tokens:
            note += f"; prompt {prompt if prompt is not None else self.default_prompt!r}"
        elif self.call == "class":
            note += "; class label 0"
        elif self.call in ("conditioned", "joint"):
            note += "; no text encoder in the folder: conditioned on one zero text token"
        kwargs = {k: self.placed(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return Prepared((self.placed(xt),), kwargs, self._picture(xt), note, tokens)

    def run(self, prepared: Prepared) -> dict:
        self.module(*prepared.args, **prepared.kwargs)
        return {"timestep": int(prepared.kwargs["timestep"][0])}

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latents (the distribution's mean: no sampling noise), scaled as the pipeline scales them."""
        config = self.vae.config
        latents = self.vae.encode(Placement.of(self.vae).put(x)).latent_dist.mean.float().cpu()
        shift = getattr(config, "shift_factor", None) or 0.0
        return (latents - shift) * config.scaling_factor

    def _noise(self, x0: torch.Tensor, t: int, seed: int) -> torch.Tensor:
        """q(x_t | x_0) with the folder's scheduler; flow-matching schedulers interpolate linearly."""
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        if hasattr(self.scheduler, "add_noise"):
            return self.scheduler.add_noise(x0, noise, torch.tensor([t]))
        sigma = t / self.num_timesteps  # FlowMatch: x_t = (1 - sigma) x_0 + sigma * noise
        return (1 - sigma) * x0 + sigma * noise

    def _condition(self, xt: torch.Tensor, t: int, prompt: str | None) -> tuple[dict, tuple[str, ...]]:
        """The denoiser's keyword inputs besides ``x_t``, and the prompt's tokens."""
        kwargs: dict[str, Any] = {"timestep": torch.tensor([t])}
        tokens: tuple[str, ...] = ()
        if self.call == "class":
            kwargs["class_labels"] = torch.tensor([0])
        elif self.call in ("conditioned", "joint"):
            if self.text is not None:
                hidden, tokens, extra = self.text(self.default_prompt if prompt is None else prompt)
            else:  # a bare conditioned model: a single null text token (and a null pooled vector)
                hidden = torch.zeros(1, 1, self.text_dim)
                extra = (
                    {"pooled_projections": torch.zeros(1, self.pooled_dim)} if self.call == "joint" else {}
                )
            kwargs |= {"encoder_hidden_states": hidden, **extra}
            if self.kind.startswith("PixArt"):
                kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
        return kwargs, tokens

    def _picture(self, xt: torch.Tensor) -> np.ndarray:
        """What the denoiser saw, as an (H, W, 3) picture of the input's size: x_t itself, or for
        latents their first three channels stretched to [0, 255] and enlarged to the image's size."""
        if self.vae is None:
            return to_uint8(xt.clamp(-1, 1))[0]
        lat = xt[0, :3].float()  # (3, h, w)
        lo, hi = lat.amin(dim=(1, 2), keepdim=True), lat.amax(dim=(1, 2), keepdim=True)
        small = ((lat - lo) / (hi - lo).clamp_min(1e-6) * 255).round().byte().permute(1, 2, 0).numpy()
        size = self.preprocess.out
        return np.array(Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.NEAREST))
