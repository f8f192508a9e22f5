"""Training is reproducible from seed and command, survives an interruption, and exports a loadable model.

A few steps on tiny batches per model: what is checked is the bookkeeping (seeded batches, optimizer
moments in the resume checkpoint, the export layout), not whether the model learns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spatial_attn.faces.train import TRAINERS
from spatial_attn.faces.train.common import Settings, run
from spatial_attn.models import load_model


def _train(model: str, tmp: Path, steps: int, resume: bool = False) -> dict[str, torch.Tensor]:
    """Train ``model`` to ``steps`` in ``tmp`` and return every trained weight, by name."""
    trainer_cls, defaults = TRAINERS[model]
    s = Settings(
        steps=steps, batch_size=4, lr=defaults["lr"], out=tmp / "out", resume=resume, command=f"test {model}"
    )
    trainer = trainer_cls(s)
    run(trainer, s, tmp / "run")
    parts = trainer.modules().items()
    return {f"{part}.{k}": v.clone() for part, m in parts for k, v in m.state_dict().items()}


@pytest.mark.parametrize("model", ["vit", "sagan", "ddpm", "vit-inpaint"])
def test_interrupted_and_resumed_equals_uninterrupted(model, tmp_path):
    straight = _train(model, tmp_path / "a", 4)
    _train(model, tmp_path / "b", 2)
    resumed = _train(model, tmp_path / "b", 4, resume=True)
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0, msg=k)
    again = _train(model, tmp_path / "c", 4)  # same seed, same command: the same weights
    assert all(torch.equal(again[k], straight[k]) for k in straight)

    name = TRAINERS[model][0].name
    _train(model, tmp_path / "b", 4, resume=True)  # at the last step already: exports, runs nothing
    records = [json.loads((tmp_path / d / "out" / name / "training.json").read_text()) for d in "ab"]
    logs = [r["final_logs"] for r in records]
    assert logs[0] and logs[1] == logs[0]  # the last step's logs travelled in the checkpoint
    bm = load_model(name, pretrained=True, root=tmp_path / "a" / "out")
    assert bm.name == name and not bm.module.training
    assert (tmp_path / "a" / "out" / name / "training.json").read_text().count('"steps": 4') == 1
