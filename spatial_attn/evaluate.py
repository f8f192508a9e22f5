"""``spatial-attn eval``: did the bundled models learn the faces, and does their attention show it?

Three measurements, all on fresh seeds (training faces come from seeds >= 10**12):

* the ViT's accuracy over the five kinds of image (valid faces, three broken ones, no face);
* the share of DDPM and SAGAN samples that the ViT judges to be valid faces (matching eyes);
* the **eye-to-eye lift** of every attention layer: put the query on one eye, and divide the
  attention mass that lands on the other eye's cells by those cells' share of the grid. 1 means
  the query looks there no more than anywhere else; the trained models should look much more. The
  mass is taken over the grid only (a ViT's CLS token is left out and the row renormalised), so 1
  stays the uniform baseline. The inputs go through the same ``prepare``/``run`` the app uses.

Every number is also measured on the random twin, whose lift should sit near 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import spatial_attn as sa

from .data import EYE_COLORS, KINDS, FaceBatch, make_faces
from .data.tensors import to_tensor
from .models import BundledModel, Prepared, load_model

ACCURACY_SEED = 1
SAMPLE_SEED = 2
LIFT_SEED = 3
IMAGE_HW = (32, 32)
NAMES = ("vit-faces", "ddpm-faces", "sagan-faces")
Twins = tuple[BundledModel, BundledModel]  # (trained, random twin)


@dataclass
class Result:
    """One row of the table: a metric of one model, trained and untrained."""

    model: str
    metric: str
    target: str
    trained: float
    twin: float
    percent: bool = False
    detail: dict = field(default_factory=dict)  # e.g. the lift of every layer
    samples: np.ndarray | None = field(default=None, repr=False)  # (n, 32, 32, 3) judged samples

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "samples"}

    @property
    def met(self) -> bool | None:
        """Whether the trained figure reaches a ``>= x`` target; None where there is no target."""
        if not self.target.startswith(">= "):
            return None
        goal = float(self.target[3:].rstrip("%"))
        return bool((100 * self.trained if self.percent else self.trained) >= goal)

    def cells(self) -> list[str]:
        show = (lambda v: f"{100 * v:.1f}%") if self.percent else (lambda v: f"{v:.2f}")
        met = {True: "yes", False: "**no**", None: "-"}[self.met]
        return [self.model, self.metric, self.target, show(self.trained), met, show(self.twin)]


@torch.no_grad()
def predict(vit: BundledModel, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """The ViT's predicted kind index for each uint8 image (n, 32, 32, 3)."""
    x = to_tensor(images)  # (n, 3, 32, 32)
    return torch.cat([vit.module(chunk).argmax(-1) for chunk in x.split(batch)]).numpy()


def accuracy(vit: BundledModel, n: int = 2000) -> tuple[float, dict]:
    """Accuracy on ``n`` fresh faces of all kinds, and per kind."""
    faces = make_faces(n, ACCURACY_SEED, KINDS)
    hit = predict(vit, faces.images) == faces.labels
    return float(hit.mean()), {k: round(float(hit[faces.labels == i].mean()), 4) for i, k in enumerate(KINDS)}


def judged_valid(judge: BundledModel, images: np.ndarray) -> tuple[float, dict]:
    """Fraction of images the judge calls valid, and how the rest were called."""
    pred = predict(judge, images)
    return float((pred == 0).mean()), {k: round(float((pred == i).mean()), 4) for i, k in enumerate(KINDS)}


