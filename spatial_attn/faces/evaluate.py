"""``spatial-attn eval``: did the bundled models learn the faces, and does their attention show it?

Every figure stands beside a control that could have come out otherwise, on faces and samples from
seeds never used in training (training uses seeds >= 10**12):

* **The judge** (:data:`JUDGE`, a CNN with no attention: probe rows, no layer rows): the share of
  valid faces it calls valid (also with the head moved or scaled), and the share of each kind of
  broken face (probe) it *also* calls valid: mouthless faces, blurred mismatches, the soft shape
  pairs blurred and not. Where a probe changes one thing in faces that are otherwise valid, the
  same faces with that change undone are judged beside it.
* **The generators**: the share of their samples the judge calls valid, and the *coverage* of every
  eye colour and shape (its share in samples over its share in drawn faces, both read by the same
  eye reader).
* **Attention, per layer**: the eye-to-eye lift on valid faces, on the same faces with the other
  eye erased and on the background alone, their ratio (the *content lift*); the lift from a cheek
  cell (not an eye) over the lift from the eye (*cheek share*); whether the peak follows a moved
  eye, beside whether it follows a moved *decoy* (a non-eye disc of the eye's size and contrast)
  and chance (:mod:`spatial_attn.faces.eye_attention`), a diffusion model's at each of
  :data:`NOISE_LEVELS`; the SAGAN generator's lift against position alone, from the cheek, its
  peak on the other eye and its collapsed rows (:mod:`spatial_attn.faces.sample_eval`).

Figures pool several seeds and carry 95% bootstrap intervals over faces (or samples). Seeds,
targets, the headline rule and the verdict rule come from :mod:`spatial_attn.faces.protocol`, fixed
before its sealed seeds were run; :func:`sealed_run` runs those once and leaves a record.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import KINDS, SHAPES, Edit, blur, make_faces
from ..data.tensors import to_tensor
from ..models import JUDGE, BundledModel, load_model
from . import protocol
from .eye_attention import COLLAPSE, Figures, measure, variants
from .protocol import (
    BLUR_SIGMA,
    CONTENT_TARGET,
    CONTROL_SHARE,
    DEV_SEEDS,
    FOLLOW_TARGET,
    NOISE_LEVELS,
    PROBE_TARGET,
    SEALED_RECORD,
    SEALED_SEEDS,
    SPENT_SEEDS,
    THIRD_SEALED_SEEDS,
)
from .sample_eval import coverage, generator_figures

SPLITS = {"dev": DEV_SEEDS, "spent": SPENT_SEEDS, "sealed-3": THIRD_SEALED_SEEDS, "sealed": SEALED_SEEDS}
ATTENTION = ("vit-faces", "ddpm-faces", "sagan-faces", "vit-inpaint")  # the models with attention rows
NAMES = (JUDGE, *ATTENTION)
COLLAPSE_REPORTED = 0.05  # share of collapsed rows from which a layer's collapse is spelled out
Twins = tuple[BundledModel, BundledModel]  # (trained, random twin)


@dataclass(frozen=True)
class Estimate:
    """A figure and its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def show(self, percent: bool = False) -> str:
        if np.isnan(self.value):
            return "n/a"
        fmt = (lambda v: f"{100 * v:.1f}%") if percent else _number
        if np.isnan(self.low):  # a figure with no interval (coverage)
            return fmt(self.value)
        return f"{fmt(self.value)} [{fmt(self.low)}, {fmt(self.high)}]"


NONE = Estimate(float("nan"), float("nan"), float("nan"))


def at_least(e: Estimate, goal: float) -> bool:
    """The verdict rule for ``>= goal``: the interval's lower bound (the value if it has none)."""
    return bool((e.value if np.isnan(e.low) else e.low) >= goal)


def at_most(e: Estimate, goal: float) -> bool:
    """The verdict rule for ``<= goal``: the interval's upper bound (the value if it has none)."""
    return bool((e.value if np.isnan(e.high) else e.high) <= goal)


def _number(v: float) -> str:
    """Two decimals, or two significant digits where two decimals would show 0.00 or a long run of
    digits (a lift of 3e-5, or a ratio over such a lift)."""
    return f"{v:.2f}" if v == 0 or 0.01 <= abs(v) < 1000 else f"{v:.2g}"


