"""The judge (issue 23): a CNN whose forward is what its config says, which sees both eyes from one
unit, trains with the recipe on, loads from safetensors, is not served by the app, and is the one
``spatial-attn eval`` asks (its probe rows carry its name; it has no attention rows)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spatial_attn.data import KINDS
from spatial_attn.faces import evaluate
from spatial_attn.faces.cards import write_card
from spatial_attn.faces.train import TRAINERS
from spatial_attn.faces.train.common import Settings, run
from spatial_attn.faces.train.judge import RECIPE, JudgeTrainer
from spatial_attn.faces.train.vit import NO_MOUTH
from spatial_attn.models import available_models, load_model
from spatial_attn.models.judge import Judge, JudgeConfig


def _reference(model: Judge, x: torch.Tensor) -> torch.Tensor:
    """The judge's forward written out from its weights (eval mode: batch norm from running stats)."""
    h = x
    for stage in model.stages:
        for block in stage:
            conv, norm = block[0], block[1]
            h = F.conv2d(h, conv.weight, stride=conv.stride, padding=1)
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            h = (h - norm.running_mean[:, None, None]) * scale[:, None, None] + norm.bias[:, None, None]
            h = 0.5 * h * (1 + torch.erf(h / 2**0.5))  # GELU
    pooled = torch.cat([h.mean((2, 3)), h.flatten(2).max(-1).values], 1)
    return pooled @ model.head.weight.T + model.head.bias


def test_the_forward_is_conv_norm_gelu_stages_then_average_and_max_pooling():
    torch.manual_seed(0)
    model = Judge(JudgeConfig(widths=(4, 6, 8), num_classes=3))
    for m in model.modules():  # running statistics other than 0 and 1, so that they are used
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(5, 3, 32, 32)
    assert model(x).shape == (5, 3)
    torch.testing.assert_close(model(x), _reference(model, x), rtol=1e-4, atol=1e-5)


def test_one_unit_of_the_last_stage_sees_both_eyes():
    """The gradient of the centre unit of the last stage reaches exactly ``receptive_field`` pixels
    across: 47 for the bundled widths, more than the eyes' 10 to 14 px apart plus their radii."""
    cfg = JudgeConfig()
    model = Judge(cfg).eval()
    x = torch.zeros(1, 3, 96, 96, requires_grad=True)  # big enough that padding cuts nothing off
    h = model.stages(x)  # (1, C, 12, 12)
    h[0, :, 6, 6].sum().backward()
    seen = np.flatnonzero(x.grad[0].abs().sum((0, 1)).numpy())
    assert cfg.receptive_field == 47 and seen.max() - seen.min() + 1 == cfg.receptive_field


def _settings(tmp: Path, steps: int, extra: dict | None = None) -> Settings:
    _, defaults = TRAINERS["judge"]
    return Settings(
        steps=steps, batch_size=8, lr=defaults["lr"], out=tmp / "out", command="test judge", extra=extra or {}
    )


def test_the_trainer_turns_the_recipe_on_and_lets_set_override_it(tmp_path):
    trainer = JudgeTrainer(_settings(tmp_path, 1))
    r = trainer.recipe
    assert (r.head_shift_px, r.head_scale_min, r.head_scale_max) == (5, 0.75, 1.1)
    assert r.mouthless_share == 0.25 and r.hard_pair_share == 0.5 and r.hard_pair_weight == 2
    assert r.labels == (*KINDS, NO_MOUTH) and isinstance(trainer.model, Judge)
    assert JudgeTrainer(_settings(tmp_path, 1, {"head_shift_px": "2"})).recipe.head_shift_px == 2


def test_a_few_steps_train_export_and_load_back_the_same_judge(tmp_path):
    s = _settings(tmp_path, 3)
    trainer = JudgeTrainer(s)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    record = run(trainer, s, tmp_path / "run")
    assert record["head_shift_px"] == RECIPE["head_shift_px"]  # the whole recipe is in training.json
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    bm = load_model("judge-faces", root=tmp_path / "out")
    config = json.loads((tmp_path / "out" / "judge-faces" / "config.json").read_text())
    assert config["kind"] == "judge" and bm.labels == [*KINDS, NO_MOUTH] and not bm.module.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bm.module(x), trainer.model.eval()(x), rtol=0, atol=0)
    card = write_card(tmp_path / "out", "judge-faces", "| m |", []).read_text()
    assert "receptive field 47 px" in card and "moved by up to 5 px" in card and "weighted 2x" in card


def test_the_app_does_not_serve_the_judge_but_it_loads_by_name():
    assert "judge-faces" not in available_models()
    bm = load_model("judge-faces")
    assert bm.labels[-1] == NO_MOUTH and isinstance(bm.module, Judge)


def test_the_eval_asks_the_judge_and_gives_it_probe_rows_and_no_attention_rows(tmp_path):
    s = _settings(tmp_path, 1)
    run(JudgeTrainer(s), s, tmp_path / "run")
    report = evaluate.evaluate_all(tmp_path / "out", faces=2, threads=1, models=("judge-faces",))
    assert report.rows and {r.model for r in report.rows} == {"judge-faces"} and not report.layers
    assert any(r.metric.startswith("mouthless: judged valid") for r in report.rows)
    table = evaluate.format_table(report)
    assert not [line for line in table.splitlines() if line.startswith("- ")]  # no "no headline layer"
    assert "| judge-faces | valid: judged valid" in table and "content lift" not in table  # no layer table


class Stop(Exception):
    pass


def test_the_generators_samples_are_judged_by_the_judge(monkeypatch):
    judged_by = []

    def sample_rows(gen: object, judge: SimpleNamespace, *rest: object) -> None:
        judged_by.append(judge.name)
        raise Stop

    monkeypatch.setattr(evaluate, "load_model", lambda name, *a, **k: SimpleNamespace(name=name))
    monkeypatch.setattr(evaluate, "sample_rows", sample_rows)
    with pytest.raises(Stop):
        evaluate.evaluate_all(Path("/nonexistent"), models=("sagan-faces",))
    assert judged_by == ["judge-faces"]


def test_the_judge_refuses_init_from_which_would_load_a_vit_into_the_cnn(tmp_path):
    from spatial_attn.cli import main

    with pytest.raises(SystemExit, match="init_from is not supported"):
        main(
            [
                "train",
                "judge",
                "--steps",
                "1",
                "--set",
                "init_from=checkpoints/vit-faces",
                "--out",
                str(tmp_path),
            ]
        )
