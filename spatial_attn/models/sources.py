"""``--model SPEC``: a diffusers or transformers folder, ``timm:NAME``, ``package.module:factory`` or a
Hub id, opened as a model the app can serve.

Models are what their authors saved: a folder of configs beside safetensors weights, read with the
library's own ``from_pretrained`` (``use_safetensors=True``, ``local_files_only``), so a folder that
opens in diffusers or transformers opens here, and preprocessing comes from the folder
(``preprocessor_config.json``, ``scheduler/``), not from code the user retypes. Weights that are
pickles (``.bin``, ``.pt``, ``.ckpt``) are refused before anything is read: unpickling runs code.
A Hub id is looked up in the local Hugging Face cache only, unless the caller allows a download.

Every mistake a user can make (a missing file, a pickle, an unknown class, timm not installed) is a
``ValueError`` whose message says what to do. Before anything is built, a folder's configs and
safetensors headers are read for what the model would cost (:mod:`.budget`): one too large for the
memory available, or naming code of its own (``auto_map``), is refused with the reason.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import budget, preprocess
from .bundle import TWIN_SEED, BundledModel
from .own import DiffusionModel, ImageModel, SD3Text, TextEncoder

#: Weight formats that are Python pickles: loading one can run arbitrary code, so none is ever read.
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: How each diffusers denoiser class is called (see :class:`~spatial_attn.models.own.DiffusionModel`).
DENOISERS = {
    "UNet2DModel": "unet",
    "UNet2DConditionModel": "conditioned",
    "DiTTransformer2DModel": "class",
    "PixArtTransformer2DModel": "conditioned",
    "SD3Transformer2DModel": "joint",
}
#: Config keys that give the width of a denoiser's text states (PixArt, UNets, SD3).
TEXT_WIDTHS = ("caption_channels", "cross_attention_dim", "joint_attention_dim")
#: What a Hub download may fetch: configs, tokenizer files and safetensors; never a pickle.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def open_model(spec: str, weights: str | Path | None = None, *, allow_download: bool = False) -> BundledModel:
    """The model ``spec`` names, ready to serve; it is listed under ``spec`` (a folder: its name)."""
    if spec.startswith("timm:"):
        return _timm(spec, weights)
    path = Path(spec).expanduser()
    if path.exists():
        if weights is not None:
            raise ValueError(f"--weights goes with timm: and factory models; the folder {spec} holds its own")
        folder = path.resolve()
        component = folder.name in ("unet", "transformer")  # a pipeline's part: say whose
        return open_folder(path, f"{folder.parent.name}/{folder.name}" if component else folder.name)
    if _FACTORY.fullmatch(spec):
        return _factory(spec, weights)
    if _HUB_ID.fullmatch(spec):
        return open_folder(_from_cache(spec, allow_download), spec)
    raise ValueError(
        f"{spec!r} is not a folder here, nor timm:NAME, package.module:factory or a Hub id (org/name)"
    )


def open_folder(path: Path, name: str) -> BundledModel:
    """A diffusers pipeline or model folder, or a transformers folder, told apart by their configs."""
    if path.is_file():
        _refuse_pickle(path)
        raise ValueError(
            f"{path} is a bare weights file: pass the folder with its config.json, "
            "or timm:NAME / package.module:factory with --weights FILE.safetensors"
        )
    if (path / "model_index.json").is_file():
        return _pipeline(path, name)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} holds neither model_index.json (a diffusers pipeline) nor config.json")
    config = json.loads(config_file.read_text())
    budget.refuse_remote_code(config, config_file)
    budget.check([path], [config], name)
    if "_class_name" in config:
        scheduler = path.parent / "scheduler"  # a pipeline's unet/ opened alone: its sibling scheduler
        return _diffusion(name, path, scheduler if scheduler.is_dir() else None, None, None)
    return _transformers(path, name, config)


def check_weights(folder: Path) -> None:
    """``folder`` (a model's own folder) must hold safetensors weights; a pickle alone is refused."""
    if any(folder.glob("*.safetensors")):
        return
    for file in folder.iterdir():
        _refuse_pickle(file)
    raise ValueError(f"{folder} holds no *.safetensors weights")


def _refuse_pickle(file: Path) -> None:
    if file.suffix in PICKLES:
        raise ValueError(
            f"{file} is a pickle ({file.suffix}): loading one can run arbitrary code, so spatial-attn "
            "never does. Save the model as safetensors: model.save_pretrained(folder, "
            "safe_serialization=True), or safetensors.torch.save_file(model.state_dict(), "
            "'model.safetensors')"
        )


# -- diffusers -------------------------------------------------------------------------------------
def _pipeline(path: Path, name: str) -> DiffusionModel:
    """A whole pipeline folder: its denoiser, scheduler, and (when present) VAE and text encoder."""
    index = json.loads((path / "model_index.json").read_text())
    budget.refuse_remote_code(index, path / "model_index.json")
    parts = [path / key for key in index if (path / key / "config.json").is_file()]
    budget.check(parts, [json.loads((part / "config.json").read_text()) for part in parts], name)
    denoiser = next((k for k in ("unet", "transformer") if index.get(k)), None)
    if denoiser is None:
        raise ValueError(f"{path}/model_index.json names no unet or transformer")
    vae = _component(path, index, "vae")
    if index.get("text_encoder_2"):  # SD3: three encoders, read through the pipeline's encode_prompt
        model = _diffusion(name, path / denoiser, path / "scheduler", vae, None)
        model.text = _sd3_text(path, index, model)
        return model
    encoder = _component(path, index, "text_encoder")
    tokenizer = _component(path, index, "tokenizer")
    masked = "PixArt" in index.get("_class_name", "")  # its pipeline passes the prompt's mask
    text = TextEncoder(tokenizer, encoder, masked) if encoder is not None and tokenizer is not None else None
    return _diffusion(name, path / denoiser, path / "scheduler", vae, text)


def _sd3_text(path: Path, index: dict, model: DiffusionModel) -> SD3Text | None:
    """The pipeline ``model_index.json`` names, built from its parts, for its ``encode_prompt``."""
    import diffusers

    keys = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
    parts = {key: _component(path, index, key) for key in keys}
    if any(parts[key] is None for key in keys[:2] + keys[3:5]):
        return None  # no CLIP encoders: the transformer gets a null text token
    pipeline_cls = getattr(diffusers, index["_class_name"])
    return SD3Text(pipeline_cls(transformer=model.module, scheduler=model.scheduler, vae=model.vae, **parts))


def _component(path: Path, index: dict, key: str) -> Any:
    """One pipeline component by the library and class ``model_index.json`` names (None if absent)."""
    entry = index.get(key)
    if not entry or entry[0] is None:
        return None
    library, cls_name = entry
    if library not in ("diffusers", "transformers"):
        raise ValueError(f"{path}: component {key} comes from {library!r}; only diffusers and transformers")
    cls = getattr(importlib.import_module(library), cls_name)
    folder = path / key
    if (folder / "config.json").is_file():
        budget.refuse_remote_code(json.loads((folder / "config.json").read_text()), folder / "config.json")
    if key.startswith("tokenizer"):  # tokenizer, tokenizer_2 ...: vocabularies, no weights
        return cls.from_pretrained(folder, local_files_only=True)
    check_weights(folder)
    # diffusers: see _diffusion; transformers: never remote code, and never a [y/N] prompt about it
    quiet = {"low_cpu_mem_usage": False} if library == "diffusers" else {"trust_remote_code": False}
    return _eval(cls.from_pretrained(folder, use_safetensors=True, local_files_only=True, **quiet))


def _diffusion(
    name: str, folder: Path, scheduler_dir: Path | None, vae: nn.Module | None, text: TextEncoder | None
) -> DiffusionModel:
    import diffusers

    config = json.loads((folder / "config.json").read_text())
    cls_name = config["_class_name"]
    if cls_name not in DENOISERS:
        raise ValueError(f"{folder}: {cls_name} is not a denoiser spatial-attn runs ({', '.join(DENOISERS)})")
    check_weights(folder)
    # low_cpu_mem_usage=False: the default wants `accelerate` and warns when it is missing
    module = getattr(diffusers, cls_name).from_pretrained(
        folder, use_safetensors=True, low_cpu_mem_usage=False, local_files_only=True
    )
    if scheduler_dir is not None:
        scheduler_cls = json.loads((scheduler_dir / "scheduler_config.json").read_text())["_class_name"]
        scheduler = getattr(diffusers, scheduler_cls).from_pretrained(scheduler_dir)
    else:
        scheduler = diffusers.DDPMScheduler()  # a bare model folder: the standard linear DDPM schedule
    channels = module.config.in_channels
    if vae is None and channels != 3:
        raise ValueError(
            f"{folder}: {cls_name} takes {channels}-channel latents; open the whole pipeline folder, "
            "whose vae/ encodes the image"
        )
    sample = module.config.sample_size
    latent = sample if isinstance(sample, int) else sample[0]
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    size = budget.check_side(latent * factor, f"{folder}/config.json (sample_size x the VAE's factor)")
    return DiffusionModel(
        name=name,
        kind=cls_name,
        pretrained=True,
        module=_eval(module),
        image_size=size,
        num_timesteps=scheduler.config.num_train_timesteps,
        config=dict(module.config),
        preprocess=preprocess.square(size),
        scheduler=scheduler,
        vae=vae,
        text=text,
        call=DENOISERS[cls_name],
        text_dim=next(filter(None, (module.config.get(k) for k in TEXT_WIDTHS)), None),
        pooled_dim=module.config.get("pooled_projection_dim"),
    )


# -- transformers ----------------------------------------------------------------------------------
def _pixel_values(module: nn.Module, x: torch.Tensor) -> Any:
    return module(pixel_values=x)


def _transformers(path: Path, name: str, config: dict) -> ImageModel:
    """A vision backbone (``AutoModel``) or classifier (``AutoModelForImageClassification``)."""
    try:
        import transformers
    except ImportError:
        raise ValueError(
            f"{path} is a transformers folder and transformers is not installed: "
            "pip install 'spatial-attn[hf]'"
        ) from None
    processor = path / "preprocessor_config.json"
    if not processor.is_file():
        raise ValueError(
            f"{path} has no preprocessor_config.json: save the image processor beside the model "
            "(AutoImageProcessor.from_pretrained(...).save_pretrained(folder))"
        )
    check_weights(path)
    classifier = any(a.endswith("ForImageClassification") for a in config.get("architectures") or [])
    cls = transformers.AutoModelForImageClassification if classifier else transformers.AutoModel
    steps = preprocess.from_transformers(json.loads(processor.read_text()))
    _check_sides(steps, processor)  # before the model is built: a 10^9 crop fails every request
    module = cls.from_pretrained(path, use_safetensors=True, local_files_only=True, trust_remote_code=False)
    labels = [module.config.id2label[i] for i in range(module.config.num_labels)] if classifier else None
    return ImageModel(
        name=name,
        kind=config.get("model_type", "transformers"),
        pretrained=True,
        module=_eval(module),
        image_size=steps.out[0],
        labels=labels,
        config=config,
        preprocess=steps,
        forward=_pixel_values,
    )


def _check_sides(steps: Any, where: Path | str) -> None:
    """Every size a preprocessing makes (its resize and its output) is a side the app can serve."""
    _, target = steps.resize
    for side in (*steps.out, *(target if isinstance(target, tuple) else (target,))):
        budget.check_side(side, str(where))


# -- timm and factories ----------------------------------------------------------------------------
def _timm(spec: str, weights: str | Path | None) -> ImageModel:
    """``timm:NAME``: the architecture from timm, weights from ``--weights`` (else random, said so)."""
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"{spec} needs timm, which is not installed: pip install timm (it brings torchvision)"
        ) from None
    arch = spec.removeprefix("timm:")
    try:
        module = timm.create_model(arch, pretrained=False)
    except RuntimeError as error:  # timm's "Unknown model"
        raise ValueError(f"{spec}: {error}") from None
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    labels = cfg.get("label_names") or [f"class {i}" for i in range(getattr(module, "num_classes", 0))]
    return _image_model(spec, "timm", module, weights, preprocess.from_timm(cfg), labels)