def eye_cells(centre: np.ndarray, radius: float, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the cells of ``grid`` whose box touches the eye disc (centre (y, x), pixels)."""
    h, w = grid
    boxes = np.array([[sa.cell_box((y, x), grid, IMAGE_HW) for x in range(w)] for y in range(h)])  # (h, w, 4)
    near_y = np.clip(centre[0], boxes[..., 0], boxes[..., 2])  # nearest point of each box
    near_x = np.clip(centre[1], boxes[..., 1], boxes[..., 3])
    return (near_y - centre[0]) ** 2 + (near_x - centre[1]) ** 2 < radius**2


def lift(layer: sa.AttentionLayer, src: np.ndarray, dst: np.ndarray, radius: float) -> float:
    """Attention mass from the cell holding eye ``src`` onto eye ``dst``, over its uniform share."""
    y, x = sa.cell_at(tuple(int(v) for v in np.floor(src)), IMAGE_HW, layer.query_grid)
    row = layer.row(y, x)  # (h, w) spatial part, CLS left out
    cells = eye_cells(dst, radius, layer.key_grid)
    return float(row[cells].sum() / row.sum() / cells.mean())


def layer_lifts(bm: BundledModel, prepared: Prepared, eyes: np.ndarray, radius: float) -> dict[str, float]:
    """Lift of every attention layer of one forward, both directions (left -> right eye and back)."""
    with sa.capture(bm.module) as cap, torch.no_grad():
        bm.run(prepared)
    a, b = eyes  # (y, x) each
    return {layer.name: (lift(layer, a, b, radius) + lift(layer, b, a, radius)) / 2 for layer in cap.layers}


def eye_lift(bm: BundledModel, faces: FaceBatch, timestep: int | None = None) -> dict[str, float]:
    """Mean lift per layer over real ``faces``.

    Each face goes through ``bm.prepare`` and ``bm.run`` exactly as in the app (for the DDPM:
    noised to ``timestep`` with the face's index as the noise seed).
    """
    return _mean(
        [
            layer_lifts(
                bm,
                bm.prepare(Image.fromarray(img), timestep=timestep, seed=i),
                faces.eyes[i],
                faces.eye_radius[i, 0],
            )
            for i, img in enumerate(faces.images)
        ]
    )


def generator_eye_lift(gan: Twins, n: int) -> tuple[dict[str, float], dict[str, float], int]:
    """Lift in the generator's attention for samples whose eyes :func:`locate_eyes` finds.

    The twin runs on the same seeds and is measured at the eyes found in the trained sample (its
    own samples have no eyes), so its figure is the untrained baseline for the same cells.
    Returns (trained, twin, how many of the ``n`` samples had both eyes located).
    """
    trained, twin = [], []
    for seed in range(n):
        prepared = gan[0].prepare(seed=seed)
        found = locate_eyes(prepared.display)
        if found is not None:
            trained.append(layer_lifts(gan[0], prepared, *found))
            twin.append(layer_lifts(gan[1], gan[1].prepare(seed=seed), *found))
    return _mean(trained), _mean(twin), len(trained)


def locate_eyes(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Eye centres (2, 2) and a radius in a generated face, or None if two eyes are not clear.

    An eye is a compact blob of pixels near one of the palette's eye colours in the upper face,
    one on each side of the middle column; diffuse matches (a background of a similar colour)
    are rejected by their spread.
    """
    near = np.abs(image[:, :, None, :].astype(int) - EYE_COLORS.astype(int)).max(-1).min(-1) < 45  # (32, 32)
    near[:5], near[22:], near[:, :3], near[:, 29:] = False, False, False, False
    eyes, areas = [], []
    for side in (slice(0, 16), slice(16, 32)):
        ys, xs = np.nonzero(near[:, side])
        if len(ys) < 4 or ys.std() > 2.5 or xs.std() > 2.5:
            return None
        eyes.append((ys.mean() + 0.5, xs.mean() + 0.5 + side.start))
        areas.append(len(ys))
    if abs(eyes[0][0] - eyes[1][0]) > 3:
        return None
    return np.array(eyes, dtype=np.float32), float(np.clip(np.sqrt(np.mean(areas) / np.pi), 2.0, 4.0))


def _mean(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in dicts])) for k in dicts[0]} if dicts else {}


