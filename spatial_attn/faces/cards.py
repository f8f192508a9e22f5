"""Model cards (``checkpoints/<name>/README.md``), written from what the run and the evaluation recorded.

A card is generated, never edited by hand, so its numbers cannot drift from the weights next to it:
the architecture line and parameter count come from the loaded model, the command, time and threads
from ``training.json`` (written by the training run), the metrics from ``spatial-attn eval``.
Free-form remarks go in ``notes.md`` beside it, which the card includes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models.bundle import load_model
from .train.vit_inpaint import InpaintRecipe

ARCHITECTURE = {
    "judge-faces": (
        "Convolutional classifier (`spatial_attn/models/judge.py`), the judge of the generators' "
        "samples: stages of widths {widths_text} ({convs} 3 x 3 conv-BatchNorm-GELU layers each, every "
        "stage after the first opening with stride 2: 32 -> 16 -> 8 -> 4 px, receptive field "
        "{receptive_field} px), global average and max pooling side by side, a linear head over the "
        "{num_classes} labels {labels}. No attention (the app does not show it); no position "
        "embedding, so where the head sits cannot be learnt as such."
    ),
    "vit-faces": (
        "Vision Transformer classifier (`spatial_attn/models/vit.py`): 4 x 4 patches of the 32 x 32 "
        "image -> 8 x 8 tokens + CLS (token 0), learned positions, {depth} pre-norm "
        "`nn.TransformerEncoderLayer` blocks (width {dim}, {heads} heads, MLP x{mlp_ratio}, GELU), linear "
        "head on CLS over the {num_classes} kinds {labels}. Attention layers: `blocks.<i>.self_attn` "
        "(`nn.MultiheadAttention`)."
    ),
    "ddpm-faces": (
        "DDPM (Ho et al. 2020 layout) with a diffusers `UNet2DModel`: widths {block_out_channels} at "
        "32 / 16 / 8 px, {layers_per_block} ResNet block(s) per level, self-attention at 16 x 16 and "
        "8 x 8 ({attention_head_dim} channels per head) including the 8 x 8 mid block. Noise "
        "prediction, `DDPMScheduler` with 1,000 cosine-schedule steps for training; DDIM "
        "(50 steps, trailing spacing, eta 1) for sampling. Attention layers: "
        "`down_blocks.1.attentions.0` (16 x 16), "
        "`down_blocks.2.attentions.0`, `mid_block.attentions.0`, `up_blocks.0.attentions.*` (8 x 8), "
        "`up_blocks.1.attentions.*` (16 x 16)."
    ),
    "sagan-faces": (
        "SAGAN (Zhang et al. 2019) at 32 x 32 (`spatial_attn/models/sagan.py`): residual generator "
        "z({z_dim}) -> 4 -> 8 -> 16 -> 32 px (widths {g4} / {g4} / {g2} / {g1}) with `SelfAttn` at "
        "16 x 16; residual discriminator 32 -> 16 -> 8 -> 4 px (widths {d1} / {d2} / {d4}) with "
        "`SelfAttn` at 16 x 16{mbstd}; spectral norm everywhere, hinge loss, BatchNorm in the generator. "
        "`SelfAttn` is SAGAN's `Self_Attn`: 1x1 `query_conv` / `key_conv` (C/8 channels), "
        "`value_conv`, `gamma` (initialised to 0). Attention layers: `generator.attn`, "
        "`discriminator.attn`.{issue23} The generator weights are an EMA (decay {ema_decay}) with "
        "re-measured BatchNorm statistics."
    ),
    "vit-inpaint": (
        "Masked-patch ViT in-painter, SimMIM-style (`spatial_attn/models/vit_inpaint.py`): 4 x 4 "
        "patches of the 32 x 32 image -> 8 x 8 tokens, no CLS (token y*8 + x is patch (y, x)); the "
        "masked patches' embeddings replaced by a learned mask token; learned positions; {depth} of "
        "the judge's pre-norm `nn.TransformerEncoderLayer` blocks (width {dim}, {heads} heads, MLP "
        "x{mlp_ratio}, GELU); a linear decoder from each token to its patch's pixels. Attention "
        "layers: `blocks.<i>.self_attn` (`nn.MultiheadAttention`). Its eye queries are measured with "
        "the query eye masked, the input it was trained on."
    ),
}

LOADING = {
    "judge-faces": '`sa.load_model("judge-faces")` (safetensors + config.json; no pickle).',
    "vit-faces": '`sa.load_model("vit-faces")` (safetensors + config.json; no pickle).',
    "ddpm-faces": (
        '`sa.load_model("ddpm-faces")`, or with plain diffusers '
        '`DDPMPipeline.from_pretrained("checkpoints/ddpm-faces")` (safetensors; no pickle).'
    ),
    "sagan-faces": '`sa.load_model("sagan-faces")` (safetensors + config.json; no pickle).',
    "vit-inpaint": (
        '`sa.load_model("vit-inpaint")` (safetensors + config.json; no pickle); '
        "`model.module(x, mask)` paints the patches where `mask` (B, 64) is True."
    ),
}

DATA = {
    "judge-faces": (
        "the vit-faces data (valid faces 3 times as often as each broken kind, eye_shape twice, noise "
        "on half of each batch, blur on a quarter) with the judge recipe on: every head moved by up "
        "to {head_shift_px} px in y and x and scaled by {head_scale_min}-{head_scale_max}, "
        "{mouthless_pct} of valid faces drawn without a mouth and labelled no_mouth, {hard_pair_pct} of "
        "eye_shape faces drawn as the protocol's soft pairs (ring/vbar, disc/plus, plus/ring) with "
        "their loss weighted {hard_pair_weight}x"
    ),
    "vit-faces": (
        "the kinds its `labels` list: valid faces 3 times as often as each broken kind (eye_color, "
        "eye_shape, missing_eye, no_face, and the generators' mistakes eye_size, eye_offset, "
        "extra_eye, eye_tint; a 5-label judge saw the first five in equal measure) and eye_shape "
        "twice as often, the mistake generators make most; half of each "
        "batch with Gaussian pixel noise up to 24/255, a quarter blurred (sigma up to 1.4 px)"
    ),
    "ddpm-faces": "valid faces only",
    "vit-inpaint": (
        "valid faces only, one eye of each (left or right at random) masked: every patch its pixels "
        "can reach (1.22 radii + 0.5 px); the kept eye of {moved_share} of the faces drawn moved, up "
        "to {shift_y:g} px in y and {shift_x:g} px in x (not closer than 9.5 px to the masked eye in "
        "x), so that it must be found, not placed by the head's symmetry{decoys}; loss L1 on the "
        "masked patches' pixels, those within the eye's reach weighted 5x{visible}{attention}{init}"
    ),
    "sagan-faces": (
        "valid faces as real; faces with mismatched eyes ({negative_kinds}) shown to the discriminator "
        "as fake, half a batch per step (negative data augmentation){seeking}"
    ),
}


def write_card(root: Path, name: str, table: str, results: list[dict]) -> Path:
    """Write ``root/name/README.md`` with the full eval ``table`` and this model's own details."""
    model_dir = root / name
    run = json.loads((model_dir / "training.json").read_text())
    bm = load_model(name, root=root)
    params = sum(p.numel() for p in bm.module.parameters())
    size = sum(f.stat().st_size for f in model_dir.rglob("*.safetensors")) / 2**20
    wide = ', layout="wide"' if run.get("layout", "standard") == "wide" else ""  # older runs: standard
    fields = _card_fields(name, bm.config, run)
    lines = [
        f"# {name}",
        "",
        ARCHITECTURE[name].format(**fields),
        "",
        f"- **Parameters:** {params:,} ({size:.1f} MiB of safetensors)",
        f"- **Data:** procedural 32 x 32 faces (`spatial_attn/data/faces.py`), "
        f"{DATA[name].format(**fields)}, drawn on the "
        f"fly: step s uses `make_faces({run['batch_size']}, 10**12 + seed * 10**7 + s{wide})`, so no "
        "training face is ever an evaluation face."
        + (
            " Wide layout: head centre +-5 px, head scale 0.75 to 1.1, eyes 8 to 18 px apart." if wide else ""
        ),
        f"- **Command:** `{run['command']}`",
        f"- **Training:** {run['steps']:,} steps x {run['batch_size']} images ({run['images_seen']:,} "
        f"images), peak lr {run['lr']:g}, {run['train_seconds'] / 60:.1f} min wall-clock on "
        f"{run['threads']} CPU thread(s) ({run['machine']}; torch {run['torch']}, CPU shared with "
        "other work)" + _final_logs(run["final_logs"]) + ".",
        *_started_from(run),
        f"- **Deterministic settings:** seed {run['seed']} for initialisation, data and noise "
        "(per-step generators, no global random state); same torch build and thread count -> "
        "same weights.",
        f"- **Loading:** {LOADING[name]}",
        "",
        "## Metrics (`spatial-attn eval --write-cards`, seeds never used in training)",
        "",
        table,
        "",
    ]
    lines += _details(results)
    notes = model_dir / "notes.md"
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _final_logs(logs: dict) -> str:
    """The suffix ``; final logs loss 0.03, ...``, or nothing (a ``--resume`` export ran no step)."""
    return "; final logs " + ", ".join(f"{k} {v}" for k, v in logs.items()) if logs else ""