def bootstrap(stat: Callable[..., np.ndarray], *columns: np.ndarray, n: int = 1000) -> Estimate:
    """``stat`` of the columns (aligned per face) and its 2.5 / 97.5 percentiles over ``n`` resamples.

    ``stat`` gets arrays shaped (resamples, faces) and reduces the last axis, so a ratio of means
    (the content lift) is resampled face by face, numerator and denominator together.
    """
    m = len(columns[0])
    if m == 0:
        return NONE
    idx = np.random.default_rng(0).integers(0, m, (n, m))  # fixed: the table does not jitter
    boots = stat(*(c[idx] for c in columns))
    value = float(stat(*(c[None] for c in columns))[0])
    big = np.finfo(np.float64).max  # percentiles interpolate: inf - inf would make a bound nan
    low, high = np.percentile(np.clip(boots, -big, big), [2.5, 97.5])
    return Estimate(value, *(float(np.inf if b >= big else b) for b in (low, high)))


def mean(x: np.ndarray) -> Estimate:
    return bootstrap(lambda a: a.mean(-1), x)


def ratio(a: np.ndarray, b: np.ndarray) -> Estimate:
    """Ratio of means. Where the denominator is 0 (a resample in which the layer never follows the
    eye) the ratio is inf, or 1 if the numerator is 0 too: no evidence that the figure is specific,
    so a control's share then fails its ``<=`` target instead of leaving an interval undefined."""

    def share(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        num, den = p.mean(-1), q.mean(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den == 0, np.where(num == 0, 1.0, np.inf), num / den)

    return bootstrap(share, a, b)


@dataclass
class Row:
    """One line of the summary table: a figure, its target, and its control."""

    model: str
    metric: str
    target: str
    trained: Estimate
    control: str  # what the figure is read against, with its value
    percent: bool = True
    detail: dict = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """Whether the figure reaches a ``>= x`` or ``<= x`` target by the protocol's verdict rule
        (the interval's lower or upper bound; the value where there is no interval); None where
        there is no target."""
        found = re.fullmatch(r"([<>]=) ([\d.]+)(%?)", self.target)
        if not found or np.isnan(self.trained.value):
            return None
        goal = float(found[2]) / (100 if found[3] else 1)
        return at_least(self.trained, goal) if found[1] == ">=" else at_most(self.trained, goal)

    def cells(self) -> list[str]:
        met = {True: "yes", False: "**no**", None: "-"}[self.met]
        return [self.model, self.metric, self.target, self.trained.show(self.percent), met, self.control]


@dataclass
class LayerRow:
    """One attention layer's figures with their controls, pooled over the seeds."""

    model: str
    layer: str
    valid: Estimate
    erased: Estimate
    blank: Estimate
    content: Estimate
    cheek: Estimate  # lift onto the other eye from a cheek cell below the query eye
    cheek_share: Estimate  # cheek / valid lift
    follows: Estimate
    decoy: Estimate  # the moved-eye test with the moved eye drawn as a decoy
    decoy_share: Estimate  # decoy / follows
    chance: float
    twin_content: Estimate
    twin_follows: Estimate
    collapsed: float
    headline: bool = False
    per_seed: dict = field(default_factory=dict)
    #: decoy / follows over the faces whose eyes are not black (no target; see eye_attention)
    decoy_share_no_black: Estimate = NONE

    @property
    def met(self) -> bool | None:
        """The protocol's attention verdict: content lift and follows by their lower bounds, both
        controls' shares by their upper bounds."""
        if np.isnan(self.follows.value):
            return None
        return (
            at_least(self.content, CONTENT_TARGET)
            and at_least(self.follows, FOLLOW_TARGET)
            and at_most(self.cheek_share, CONTROL_SHARE)
            and at_most(self.decoy_share, CONTROL_SHARE)
        )

    def cells(self) -> list[str]:
        met = {True: "yes", False: "**no**", None: "-"}[self.met]
        name = f"**`{self.layer}`** (headline)" if self.headline else f"`{self.layer}`"
        twin_follows = "n/a" if np.isnan(self.twin_follows.value) else f"{100 * self.twin_follows.value:.0f}%"
        chance = "" if np.isnan(self.chance) else f" (chance {100 * self.chance:.1f}%)"
        return [
            self.model,
            name,
            self.valid.show(),
            self.erased.show(),
            self.blank.show(),
            self.content.show(),
            self.cheek.show(),
            self.cheek_share.show(),
            self.follows.show(True) + chance,
            self.decoy.show(True),
            self.decoy_share.show(),
            f"{self.twin_content.value:.2f} / {twin_follows}",
            f"{100 * self.collapsed:.0f}%",
            met,
        ]


@dataclass
class Report:
    """Everything ``spatial-attn eval`` measured: the summary rows, the layer rows, the samples."""

    split: str
    rows: list[Row]
    layers: list[LayerRow]
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # model -> (n, 32, 32, 3)
    models: tuple[str, ...] = NAMES  # the models asked for: each gets a verdict line, measured or not


# -- the judge ------------------------------------------------------------------------------------
@torch.no_grad()
def predict(judge: BundledModel, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """The classifier's predicted kind index for each uint8 image (n, 32, 32, 3)."""
    x = to_tensor(images)  # (n, 3, 32, 32)
    return torch.cat([judge.module(chunk).argmax(-1) for chunk in x.split(batch)]).numpy()


@dataclass
class Probe:
    """Images the judge is asked about, what it should say, and (where one can differ) a control:
    the same faces with the probed change undone, judged the same way."""

    images: np.ndarray
    target: str  # ">= 98%", "<= 10%" or "-"
    control: np.ndarray | None = None
    undone: str = ""  # what the control's faces are, e.g. "with a mouth"


def probes(seed: int, n: int) -> dict[str, Probe]:
    """``n`` images of every probe, from ``seed``: valid faces (plain, blurred, the head moved or
    scaled), which the judge must call valid, then every broken kind, mouthless faces, blurred
    mismatches and the soft shape pairs blurred and not, which it must not."""
    rng = np.random.default_rng([seed, 23])  # directions and pair orders: the faces' draws stay put
    sigma = np.full(n, BLUR_SIGMA)
    plain = make_faces(n, seed).images
    steps = protocol.FACE_SHIFT_PX * np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])[rng.integers(0, 4, n)]
    scale = rng.uniform(*protocol.FACE_SCALE, n)
    moved, scaled = (
        make_faces(n, seed, edit=e).images for e in (Edit(head_shift=steps), Edit(head_scale=scale))
    )
    valid, broken = f">= {100 * protocol.VALID_TARGET:g}%", f"<= {100 * PROBE_TARGET:g}%"
    faces_moved = f">= {100 * protocol.MOVED_FACE_TARGET:g}%"
    out = {
        "valid": Probe(plain, valid),
        "valid, blurred": Probe(blur(plain, sigma), "-", plain, "sharp"),
        f"valid, head moved {protocol.FACE_SHIFT_PX:g} px": Probe(moved, faces_moved, plain, "not moved"),
        "valid, head scaled {:g}-{:g}x".format(*protocol.FACE_SCALE): Probe(
            scaled, faces_moved, plain, "not scaled"
        ),
    }
    for k, kind in enumerate(KINDS[1:], 1):
        out[kind] = Probe(make_faces(n, seed + 100 * k, (kind,)).images, broken)
    with_mouth = make_faces(n, seed + 5000).images
    mouthless = make_faces(n, seed + 5000, edit=Edit(mouthless=np.ones(n, dtype=bool))).images
    out["mouthless"] = Probe(mouthless, broken, with_mouth, "with a mouth")
    for k, kind in enumerate(("eye_shape", "eye_color", "eye_size"), 1):
        out[f"{kind}, blurred"] = Probe(blur(make_faces(n, seed + 1000 * k, (kind,)).images, sigma), broken)
    for k, (a, b) in enumerate(protocol.SOFT_PAIRS):
        pair = np.array([SHAPES.index(a), SHAPES.index(b)])
        order = np.where(rng.integers(0, 2, (n, 1)) == 1, pair, pair[::-1])  # which eye gets which
        mixed = make_faces(n, seed + 6000 + 100 * k, ("eye_shape",), Edit(shapes=order)).images
        same = make_faces(
            n, seed + 6000 + 100 * k, ("eye_shape",), Edit(shapes=np.full((n, 2), pair[0]))
        ).images
        out[f"{a}/{b}"] = Probe(mixed, broken, same, f"with both eyes {a}")
        out[f"{a}/{b}, blurred"] = Probe(blur(mixed, sigma), broken, blur(same, sigma), f"with both eyes {a}")
    return out


