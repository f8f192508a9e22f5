"""Switch one attention layer off and see what the model does without it.

Two ablations, on a private copy of the model (the served one is shared by every user and must not
change under them):

* ``"off"``: the layer adds nothing. SAGAN: ``gamma = 0``, so its block returns its input. A diffusers
  ``Attention`` block (residual inside) returns its input. ``nn.MultiheadAttention`` (residual
  outside, in the encoder layer) returns zeros, so the residual stream passes unchanged.
* ``"uniform"``: the layer still mixes values, but every query attends to every key equally. Its
  queries are set to zero, so every logit is 0 and softmax gives each key ``1/N'``.

:func:`ablate` then runs the model before and after on the same input: the model's own verdict
(the ViT's class probabilities, the SAGAN discriminator's score) and, when the layer takes part in
generating, a sample from the same seed before and after, each judged by the judge (``judge-faces``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from ..models import BundledModel

How = Literal["off", "uniform"]


def private_copy(model: BundledModel) -> BundledModel:
    """A deep copy of a served model to change or hook freely, sharing nothing with it.

    Another user's capture may have its hooks on the served model at this moment; a deep copy would
    copy them too, and they would then fire for the copy, whose modules the capture does not know
    (an error in that request). So every hook the capture machinery made is dropped from the copy.
    """
    twin = copy.deepcopy(model)
    for module in twin.module.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key, hook in list(hooks.items()):
                if getattr(getattr(hook, "func", hook), "__module__", "") == "spatial_attn.engine.capture":
                    del hooks[key]
                    module._forward_hooks_with_kwargs.pop(key, None)
                    module._forward_hooks_always_called.pop(key, None)
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
    return twin


def ablated_copy(model: BundledModel, layer_name: str, how: How) -> BundledModel:
    """A deep copy of ``model`` whose attention module ``layer_name`` is switched off or made uniform."""
    if how not in ("off", "uniform"):
        raise ValueError(f"how must be 'off' or 'uniform', got {how!r}")
    twin = private_copy(model)
    module = twin.module.get_submodule(layer_name)
    if hasattr(module, "gamma") and hasattr(module, "query_conv"):  # SAGAN Self_Attn
        if how == "off":
            with torch.no_grad():
                module.gamma.zero_()
        else:
            module.query_conv.register_forward_hook(_zeros)
    elif isinstance(module, nn.MultiheadAttention):
        if how == "off":
            module.register_forward_hook(lambda _m, _a, out: (torch.zeros_like(out[0]), *out[1:]))
        else:
            _zero_query_projection(module)
    elif hasattr(module, "to_q"):  # diffusers Attention: the residual is inside the block
        if how == "off":
            module.register_forward_hook(lambda _m, args, _out: args[0])
        else:
            module.to_q.register_forward_hook(_zeros)
    else:
        raise ValueError(f"{layer_name} is a {type(module).__name__}: only SAGAN, diffusers and MHA layers")
    return twin


def _zeros(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
    """A forward hook's replacement output: queries of zeros, so every logit is 0."""
    return torch.zeros_like(output)


def _zero_query_projection(mha: nn.MultiheadAttention) -> None:
    """Queries of zeros in ``nn.MultiheadAttention``: the q rows of its input projection."""
    e = mha.embed_dim
    with torch.no_grad():
        if mha.in_proj_weight is not None:
            mha.in_proj_weight[:e] = 0
            if mha.in_proj_bias is not None:
                mha.in_proj_bias[:e] = 0
        else:
            mha.q_proj_weight.zero_()
            if mha.in_proj_bias is not None:
                mha.in_proj_bias[:e] = 0


@dataclass
class Ablation:
    """Before and after switching a layer off (or making it uniform)."""

    layer: str
    how: How
    output_before: dict
    output_after: dict
    sample_before: np.ndarray | None = None  # (S, S, 3) uint8 from the same seed
    sample_after: np.ndarray | None = None
    verdict_before: dict[str, float] = field(default_factory=dict)  # the judge's class probabilities
    verdict_after: dict[str, float] = field(default_factory=dict)


def generates_through(model: BundledModel, layer_name: str) -> bool:
    """Whether ``layer_name`` takes part in the model's own samples (a SAGAN's discriminator does not)."""
    return model.generates and not (model.kind == "sagan" and not layer_name.startswith("generator"))


def judge(judge_model: BundledModel, picture: np.ndarray) -> dict[str, float]:
    """The judge's class probabilities for one picture."""
    with torch.no_grad():
        return judge_model.run(judge_model.prepare(Image.fromarray(picture)))["probs"]


def ablate(
    model: BundledModel,
    layer_name: str,
    how: How,
    image: Image.Image | None,
    *,
    timestep: int | None = None,
    seed: int = 0,
    judge_model: BundledModel | None = None,
) -> Ablation:
    """Run ``model`` on ``image`` (None: from ``seed``) with and without the layer; sample too when
    the layer is part of generating, and judge both samples with ``judge_model`` if given."""
    changed = ablated_copy(model, layer_name, how)
    with torch.no_grad():
        outputs = [m.run(m.prepare(image, timestep=timestep, seed=seed)) for m in (model, changed)]
    result = Ablation(layer_name, how, *outputs)
    if generates_through(model, layer_name):
        result.sample_before, result.sample_after = (m.sample(seed)[0] for m in (model, changed))
        if judge_model is not None:
            result.verdict_before = judge(judge_model, result.sample_before)
            result.verdict_after = judge(judge_model, result.sample_after)
    return result


def summary_text(output: dict[str, Any]) -> str:
    """A model's own output in words: its most likely class, or the discriminator's score."""
    if "probs" in output:
        best = max(output["probs"], key=output["probs"].get)
        return f"{best} ({output['probs'][best]:.0%})"
    if "score" in output:
        return f"discriminator score {output['score']:.2f} (> 0: real)"
    return ""