def _card_fields(name: str, config: dict, run: dict) -> dict:
    """What the ARCHITECTURE and DATA texts are formatted with: the config and the figures and
    phrases derived from it (the judge's recipe from its run's record, ``training.json``)."""
    if name == "sagan-faces":
        g, d = config["g_ch"], config["d_ch"]
        seeking = config.get("mode_seeking")  # models trained before it have no such key
        return {
            **config,
            "g1": g,
            "g2": 2 * g,
            "g4": 4 * g,
            "d1": d,
            "d2": 2 * d,
            "d4": 4 * d,
            "negative_kinds": ", ".join(config["negatives"]),
            "mbstd": (
                f" and a minibatch standard deviation over groups of {config['minibatch_std']} at 4 x 4"
                if config.get("minibatch_std")
                else ""
            ),
            "seeking": f"; a mode-seeking term (MSGAN, weight {seeking:g}) in G's loss" if seeking else "",
            "issue23": _sagan_recipe(config),
        }
    if name == "judge-faces":
        from ..models.judge import JudgeConfig
        from .train.judge import RECIPE

        cfg = JudgeConfig(**{k: config[k] for k in JudgeConfig.__dataclass_fields__})
        recipe = {k: float(run.get(k, default)) for k, default in RECIPE.items()}  # older records: defaults
        return {
            **config,
            **{k: f"{v:g}" for k, v in recipe.items()},
            "widths_text": " / ".join(map(str, cfg.widths)),
            "receptive_field": cfg.receptive_field,
            "mouthless_pct": f"{recipe['mouthless_share']:.0%}",
            "hard_pair_pct": f"{recipe['hard_pair_share']:.0%}",
        }
    if name == "vit-inpaint":
        return {**config, **_inpaint_recipe(run)}
    return {**config, "block_out_channels": " / ".join(map(str, config.get("block_out_channels", ())))}