def judge_rows(judge: BundledModel, seeds: tuple[int, ...], n: int) -> list[Row]:
    """Share judged valid per probe, pooled over ``seeds``; beside it the share for the same faces
    with the probed change undone, where there is such a control (it could come out otherwise)."""
    pooled: dict[str, list[Probe]] = {}
    for seed in seeds:
        for name, probe in probes(seed, n).items():
            pooled.setdefault(name, []).append(probe)
    rows = []
    for name, parts in pooled.items():
        images = np.concatenate([p.images for p in parts])
        control = ""
        if parts[0].control is not None:
            undone = np.concatenate([p.control for p in parts])
            control = f"same faces {parts[0].undone}: {100 * (predict(judge, undone) == 0).mean():.1f}%"
        said = (predict(judge, images) == 0).astype(float)
        rows.append(
            Row(
                judge.name,
                f"{name}: judged valid, {len(images):,} images",
                parts[0].target,
                mean(said),
                control,
            )
        )
    return rows


# -- the generators ---------------------------------------------------------------------------------
def sample_rows(
    gen: BundledModel, judge: BundledModel, seeds: tuple[int, ...], n: int
) -> tuple[list[Row], np.ndarray]:
    """Judged-valid share and coverage of ``gen``'s samples from ``seeds``; and the samples."""
    samples = np.concatenate([gen.sample(s, n) for s in seeds])
    pred = predict(judge, samples)
    calls = {k: round(float((pred == i).mean()), 4) for i, k in enumerate(judge.labels or KINDS)}
    drawn = np.concatenate([make_faces(n, s + 50).images for s in seeds])
    cov = coverage(samples, drawn)
    worst, share = cov.worst
    name = gen.name
    rows = [
        Row(
            name,
            f"samples judged valid, {len(samples)} ({len(seeds)} seeds)",
            f">= {100 * protocol.SAMPLES_VALID_TARGET:g}%",
            mean((pred == 0).astype(float)),
            "",
            detail={"calls": calls},
        ),
        Row(
            name,
            f"coverage: rarest eye colour or shape (`{worst}`), share in samples / in drawn faces",
            f">= {100 * protocol.COVERAGE_TARGET:g}%"
            if name == "sagan-faces"
            else "-",  # issue 13 asks it of the SAGAN; the DDPM's is a control
            Estimate(share, float("nan"), float("nan")),
            f"eyes located in {cov.located[0]:.0%} of samples, {cov.located[1]:.0%} of drawn faces",
            detail={"colours": cov.colours, "shapes": cov.shapes},
        ),
    ]
    return rows, samples