def _factory(spec: str, weights: str | Path | None) -> ImageModel:
    """``package.module:factory``: ``factory()`` returns the ``nn.Module`` (see the README's protocol)."""
    module_name, attr = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{spec}: cannot import it ({error})") from None
    if not callable(factory):
        raise ValueError(f"{spec}: {attr} is not callable; name a function that returns the nn.Module")
    _takes_nothing(spec, factory)
    with torch.random.fork_rng(devices=[]):  # a random-weight factory gets the same weights every time
        torch.manual_seed(TWIN_SEED)
        try:
            module = factory()
        except Exception as error:  # the factory's own failure, said as such
            raise ValueError(
                f"{spec}: calling {attr}() failed ({type(error).__name__}: {error}); a factory takes no "
                "arguments and returns the nn.Module"
            ) from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    config = getattr(module, "preprocessor_config", None)
    size = budget.check_side(getattr(module, "image_size", 224), f"{spec}'s image_size")
    steps = preprocess.from_transformers(config) if config else preprocess.square(size)
    _check_sides(steps, f"{spec}'s preprocessor_config")
    return _image_model(spec, "factory", module, weights, steps, getattr(module, "labels", None))


def _takes_nothing(spec: str, factory: Any) -> None:
    """A factory is called with no arguments: one that needs some is refused before it is called."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: the call says
        return
    needed = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if needed:
        raise ValueError(
            f"{spec} takes arguments ({', '.join(needed)}); a factory takes none and returns the nn.Module"
        )


def _image_model(
    spec: str, kind: str, module: nn.Module, weights: str | Path | None, steps: Any, labels: Any
) -> ImageModel:
    """A timm or factory module with ``weights`` loaded (or its initial ones, said in its kind)."""
    initial = _load(module, weights)
    return ImageModel(
        name=spec,
        kind=kind + (" (initial weights: no --weights)" if initial else ""),
        pretrained=not initial,
        module=_eval(module),
        image_size=steps.out[0],
        labels=list(labels or []) or None,
        preprocess=steps,
    )


def _load(module: nn.Module, weights: str | Path | None) -> bool:
    """Load ``weights`` (a safetensors file) strictly into ``module``; True when there were none."""
    if weights is None:
        return True
    from safetensors.torch import load_file

    path = Path(weights)
    _refuse_pickle(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise ValueError(f"--weights {weights}: expected an existing .safetensors file")
    try:
        module.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise ValueError(f"--weights {weights} does not fit the model: {error}") from None
    return False


# -- the Hub cache ---------------------------------------------------------------------------------
def _from_cache(repo_id: str, allow_download: bool) -> Path:
    """The local snapshot of ``repo_id``; downloaded (safetensors and configs only) only if allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(repo_id, local_files_only=not allow_download, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError:
        if allow_download:  # allowed, yet the Hub was never reached
            raise ValueError(
                f"{repo_id} could not be downloaded: the Hub could not be reached (no network, or "
                "HF_HUB_OFFLINE=1 is set), and it is not in the local cache"
            ) from None
        raise ValueError(
            f"{repo_id} is not a folder here and not in the local Hugging Face cache "
            "(HF_HUB_CACHE, by default ~/.cache/huggingface/hub). Fetch it with "
            f"`hf download {repo_id}`, or pass --allow-download to let spatial-attn fetch its "
            "configs and safetensors"
        ) from None
    except GatedRepoError:  # before RepositoryNotFoundError: it is one
        raise ValueError(
            f"{repo_id} could not be downloaded: it is gated; accept its terms on the Hub and log in "
            "(`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"{repo_id} could not be downloaded: the Hub has no such repository (or it is private: "
            "log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise ValueError(f"{repo_id} could not be downloaded: the Hub has no such revision") from None
    except (OSError, HfHubHTTPError) as error:  # other network and HTTP errors
        raise ValueError(f"{repo_id} could not be downloaded: {type(error).__name__}: {error}") from None
    return Path(folder)


def _eval(module: Any) -> Any:
    """Modules are served in eval mode (dropout off), on the CPU, without gradients."""
    return module.eval() if isinstance(module, nn.Module) else module