def _started_from(run: dict) -> list[str]:
    """The card's line for a fine-tune (``init_from`` with a run record): the run it started from,
    and the chain's time in all, which is what a training budget counts."""
    if "started_from" not in run:
        return []
    before = run["started_from"]
    return [
        f"- **Started from:** the model made by `{before['command']}` ({before['train_seconds'] / 60:.1f} "
        f"min); the chain took {run['chain_seconds'] / 60:.1f} min of training in all."
    ]


def _inpaint_recipe(run: dict) -> dict:
    """The in-painter's recipe (``faces/train/vit_inpaint.py`` ``InpaintRecipe``; its ``--set``
    values are in the run record, as strings) as the DATA text's fields."""
    r = InpaintRecipe.from_settings({k: run[k] for k in InpaintRecipe.__dataclass_fields__ if k in run})
    decoys = (
        f"; in {r.decoy_share:.0%} of the faces a decoy is asked for (a disc of the eye's size in the "
        "skin's hue, as bright or dark against it as the eye: the evaluation's decoy) and drawn "
        "elsewhere on the head, clear of the eyes and the mask, where one fits"
        + (
            f", {r.decoy_near:.0%} of them beside the kept eye (as close as a pixel of skin between "
            "them allows, in any direction)"
            if r.decoy_near > 0
            else ""
        )
        if r.decoy_share > 0
        else ""
    )
    visible = (
        " (and the visible patches' pixels, painted back from their own tokens, weighted "
        f"{r.visible_weight:g}x)"
        if r.visible_weight > 0
        else ""
    )
    init = f"; started from the trained in-painter `{r.init_from}` (a fine-tune)" if r.init_from else ""
    attention = (
        f"; plus, weighted {r.attn_weight:g}, the cross-entropy of `blocks.{r.attn_block}`'s row from "
        "the masked eye (heads averaged) onto the kept eye's cells: a supervision of where the masked "
        "eye looks, so that layer's *follows* row measures that it took hold on new faces; its decoy "
        "and cheek rows (never trained on) say whether it looks for the eye"
        if r.attn_weight > 0
        else ""
    )
    return {
        "attention": attention,
        "moved_share": f"{r.shift_share:.0%}",
        "shift_y": r.shift_y_px,
        "shift_x": r.shift_x_px,
        "decoys": decoys,
        "visible": visible,
        "init": init,
    }