# -- attention --------------------------------------------------------------------------------------
def pooled_figures(
    bm: BundledModel, seeds: tuple[int, ...], n: int, timesteps: tuple[int | None, ...] = (None,)
) -> list[Figures]:
    """:func:`~spatial_attn.faces.eye_attention.measure` on each seed's faces (one entry per seed).

    With several ``timesteps`` (a diffusion model), every layer comes once per noise level, named
    ``layer @ t=T`` and listed layer by layer: how far a layer follows the eye depends on how much of
    the eye the noise has left, so one noise level would answer only for itself.
    """
    out = []
    for seed in seeds:
        v = variants(n, seed)
        by_t = {t: measure(bm, v, t) for t in timesteps}
        first = by_t[timesteps[0]]
        out.append(
            {layer if t is None else f"{layer} @ t={t}": by_t[t][layer] for layer in first for t in timesteps}
        )
    return out


def noise_levels(bm: BundledModel) -> tuple[int | None, ...]:
    """The timesteps a model's layers are measured at: :data:`NOISE_LEVELS` of a diffusion model's
    schedule, ``(None,)`` for a model without one."""
    if not bm.num_timesteps:
        return (None,)
    return tuple(round(f * bm.num_timesteps) for f in NOISE_LEVELS)


def _cat(per_seed: list[Figures], layer: str, key: str) -> np.ndarray:
    return np.concatenate([f[layer][key] for f in per_seed])