def evaluate_all(checkpoints: Path, samples: int = 256, faces: int = 200, threads: int = 2) -> list[Result]:
    """Every metric of the table, for the bundled models in ``checkpoints``."""
    torch.set_num_threads(threads)
    vit, ddpm, sagan = (
        (load_model(n, True, root=checkpoints), load_model(n, False, root=checkpoints)) for n in NAMES
    )
    real = make_faces(faces, LIFT_SEED)
    mid = ddpm[0].num_timesteps // 2
    return [
        _accuracy_result(vit),
        _samples_result(ddpm, vit[0], samples, ">= 80%", "DDIM, 50 steps, eta 1"),
        _samples_result(sagan, vit[0], samples, ">= 60%", "z from N(0, I)"),
        _lift_result(vit, real, f"{faces} real faces"),
        _lift_result(ddpm, real, f"{faces} real faces noised to t={mid}", timestep=mid),
        _lift_result(sagan, real, f"discriminator on {faces} real faces"),
        _generator_lift_result(sagan, faces),
    ]


def _accuracy_result(vit: Twins) -> Result:
    (trained, per_kind), (twin, _) = (accuracy(m) for m in vit)
    return Result(
        "vit-faces",
        f"accuracy, 2,000 fresh images of {len(KINDS)} kinds",
        ">= 98%",
        trained,
        twin,
        percent=True,
        detail={"per_kind": per_kind},
    )


def _samples_result(gen: Twins, judge: BundledModel, n: int, target: str, how: str) -> Result:
    samples = gen[0].sample(SAMPLE_SEED, n)
    (trained, calls), (twin, _) = (judged_valid(judge, s) for s in (samples, gen[1].sample(SAMPLE_SEED, n)))
    return Result(
        gen[0].name,
        f"{n} samples ({how}) judged valid by vit-faces",
        target,
        trained,
        twin,
        percent=True,
        detail={"calls": calls},
        samples=samples,
    )


def _lift_result(models: Twins, faces: FaceBatch, what: str, timestep: int | None = None) -> Result:
    """The best layer of the trained model, and the twin's lift at that same layer."""
    trained, twin = (eye_lift(m, faces, timestep) for m in models)
    best = max(trained, key=trained.get)
    return Result(
        models[0].name,
        f"eye-to-eye lift, {what}, best layer `{best}`",
        ">= 3",
        trained[best],
        twin[best],
        detail={"trained": trained, "twin": twin},
    )


def _generator_lift_result(sagan: Twins, n: int) -> Result:
    trained, twin, located = generator_eye_lift(sagan, n)
    if not located:
        return Result(
            sagan[0].name,
            f"eye-to-eye lift, generator: no eyes located in {n} samples",
            "-",
            float("nan"),
            float("nan"),
        )
    ((layer, value),) = trained.items()
    what = f"eye-to-eye lift, generator on the {located} of {n} samples whose eyes were located, `{layer}`"
    # The lift target asks for one layer per model; the generator's layer is the SAGAN's other candidate.
    return Result(sagan[0].name, what, ">= 3", value, twin[layer], detail={"trained": trained, "twin": twin})


def format_table(results: list[Result]) -> str:
    """A Markdown table (prints well in a terminal and pastes into the model cards)."""
    rows = [["model", "metric", "target", "trained", "met", "random twin"], ["---"] * 6]
    rows += [r.cells() for r in results]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def write_grids(assets: Path, results: list[Result], count: int = 64) -> list[Path]:
    """``samples-ddpm.png`` / ``samples-sagan.png``: the first ``count`` judged samples of each model."""
    from .train.common import save_image_grid

    paths = []
    for r in results:
        if r.samples is not None:
            path = assets / f"samples-{r.model.split('-')[0]}.png"
            save_image_grid(r.samples[:count], path)
            paths.append(path)
    return paths


def write_cards(checkpoints: Path, table: str, results: list[Result]) -> None:
    """Put the table into every model card and the raw numbers next to it (metrics.json)."""
    from .models.cards import write_card

    for name in NAMES:
        mine = [r.to_json() for r in results if r.model == name]
        (checkpoints / name / "metrics.json").write_text(json.dumps(mine, indent=2) + "\n")
        write_card(checkpoints, name, table, mine)