def _sagan_recipe(config: dict) -> str:
    """What the issue-23 recipe (``faces/train/sagan.py`` ``GANRecipe``) added, in the card's words."""
    parts = []
    if config.get("attn_coords"):
        n = 4 * config["attn_coords"]
        parts.append(
            f" The generator's `query_conv` / `key_conv` also read {n} sin-cos position channels "
            f"(frequencies 1 to {config['attn_coords']} of the cell's row and column), so its queries and "
            "keys know where their cell is."
        )
    if config.get("conditional"):
        parts.append(
            " Conditional (AC-GAN): the generator reads an eye colour and an eye shape from its latent "
            "(`z[0]` and `z[1]` through the normal CDF, each class as often as the data draws it: a "
            "seed's sample draws its condition from that seed) and adds their embedding at 4 x 4; the "
            "discriminator has an auxiliary head naming a face's eye colour and shape."
        )
    recipe = config.get("recipe", {})
    if recipe.get("eye_attn_weight") or recipe.get("collapse_weight"):
        parts.append(
            " Trained with losses on the generator's attention: the cross-entropy of each located eye "
            f"query's row onto the other eye (weight {recipe.get('eye_attn_weight', 0):g}) and a penalty "
            f"on a row's mass on one grid row beyond {recipe.get('collapse_floor', 0.5):g} (weight "
            f"{recipe.get('collapse_weight', 0):g})."
        )
    if recipe.get("d_eye_attn_weight"):
        parts.append(
            " The discriminator's attention was trained with the same cross-entropy (weight "
            f"{recipe['d_eye_attn_weight']:g}) on extra faces whose one eye is moved up or down by up to "
            f"{recipe.get('d_shift_px', 6.0):g} px (eyes from the faces' metadata): its 'follows a moved "
            "eye' row measures that this supervision took hold."
        )
    if recipe.get("shape_weight"):
        only = recipe.get("shape_only") or "every shape"
        found = "located" if recipe.get("shape_find", "reader") == "reader" else "asked-colour"
        how = (
            "a hinge on the eval reader's own colour test, pixel by pixel"
            if recipe.get("shape_loss", "template") == "hinge"
            else "a soft colour mask against it"
        )
        parts.append(
            f" The generator's {found} eyes were pushed towards the template of the shape asked for "
            f"({only}; weight {recipe['shape_weight']:g}; {how}), the templates the eval's coverage "
            "matches."
        )
    return "".join(parts)


DETAILS = {
    "per_kind": "Accuracy per kind",
    "calls": "How the judge (judge-faces) called the samples",
    "colours": "Eye colours: share in samples / share in drawn faces (located eyes)",
    "shapes": "Eye shapes: share in samples / share in drawn faces (located eyes)",
}


def _shares(value: float | list[float]) -> str:
    """``12.5%``, or ``12.5% / 16.7%`` for a (samples, data) pair."""
    return " / ".join(f"{100 * v:.1f}%" for v in (value if isinstance(value, list | tuple) else [value]))


def _details(results: list[dict]) -> list[str]:
    """Per-layer lifts and other breakdowns of this model's results."""
    lines: list[str] = []
    for r in results:
        detail = r["detail"]
        if "trained" in detail:
            lines += [f"### Per layer: {r['metric']}", "", "| layer | trained | random twin |"]
            lines.append("|---|---|---|")
            twin = detail["twin"]
            lines += [f"| `{k}` | {v:.2f} | {twin[k]:.2f} |" for k, v in detail["trained"].items()]
            lines.append("")
        for key, title in DETAILS.items():
            if key in detail:
                shares = " | ".join(f"{k} {_shares(v)}" for k, v in detail[key].items())
                lines += [f"### {title}", "", shares, ""]
    return lines