def headline_rule(per_seed: list[Figures]) -> str:
    """The protocol's headline rule, on the **dev** seeds' point estimates: the row with the largest
    ``min(content / 2, follows / 0.8, 0.5 / cheek share, 0.5 / decoy share)``, i.e. the one nearest
    to meeting all four (see :mod:`spatial_attn.faces.protocol`)."""

    def score(layer: str) -> float:
        def m(key: str) -> float:
            return float(_cat(per_seed, layer, key).mean())

        floor = 1e-6
        return min(
            m("valid") / m("erased") / CONTENT_TARGET,
            m("follows") / FOLLOW_TARGET,
            CONTROL_SHARE / max(floor, m("cheek") / m("valid")),
            CONTROL_SHARE / max(floor, m("decoy") / max(floor, m("follows"))),
        )

    return max(per_seed[0], key=score)


def layer_rows(name: str, trained: list[Figures], twin: list[Figures], headline: str) -> list[LayerRow]:
    """One row per layer (and, where there are special tokens, one with them kept)."""
    rows = []
    for layer, figs in trained[0].items():
        rows.append(_layer_row(name, layer, "", trained, twin, layer == headline))
        if "valid_cls" in figs:
            rows.append(_layer_row(name, layer, "_cls", trained, twin, False))
    return rows


def _layer_row(
    name: str, layer: str, suffix: str, trained: list[Figures], twin: list[Figures], headline: bool
) -> LayerRow:
    """A layer's row; ``suffix="_cls"`` takes the lifts with special tokens kept (the peak test
    looks at the grid either way, so that row leaves it out)."""

    def col(key: str, figs: list[Figures] = trained) -> np.ndarray:
        return _cat(figs, layer, key + (suffix if key in ("valid", "erased", "blank") else ""))

    kept = bool(suffix)
    other = col("black_eye") < 0.5  # the faces whose decoy is not a near-black disc
    content = [float(f[layer]["valid" + suffix].mean() / f[layer]["erased" + suffix].mean()) for f in trained]
    return LayerRow(
        name,
        layer + (" (CLS kept)" if kept else ""),
        mean(col("valid")),
        mean(col("erased")),
        mean(col("blank")),
        ratio(col("valid"), col("erased")),
        NONE if kept else mean(col("cheek")),
        NONE if kept else ratio(col("cheek"), col("valid")),
        NONE if kept else mean(col("follows")),
        NONE if kept else mean(col("decoy")),
        NONE if kept else ratio(col("decoy"), col("follows")),
        float("nan") if kept else float(col("chance").mean()),
        ratio(col("valid", twin), col("erased", twin)),
        NONE if kept else mean(col("follows", twin)),
        float(col("collapsed").mean()),
        headline=headline,
        per_seed={"content": content, "follows": [float(f[layer]["follows"].mean()) for f in trained]},
        decoy_share_no_black=NONE if kept else ratio(col("decoy")[other], col("follows")[other]),
    )


def generator_rows(sagan: Twins, seeds: tuple[int, ...], n: int) -> tuple[LayerRow, list[Row]]:
    """The SAGAN generator's layer on its own samples: lift against position alone (no input to
    edit) and from the cheek; and its targets: the peak on the other eye from either eye, collapse."""
    figs = [generator_figures(*sagan, [seed * 1000 + i for i in range(n)]) for seed in seeds]

    def col(key: str) -> np.ndarray:
        return np.concatenate([f[key] for f in figs])

    located = col("located")
    layer = LayerRow(
        "sagan-faces",
        f"generator.attn, {int(located.sum())} of {len(located)} samples with eyes located; "
        "controls: lift at another sample's eyes (position only)",
        mean(col("lift")),
        mean(col("position")),
        NONE,
        ratio(col("lift"), col("position")),
        mean(col("cheek")),
        ratio(col("cheek"), col("lift")),
        NONE,
        NONE,
        NONE,
        float("nan"),
        Estimate(float(col("twin").mean()), float("nan"), float("nan")),
        NONE,
        float(col("collapsed").mean()),
        per_seed={"located": [float(f["located"].mean()) for f in figs]},
    )
    peak = protocol.GENERATOR_PEAK_TARGET
    rows = [
        Row(
            "sagan-faces",
            f"generator.attn: peak from the {side} eye on the other eye, {int(located.sum())} samples",
            f">= {100 * peak:g}%",
            mean(col(f"peak_{side}")),
            f"chance (the other eye's share of the cells) {100 * col('chance').mean():.1f}%",
        )
        for side in ("left", "right")
    ]
    rows.append(
        Row(
            "sagan-faces",
            f"generator.attn: eye queries collapsed onto one grid row, {len(located)} samples",
            f"<= {100 * protocol.COLLAPSE_TARGET:g}%",
            mean(col("collapsed")),
            f">= {COLLAPSE:.0%} of the row's mass on one grid row missing the other eye",
        )
    )
    return layer, rows


