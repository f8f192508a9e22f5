"""The training loop all three models share: seeded data on the fly, progress, checkpoints, resume.

A run is reproducible from its seed and command alone: the weights are initialised from the seed,
and step ``s`` draws its faces *and* its noise from ``batch_seed(seed, s)``, so no random state has
to be carried from step to step and a resumed run makes the same batches as an uninterrupted one.
(Bit-for-bit equality also needs the same torch build and thread count, which the model card
records.)

Resume checkpoints hold weights *and* optimizer moments, saved as safetensors with the scalars in
its JSON metadata, so nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ...data import FaceBatch, make_faces
from ...data.tensors import to_tensor, to_uint8  # noqa: F401 - re-exported for the trainers
from ...engine import cell_at
from ..eye_attention import IMAGE_HW, eye_cells

#: Training faces come from seeds >= this; evaluation uses small seeds, so they never overlap.
TRAIN_SEED_BASE = 10**12


def batch_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s faces and noise, disjoint from every evaluation seed."""
    return TRAIN_SEED_BASE + seed * 10**7 + step


@dataclass
class Settings:
    """What the command line controls; a model's trainer fills in its own defaults."""

    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    threads: int = 1
    out: Path = Path("checkpoints")
    resume: bool = False
    checkpoint_minutes: float = 3.0
    command: str = ""  # the command line that started the run, for the model card
    layout: str = "standard"  # make_faces' layout: "wide" so that position cannot predict the other eye
    extra: dict = field(default_factory=dict)


def recipe_from(cls: type, extra: dict, whose: str) -> Any:
    """A recipe dataclass ``cls`` from ``--set`` values (strings), each converted to its field's
    type (str, int or float); an unknown field is refused with the list of ``whose`` fields."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = set(extra) - set(types)
    if unknown:
        raise SystemExit(f"unknown --set field(s) {sorted(unknown)}; {whose} are {sorted(types)}")
    convert = {"str": str, "int": int, "float": float}
    return cls(**{k: convert[str(types[k])](v) for k, v in extra.items()})


class Trainer(Protocol):
    """One model's training: what to checkpoint, one optimisation step, and the final export."""

    name: str
    kinds: tuple[str, ...]  # which face kinds the training batches hold

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def step(self, step: int, batch: FaceBatch, gen: torch.Generator) -> dict[str, float]: ...

    def export(self, out_dir: Path) -> None: ...


class OneModel:
    """What a trainer of one model with one optimizer has in common: the parts a checkpoint holds
    (named ``model`` and ``opt``) and one clipped update."""

    model: nn.Module
    opt: torch.optim.Optimizer

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss``, gradients clipped to norm 1."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()


