"""Weights on disk as safetensors + a JSON config: loading them can never run code (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_weights(out_dir: Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out_dir / WEIGHTS))


def load_config(model_dir: Path) -> dict:
    return json.loads((model_dir / CONFIG).read_text())


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / WEIGHTS))