# -- the whole evaluation -----------------------------------------------------------------------------
def evaluate_all(
    checkpoints: Path,
    split: str = "dev",
    samples: int = protocol.SAMPLES_PER_SEED,
    faces: int = protocol.FACES_PER_SEED,
    threads: int = 2,
    models: tuple[str, ...] = NAMES,
) -> Report:
    """Every figure of the tables on ``split``'s seeds: ``samples`` and ``faces`` per seed; only the
    rows of ``models`` (the judge still scores the generators' samples)."""
    torch.set_num_threads(threads)
    seeds = SPLITS[split]
    unknown = set(models) - set(NAMES)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}: choose from {', '.join(NAMES)}")
    twins = {
        n: (load_model(n, True, root=checkpoints), load_model(n, False, root=checkpoints))
        for n in ATTENTION
        if n in models
    }
    judge = load_model(JUDGE, True, root=checkpoints)
    rows = judge_rows(judge, seeds, 4 * faces) if JUDGE in models else []
    report = Report(split, rows, [], models=models)
    for name in ("ddpm-faces", "sagan-faces"):
        if name in models:
            gen_rows, report.samples[name] = sample_rows(twins[name][0], judge, seeds, samples)
            rows += gen_rows
    for name in (n for n in ATTENTION if n in models):
        trained_bm, twin_bm = twins[name]
        timesteps = noise_levels(trained_bm)
        trained = pooled_figures(trained_bm, seeds, faces, timesteps)
        twin = pooled_figures(twin_bm, seeds, faces, timesteps)
        dev = trained if split == "dev" else pooled_figures(trained_bm, DEV_SEEDS, faces, timesteps)
        report.layers += layer_rows(name, trained, twin, headline_rule(dev))
    if "sagan-faces" in models:
        gen_layer, gen_rows = generator_rows(twins["sagan-faces"], seeds, samples)
        report.layers.append(gen_layer)
        rows += gen_rows
    return report


def sealed_run(checkpoints: Path, force: bool = False, threads: int = 2) -> Report:
    """The one run of the protocol's sealed seeds, at the protocol's sizes.

    The record (``checkpoints/``:data:`~spatial_attn.faces.protocol.SEALED_RECORD`) is written
    *before* the run, with the commit and the protocol's digest, so a run that crashes half-way has
    still been run; its table is added when it ends. While a record exists the run is refused,
    unless ``force``, and then the record lists the second run, marked forced.
    """
    path = checkpoints / SEALED_RECORD
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    if runs and not force:
        raise SystemExit(
            f"the sealed seeds were already run ({path}, started {runs[0]['started']}): a second run "
            "is not the protocol's; --force runs them again and the record will say so"
        )
    entry = {
        "started": _now(),
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted changes": bool(_git("status", "--porcelain")),
        "protocol_sha256": protocol_digest(),
        "seeds": list(SEALED_SEEDS),
        "forced": bool(runs),
    }
    runs.append(entry)
    _write_record(path, runs)
    report = evaluate_all(
        checkpoints, "sealed", protocol.SAMPLES_PER_SEED, protocol.FACES_PER_SEED, threads=threads
    )
    entry.update(finished=_now(), table=format_table(report))
    _write_record(path, runs)
    return report


def protocol_digest() -> str:
    """SHA-256 of the protocol file's bytes: the sealed run records which protocol it ran under."""
    return hashlib.sha256(Path(protocol.__file__).read_bytes()).hexdigest()


