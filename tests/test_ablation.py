"""Ablations on a private copy: "off" makes the attention block pass its input (SAGAN gamma = 0,
diffusers blocks) or add nothing (MultiheadAttention), "uniform" gives every key exactly 1/N';
the served model is untouched, and the before / after runs are the model's own."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import spatial_attn as sa
from spatial_attn.analysis import ablation
from spatial_attn.models import load_model


def _face():
    from spatial_attn.app.blocks import default_image

    return default_image()[0]


def _io(model, layer_name: str, image, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of module ``layer_name`` in one run."""
    seen = {}
    module = model.module.get_submodule(layer_name)
    handle = module.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    with torch.no_grad():
        model.run(model.prepare(image, **kw))
    handle.remove()
    return seen["x"], seen["out"]


def test_off_makes_a_sagan_block_pass_its_input_and_leaves_the_served_model_alone():
    sagan = load_model("sagan-faces")
    gamma = float(sagan.module.generator.attn.gamma.detach())
    off = ablation.ablated_copy(sagan, "generator.attn", "off")
    x, out = _io(off, "generator.attn", None, seed=3)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    assert float(sagan.module.generator.attn.gamma.detach()) == gamma != 0
    x, out = _io(sagan, "generator.attn", None, seed=3)
    assert not torch.equal(out, x)


@pytest.mark.parametrize(
    ("name", "layer", "kw"),
    [
        ("sagan-faces", "generator.attn", {"seed": 3}),
        ("vit-faces", "blocks.1.self_attn", {}),
        ("ddpm-faces", "mid_block.attentions.0", {"timestep": 250}),
    ],
)
def test_uniform_gives_every_key_one_over_n(name, layer, kw):
    model = load_model(name)
    uniform = ablation.ablated_copy(model, layer, "uniform")
    image = None if name == "sagan-faces" else _face()
    with torch.no_grad(), sa.capture(uniform.module) as cap:
        uniform.run(uniform.prepare(image, **kw))
    captured = cap.layers[layer]
    for y, x in ((0, 0), (3, 5)):
        row = captured.attend(y, x)
        n = captured.keys.count
        np.testing.assert_allclose(captured.token_probs(y, x), np.full(n, 1 / n), atol=1e-7)
        assert row.entropy == pytest.approx(np.log2(n))


def test_off_makes_a_diffusers_block_pass_its_input_and_mha_add_nothing():
    ddpm = load_model("ddpm-faces")
    x, out = _io(
        ablation.ablated_copy(ddpm, "mid_block.attentions.0", "off"),
        "mid_block.attentions.0",
        _face(),
        timestep=250,
    )
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    vit = load_model("vit-faces")
    _, out = _io(ablation.ablated_copy(vit, "blocks.0.self_attn", "off"), "blocks.0.self_attn", _face())
    assert not out[0].any()


def test_ablate_reports_the_models_own_runs_before_and_after():
    vit = load_model("vit-faces")
    result = ablation.ablate(vit, "blocks.0.self_attn", "off", _face())
    with torch.no_grad():
        direct = vit.run(vit.prepare(_face()))
    assert result.output_before == direct and result.output_after != direct
    assert result.sample_before is None  # a classifier does not generate
    sagan = load_model("sagan-faces")
    result = ablation.ablate(sagan, "generator.attn", "uniform", None, seed=3, judge_model=vit)
    np.testing.assert_array_equal(result.sample_before, sagan.sample(3)[0])
    assert not np.array_equal(result.sample_after, result.sample_before)
    assert set(result.verdict_before) == set(vit.labels) == set(result.verdict_after)
    assert not ablation.generates_through(sagan, "discriminator.attn")
    with pytest.raises(ValueError, match="'off' or 'uniform'"):
        ablation.ablated_copy(vit, "blocks.0.self_attn", "half")


def test_the_tab_shows_before_and_after():
    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.app.blocks import Library
    from spatial_attn.app.views.ablation import HOW, AblationView

    library = Library(["sagan-faces", "vit-faces"])
    view = SimpleNamespace(library=library)
    ex = Exploration(library["sagan-faces"], _face(), seed=0)  # an image: the discriminator
    session = SimpleNamespace(exploration=ex, source=_face(), point=(13, 9))
    body = AblationView.show(view, session, "discriminator.attn", next(iter(HOW)))
    assert "discriminator score" in body and body.count("<td>") == 2 and "sample" not in body


def test_the_tab_judges_samples_with_the_evals_judge_which_the_app_does_not_offer():
    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.app.blocks import Library
    from spatial_attn.app.views.ablation import HOW, AblationView
    from spatial_attn.faces.evaluate import JUDGE

    library = Library(["sagan-faces"])
    assert library.judge.name == JUDGE and JUDGE not in library.choices()
    view = SimpleNamespace(library=library)
    ex = Exploration(library["sagan-faces"], None, seed=3)  # generated: the generator's layer
    session = SimpleNamespace(exploration=ex, source=None, point=(13, 9))
    body = AblationView.show(view, session, "generator.attn", next(iter(HOW)))
    sample = library["sagan-faces"].sample(3)[0]
    with torch.no_grad():
        probs = library.judge.run(library.judge.prepare(Image.fromarray(sample)))["probs"]
    best = max(probs, key=probs.get)  # the judge's own call on the sample before, computed here
    assert f"judged by {JUDGE}" in body and f"{best} {probs[best]:.1%}" in body


def test_a_private_copy_taken_during_another_capture_carries_none_of_its_hooks():
    from spatial_attn.app.blocks import default_image

    vit = load_model("vit-faces")
    count = lambda module: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())  # noqa: E731
    with sa.capture(vit.module):  # another user's capture, in the middle of its run
        assert count(vit.module) > 0
        copied = ablation.private_copy(vit)
    assert count(copied.module) == 0
    with torch.no_grad():
        assert copied.run(copied.prepare(default_image()[0])) == vit.run(vit.prepare(default_image()[0]))


def test_without_the_judges_checkpoint_the_tab_shows_samples_without_a_verdict(tmp_path, monkeypatch):
    from spatial_attn.analysis.explore import Exploration
    from spatial_attn.app.blocks import Library
    from spatial_attn.app.views.ablation import HOW, AblationView
    from spatial_attn.models import bundle

    (tmp_path / "sagan-faces").symlink_to(bundle.CHECKPOINTS / "sagan-faces")  # every model but the judge
    monkeypatch.setattr(bundle, "CHECKPOINTS", tmp_path)
    with pytest.warns(UserWarning, match="without a verdict"):
        library = Library(["sagan-faces"])
    assert library.judge is None
    ex = Exploration(library["sagan-faces"], None, seed=3)
    session = SimpleNamespace(exploration=ex, source=None, point=(13, 9))
    body = AblationView.show(SimpleNamespace(library=library), session, "generator.attn", next(iter(HOW)))
    assert "sample from the same seed" in body and "judged by" not in body