def run(trainer: Trainer, s: Settings, run_dir: Path) -> dict:
    """Train ``trainer`` to ``s.steps`` (resuming from ``run_dir`` if asked), export, return the record."""
    torch.set_num_threads(s.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_path = run_dir / "resume.safetensors"
    start, elapsed, logs = 0, 0.0, {}
    if s.resume and resume_path.exists():
        was = checkpoint_meta(resume_path).get("layout", "standard")  # before layouts: standard
        if was != s.layout:  # the rest of the run would be trained on other faces than its start
            raise SystemExit(f"the checkpoint was trained with --layout {was}, not {s.layout}")
        start, elapsed, logs = load_checkpoint(resume_path, trainer)
        print(f"resumed {trainer.name} at step {start} ({elapsed / 60:.1f} min so far)", file=sys.stderr)
        if start > s.steps:
            raise SystemExit(f"the checkpoint is at step {start}, past --steps {s.steps}")
    last_save = time.monotonic()
    done = start
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` saves like Ctrl-C does
    with tqdm(total=s.steps, initial=start, desc=trainer.name, unit="step", mininterval=5) as bar:
        try:
            for step, logs, seconds in _steps(trainer, s, start):
                elapsed += seconds
                done = step + 1
                bar.update(1)
                speed = {"img/s": f"{s.batch_size / seconds:.0f}"}
                bar.set_postfix({**{k: f"{v:.4f}" for k, v in logs.items()}, **speed}, refresh=False)
                if time.monotonic() - last_save > 60 * s.checkpoint_minutes:
                    save_checkpoint(resume_path, trainer, done, elapsed, logs, s.layout)
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            save_checkpoint(resume_path, trainer, done, elapsed, logs, s.layout)
            sys.exit(
                f"stopped after step {done}: continue with --resume "
                f"(--resume --steps {done} exports what there is)"
            )
    save_checkpoint(resume_path, trainer, done, elapsed, logs, s.layout)
    record = {
        "command": s.command,
        "seed": s.seed,
        "layout": s.layout,
        "steps": s.steps,
        "batch_size": s.batch_size,
        "lr": s.lr,
        "threads": s.threads,
        "train_seconds": round(elapsed, 1),
        "images_seen": s.steps * s.batch_size,
        "final_logs": {k: round(v, 5) for k, v in logs.items()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": _machine(),
        **s.extra,
    }
    start_record = Path(s.extra.get("init_from", "")) / "training.json"
    if s.extra.get("init_from") and start_record.is_file():  # a fine-tune: its budget is the chain's
        before = json.loads(start_record.read_text())
        record["started_from"] = before
        record["chain_seconds"] = round(
            before.get("chain_seconds", before["train_seconds"]) + record["train_seconds"], 1
        )
    out_dir = s.out / trainer.name
    trainer.export(out_dir)
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _steps(trainer: Trainer, s: Settings, start: int) -> Iterator[tuple[int, dict[str, float], float]]:
    """Run steps ``start..s.steps-1``, yielding (step, logs, seconds it took including data)."""
    for step in range(start, s.steps):
        t0 = time.perf_counter()
        seed = batch_seed(s.seed, step)
        batch = make_faces(s.batch_size, seed, trainer.kinds, layout=s.layout)
        if hasattr(trainer, "augment"):  # a trainer that redraws its batch with edits (the judge's)
            batch = trainer.augment(batch, seed, s.layout)
        logs = trainer.step(step, batch, torch.Generator().manual_seed(seed))
        yield step, logs, time.perf_counter() - t0


def save_checkpoint(
    path: Path,
    trainer: Trainer,
    step: int,
    elapsed: float,
    logs: dict[str, float],
    layout: str = "standard",
) -> None:
    """Weights and optimizer state of every part, atomically (a crash leaves the old file).

    The last step's logs go along, so a run exported by ``--resume`` at its final step (which runs
    no step) still records them in the model card; so does the face layout, which a resumed run
    must keep.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"step": step, "elapsed": elapsed, "logs": logs, "layout": layout, "optimizers": {}}
    for name, module in trainer.modules().items():
        tensors.update({f"module.{name}.{k}": v.contiguous() for k, v in module.state_dict().items()})
    for name, opt in trainer.optimizers().items():
        state = opt.state_dict()
        for pid, entries in state["state"].items():
            tensors.update({f"optim.{name}.{pid}.{k}": v.contiguous() for k, v in entries.items()})
        meta["optimizers"][name] = state["param_groups"]
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def load_checkpoint(path: Path, trainer: Trainer) -> tuple[int, float, dict[str, float]]:
    """Restore what :func:`save_checkpoint` wrote; returns (next step, seconds so far, last logs)."""
    meta = checkpoint_meta(path)
    tensors = load_file(str(path))
    for name, module in trainer.modules().items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, opt in trainer.optimizers().items():
        prefix = f"optim.{name}."
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, entry = key[len(prefix) :].split(".", 1)
                state.setdefault(int(pid), {})[entry] = value
        opt.load_state_dict({"state": state, "param_groups": meta["optimizers"][name]})
    return meta["step"], meta["elapsed"], meta.get("logs", {})  # checkpoints before logs were kept


def checkpoint_meta(path: Path) -> dict:
    """The scalars :func:`save_checkpoint` wrote (step, time, logs, layout, optimizer groups), read
    from the file's header alone."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["meta"])


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Warm-up to ``peak``, then cosine decay to 10% of it: stateless, so resuming needs no state."""
    if step < warmup:
        return warmup_lr(step, peak, warmup)
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def warmup_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then constant: the schedule for runs extended with ``--resume``."""
    return peak * min(1.0, (step + 1) / warmup)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def save_image_grid(images: np.ndarray, path: Path, cols: int = 8, scale: int = 3) -> None:
    """(n, H, W, 3) uint8 -> one PNG, ``cols`` wide, each pixel scaled up (nearest) for viewing."""
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        y, x = 2 + (i // cols) * (h + 2), 2 + (i % cols) * (w + 2)
        canvas[y : y + h, x : x + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    big = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    big.save(path)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores ({platform.processor() or 'cpu'})"


def eye_to_eye_loss(
    attention: torch.Tensor,
    grid: tuple[int, int],
    found: list[tuple[np.ndarray, float] | None],
    sources: tuple[int, ...] = (0, 1),
) -> tuple[torch.Tensor, int]:
    """Mean over the eye queries of ``-log(mass on the other eye's cells)``: a supervision of where
    an eye looks, read as the eval reads it (the query is the cell holding the eye's centre, the
    cells the eval's :func:`~spatial_attn.faces.eye_attention.eye_cells`); and how many images
    counted. ``attention`` (B, N, N) with keys and queries on ``grid`` (token = y * W + x); each
    image's eyes ``(centres (2, 2), radius)`` as :func:`~spatial_attn.data.eyes.locate_eyes`
    returns them, or None to leave the image out; eye ``src`` of ``sources`` queries eye ``1 - src``.
    Zero (with a graph) when no image counts."""
    terms = []
    for b, eyes_radius in enumerate(found):
        if eyes_radius is None:
            continue
        eyes, radius = eyes_radius
        for src in sources:
            y, x = cell_at(tuple(int(v) for v in np.floor(eyes[src])), IMAGE_HW, grid)
            cells = torch.from_numpy(eye_cells(eyes[1 - src], radius, grid).reshape(-1))
            terms.append(-torch.log(attention[b, y * grid[1] + x][cells].sum() + 1e-6))
    located = len(terms) // len(sources)
    return (torch.stack(terms).mean() if terms else attention.sum() * 0), located