def _write_record(path: Path, runs: list[dict]) -> None:
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _git(*args: str) -> str | None:
    """A git command's output in the package's checkout, or None outside one (an installed copy)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


LAYER_HEADER = [
    "model",
    "layer",
    "lift: valid faces",
    "other eye erased",
    "no face",
    "content lift (valid / erased)",
    "lift from the cheek",
    "cheek share (cheek / valid)",
    "peak follows a moved eye",
    "follows a moved decoy",
    "decoy share (decoy / eye)",
    "twin: content lift / follows",
    "rows collapsed",
    "met",
]


def format_table(report: Report) -> str:
    """Two Markdown tables (judge and samples; attention per layer) and what is met, per model."""
    summary = [["model", "metric", "target", "trained [95% CI]", "met", "control"], ["---"] * 6]
    summary += [r.cells() for r in report.rows]
    layers = [LAYER_HEADER, ["---"] * len(LAYER_HEADER)] + [r.cells() for r in report.layers]
    attention = [name for name in report.models if name != JUDGE]  # the judge has no layers to judge
    verdicts = [verdict(name, [r for r in report.layers if r.model == name]) for name in attention]
    verdicts += [
        f"- **collapse** in {r.model} `{r.layer.split(',')[0]}`: {r.collapsed:.0%} of eye queries put >= "
        f"{COLLAPSE:.0%} of their mass on one grid row that misses the other eye"
        for r in report.layers
        if r.collapsed >= COLLAPSE_REPORTED
    ]
    seeds = ", ".join(map(str, SPLITS[report.split]))
    # no summary rows: some models' layers only; no layer rows: the judge alone
    tables = [t for t, rows in ((summary, report.rows), (layers, report.layers)) if rows]
    return "\n".join(
        [
            f"Seeds: {report.split} ({seeds}). 95% bootstrap intervals in brackets.",
            *(line for table in tables for line in ["", *("| " + " | ".join(row) + " |" for row in table)]),
            "",
            *verdicts,
        ]
    )


def verdict(name: str, rows: list[LayerRow]) -> str:
    """Whether ``name`` meets the attention targets, read off its **headline** row alone: the one
    row picked on the dev seeds by the protocol's rule. Any other row that meets them is named too,
    but as what it is: with 7 layers at 3 noise levels some row may pass by chance."""
    targets = (
        f"content lift >= {CONTENT_TARGET:g} and follows >= {100 * FOLLOW_TARGET:g}% (lower bounds), "
        f"cheek and decoy shares <= {CONTROL_SHARE:g} (upper bounds)"
    )
    head = next((r for r in rows if r.headline), None)
    if head is None:
        return f"- {name}: no headline layer measured"
    met = "meets" if head.met else "**does not meet**"
    line = f"- {name}: the headline layer `{head.layer}` (picked on the dev seeds) {met} {targets}"
    if not np.isnan(head.decoy_share_no_black.value):
        line += (
            f"; its decoy share with black-eyed faces left out is {head.decoy_share_no_black.show()} "
            "(no target: a black eye's decoy is a near-black disc, eye-like itself)"
        )
    others = [f"`{r.layer}`" for r in rows if r.met and not r.headline]
    return line + (f"; also meeting them here, not picked in advance: {', '.join(others)}" if others else "")


def write_grids(assets: Path, report: Report, count: int = 64) -> list[Path]:
    """``samples-ddpm.png`` / ``samples-sagan.png``: the first ``count`` judged samples of each model."""
    from .train.common import save_image_grid

    paths = []
    for name, samples in report.samples.items():
        path = assets / f"samples-{name.split('-')[0]}.png"
        save_image_grid(samples[:count], path)
        paths.append(path)
    return paths


README_BEGIN = "<!-- eval table: written by `spatial-attn eval --write-cards`, do not edit -->"
README_END = "<!-- end of eval table -->"


def write_cards(checkpoints: Path, table: str, report: Report, readme: Path | None = None) -> None:
    """Put the tables into the card of every model measured and ``readme``'s marked block, the numbers
    in metrics.json."""
    from .cards import write_card

    for name in (n for n in NAMES if any(r.model == n for r in report.rows + report.layers)):
        mine = [_row_json(r) for r in report.rows + report.layers if r.model == name]
        (checkpoints / name / "metrics.json").write_text(json.dumps(mine, indent=2, default=str) + "\n")
        write_card(checkpoints, name, table, [r for r in mine if "detail" in r])
    if readme is not None:
        write_readme(readme, table)


def write_readme(readme: Path, table: str) -> None:
    """``table`` into ``readme``'s marked block, the rest of it untouched."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    readme.write_text(text[:start] + "\n\n" + table + "\n\n" + text[end:])


def _row_json(row: Row | LayerRow) -> dict:
    out = {k: (v.__dict__ if isinstance(v, Estimate) else v) for k, v in row.__dict__.items()}
    if isinstance(row, Row):
        out["met"] = row.met
    return out
