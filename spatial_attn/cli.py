"""spatial-attn: click a pixel of an image model's input and see where it attends, in every layer.

The command line: one function per subcommand, so more can be added. Training, evaluation and
serving import torch, diffusers and gradio only when their subcommand runs, so ``--help`` stays
instant; help is plain text, and every option says its default.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.faces import LAYOUTS
from .faces.protocol import SEALED_RECORD

MODELS = ("ddpm", "sagan", "vit", "vit-inpaint", "judge")
RECIPES = ("vit", "judge", "sagan", "vit-inpaint")  # the models whose trainer reads ``--set`` switches
DEFAULT_MODEL = "ddpm-faces"


class PlainHelp(argparse.HelpFormatter):
    """Every option's help ends with its default (a flag: off by default), unless it says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        if action.default is False:
            return f"{text} (off by default)"
        return f"{text} (default: %(default)s)"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen subcommand."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spatial-attn", description=__doc__.splitlines()[0], formatter_class=PlainHelp
    )
    sub = parser.add_subparsers(title="subcommands")
    add_train(sub)
    add_eval(sub)
    add_faces(sub)
    add_serve(sub)
    add_export(sub)
    return parser


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a bundled model on procedural faces made on the fly", formatter_class=PlainHelp
    )
    p.add_argument("model", choices=MODELS, help="which model: ddpm, sagan, vit, vit-inpaint or judge")
    p.add_argument("--steps", type=int, help="optimisation steps (default: the model's)")
    p.add_argument("--batch-size", type=int, help="faces per step (default: the model's)")
    p.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (SAGAN: the generator's; D gets 4x) (default: the model's)",
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation, data and noise all follow it")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (recorded in the card)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="standard",
        help="face layout: wide varies the head's position and size and the eye spacing so that position "
        "cannot predict the other eye (recorded in the card)",
    )
    p.add_argument("--out", type=Path, default=Path("checkpoints"), help="exports to OUT/<name>/")
    p.add_argument("--run-dir", type=Path, default=Path("runs"), help="resume checkpoints go here")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/<name>/resume.safetensors")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0, help="how often to save for --resume")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"{', '.join(RECIPES)}: a field of the recipe (faces/train/vit.py JudgeRecipe, "
        "faces/train/sagan.py GANRecipe, faces/train/vit_inpaint.py InpaintRecipe), e.g. head_shift_px=4",
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one bundled model; the command line itself goes into the model card (reproducibility)."""
    from .faces.train import TRAINERS
    from .faces.train.common import Settings, run

    trainer_cls, defaults = TRAINERS[args.model]
    if args.set and args.model not in RECIPES:
        named = [f"`{'spatial-attn ' * (i == 0)}train {m}`" for i, m in enumerate(RECIPES)]
        raise SystemExit(f"--set sets a recipe: only {', '.join(named[:-1])} and {named[-1]} take it")
    if any("=" not in item for item in args.set):
        raise SystemExit("--set takes FIELD=VALUE, e.g. --set head_shift_px=4")
    settings = Settings(
        steps=defaults["steps"] if args.steps is None else args.steps,
        batch_size=defaults["batch_size"] if args.batch_size is None else args.batch_size,
        lr=defaults["lr"] if args.lr is None else args.lr,
        seed=args.seed,
        threads=args.threads,
        out=args.out,
        resume=args.resume,
        checkpoint_minutes=args.checkpoint_minutes,
        command=shlex.join(["spatial-attn", *sys.argv[1:]]),
        layout=args.layout,
        extra=dict(item.split("=", 1) for item in args.set),
    )
    trainer = trainer_cls(settings)
    record = run(trainer, settings, args.run_dir / trainer.name)
    print(
        f"{trainer.name}: {record['steps']} steps in {record['train_seconds'] / 60:.1f} min "
        f"on {record['threads']} thread(s) -> {args.out / trainer.name}"
    )
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure the bundled models on fresh faces and print the table",
        formatter_class=PlainHelp,
    )
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="the models' folder")
    p.add_argument(
        "--split",
        choices=("dev", "spent", "sealed-3"),
        default="dev",
        help="development seeds: dev, spent (the held-out seeds of issues 11 to 13) or sealed-3 (round 3's "
        "sealed seeds, run once, then consulted in round 4)",
    )
    p.add_argument(
        "--sealed",
        action="store_true",
        help="run the sealed seeds of spatial_attn/faces/protocol.py: once, at the protocol's sizes, "
        f"leaving CHECKPOINTS/{SEALED_RECORD}",
    )
    p.add_argument("--force", action="store_true", help="with --sealed: run them again (the record says so)")
    p.add_argument(
        "--samples",
        type=int,
        default=64,
        help="generated samples judged per model and seed (--sealed: the protocol's)",
    )
    p.add_argument(
        "--faces",
        type=int,
        default=32,
        help="real faces per seed for the attention figures (--sealed: the protocol's)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="only these models' rows, e.g. vit-inpaint; --write-cards then writes only their cards "
        "(default: all; --sealed: all)",
    )
    p.add_argument(
        "--write-cards", action="store_true", help="put the tables into each model card and README.md"
    )
    p.add_argument(
        "--grids", type=Path, help="also save DDPM / SAGAN sample grids here, e.g. assets (default: none)"
    )
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .faces.evaluate import evaluate_all, format_table, sealed_run, write_cards, write_grids

    if args.sealed and args.models:
        raise SystemExit("--sealed runs every model: leave out --models")
    if args.sealed:
        results = sealed_run(args.checkpoints, force=args.force, threads=args.threads)
    else:
        results = evaluate_all(
            args.checkpoints,
            split=args.split,
            samples=args.samples,
            faces=args.faces,
            threads=args.threads,
            **({"models": tuple(args.models)} if args.models else {}),
        )
    table = format_table(results)
    print(table)
    if args.write_cards:
        # a table of some models only goes into their cards, not over README.md's table of all
        write_cards(args.checkpoints, table, results, readme=None if args.models else Path("README.md"))
    if args.grids:
        for path in write_grids(args.grids, results):
            print(path)
    return 0


def add_faces(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "faces", help="write the example faces of the app's gallery as PNG", formatter_class=PlainHelp
    )
    p.add_argument("--out", type=Path, default=Path("assets/faces"), help="folder to write them to")
    p.add_argument("--seed", type=int, default=0, help="the faces follow it")
    p.set_defaults(func=cmd_faces)


def cmd_faces(args: argparse.Namespace) -> int:
    from .data.gallery import write_examples

    for path in write_examples(args.out, seed=args.seed):
        print(path)
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="open the web app (the same options as python app.py)", formatter_class=PlainHelp
    )
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app.blocks import launch  # imports gradio: only when serving

    placement = _placement(args)
    models = open_models(args.model or [[DEFAULT_MODEL, None]], args.allow_download, placement)
    launch(models, host=args.host, port=args.port, share=args.share, placement=placement)
    return 0


def _placement(args: argparse.Namespace) -> Any:
    """``--device``/``--dtype`` checked against this machine; a bad one stops the command with its
    one-line message (exit status 2) before any model is read."""
    from .models.placement import place

    try:
        return place(args.device, args.dtype)
    except ValueError as error:
        print(f"spatial-attn: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``: where every model runs (serve, app.py, export)."""
    parser.add_argument(
        "--device", default="cpu", help="where models run: cpu, cuda, cuda:N, or auto (CUDA when present)"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="the precision models run in",
    )


def open_models(specs: list[list], allow_download: bool = False, placement: Any = None) -> list:
    """``--model`` values -> what :func:`spatial_attn.launch` serves: a bundled model's name as it is,
    anything else opened from disk (a folder, ``timm:NAME``, ``package.module:factory``, a Hub id).

    A spec that cannot be opened stops the command with its message (exit status 2), before any
    server starts.
    """
    from .app.state import UNTRAINED
    from .models import available_models
    from .models.sources import open_model

    bundled = set(available_models()) | {name + UNTRAINED for name in available_models()}
    models = []
    for spec, weights in specs:
        if spec in bundled:
            models.append(spec)
            continue
        try:
            dtype = None if placement is None else placement.dtype
            opened = open_model(spec, weights, allow_download=allow_download, dtype=dtype)
        except ValueError as error:
            print(f"spatial-attn: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        if opened.name in bundled:  # checkpoints/ddpm-faces opened as a folder: keep both apart
            opened.name = spec
        models.append(opened if placement is None else opened.place(placement))
    return models


class _ModelAction(argparse.Action):
    """``--model SPEC``, repeatable: each one a ``[spec, weights]`` pair that ``--weights`` fills."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value, option=None):
        models = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, [*models, [value, None]])


class _WeightsAction(argparse.Action):
    """``--weights FILE`` belongs to the ``--model`` just before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value, option=None):
        models = getattr(namespace, "model", None)
        if not models:
            parser.error("--weights must follow the --model it belongs to")
        models[-1][1] = value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``python app.py`` and ``spatial-attn serve``."""
    parser.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: $GRADIO_SERVER_NAME if set, else 127.0.0.1); "
        "0.0.0.0 exposes the app on your network",
    )
    parser.add_argument("--port", type=int, default=7860, help="port")
    parser.add_argument(
        "--model",
        action=_ModelAction,
        metavar="SPEC",
        help=f"a model to serve, repeatable, listed first in the order given (default {DEFAULT_MODEL}; "
        "the bundled models stay in the list): a bundled name, a diffusers or transformers folder, "
        "timm:NAME, package.module:factory, or a Hub id from the local cache",
    )
    parser.add_argument(
        "--weights",
        action=_WeightsAction,
        metavar="FILE",
        help="a .safetensors file for the timm: or factory --model just before it (default: none, "
        "random weights)",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let a Hub id missing from the local cache be downloaded (configs and safetensors only)",
    )
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    add_placement_arguments(parser)


def add_export(sub: argparse._SubParsersAction) -> None:
    from .analysis.render import ASCII_SCALES, COLORMAPS, SCALES  # numpy and Pillow: --help stays instant

    p = sub.add_parser(
        "export",
        help="one click's panels as a figure (PNG, SVG), its rows (.npy) and a page that follows the "
        "mouse (HTML), in one zip",
        formatter_class=PlainHelp,
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="SPEC",
        help="what serve --model accepts: a bundled name, a diffusers or transformers folder, timm:NAME, "
        "package.module:factory, or a Hub id from the local cache",
    )
    p.add_argument(
        "--weights", metavar="FILE", help="a .safetensors file for a timm: or factory --model (default: none)"
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let a Hub id missing from the local cache be downloaded (configs and safetensors only)",
    )
    p.add_argument("--untrained", action="store_true", help="a bundled model's untrained twin instead")
    p.add_argument(
        "--image", type=Path, help="the image to run the model on (default: the app's first example face)"
    )
    p.add_argument("--generate", action="store_true", help="no image: the model generates one from --seed")
    p.add_argument("--timestep", type=int, default=250, help="noise level t (DDPM)")
    p.add_argument("--seed", type=int, default=0, help="noise (DDPM) or z (SAGAN generator)")
    p.add_argument(
        "--x", type=float, help="the clicked pixel's column in the image (default: the app's first click)"
    )
    p.add_argument(
        "--y", type=float, help="the clicked pixel's row in the image (default: the app's first click)"
    )
    p.add_argument("--head", default="mean", help="mean, max or 'head k'")
    p.add_argument(
        "--mode", choices=("row", "column"), default="row", help="where it looks / who looks at it"
    )
    p.add_argument("--heads", action="store_true", help="every head and their mean (layers x heads)")
    p.add_argument(
        "--scale",
        choices=[*ASCII_SCALES, *SCALES],
        default="uniform",
        help="colour scale (uniform and per-map are × uniform and per map)",
    )
    p.add_argument("--cmap", choices=COLORMAPS, default="viridis", help="colormap")
    p.add_argument("--opacity", type=float, default=0.65, help="heatmap opacity")
    p.add_argument("--smooth", action="store_true", help="bilinear upsampling instead of crisp blocks")
    p.add_argument("--over", choices=("image", "input"), default="image", help="draw over the image or x_t")
    p.add_argument("--formats", default="png,svg,npy,html", help="comma-separated: png, svg, npy, html")
    p.add_argument("--out", type=Path, default=Path("attention.zip"), help="the zip to write")
    add_placement_arguments(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Run the model once, click once, and write what the app's download button gives. A request the
    model cannot answer (a pixel outside the image, a head it lacks) is one line and exit status 2."""
    try:
        out, point, model, layers = _export(args)
    except ValueError as error:
        print(f"spatial-attn export: {error}", file=sys.stderr)
        return 2
    print(f"{out}: pixel (y, x) = {point} of {model}'s input, {layers} layers")
    return 0


def _export(args: argparse.Namespace) -> tuple[Path, tuple[int, int], str, int]:
    from .analysis.explore import Exploration, View, head_index
    from .analysis.export import export_zip
    from .analysis.render import scale_named
    from .app.images import load_image
    from .app.state import UNTRAINED
    from .models import load_model
    from .resources import locate

    head_index(args.head)  # its form, before the model runs
    placement = _placement(args)
    (opened,) = open_models([[args.model, args.weights]], args.allow_download, placement)
    if isinstance(opened, str):  # a bundled name, or its twin's
        untrained = args.untrained or opened.endswith(UNTRAINED)
        model = load_model(
            opened.removesuffix(UNTRAINED),
            pretrained=not untrained,
            device=placement.device,
            dtype=placement.dtype,
        )
    else:
        model = opened
    path = args.image or locate("assets") / "faces" / "valid-0.png"
    source = None if args.generate else load_image(path)[0]
    timestep = args.timestep if model.num_timesteps else None
    exploration = Exploration(model, source, timestep=timestep, seed=args.seed)
    if args.x is None or args.y is None:
        point = exploration.first_point()
    else:
        size = (source.height, source.width) if source is not None else exploration.image_hw
        point = model.input_pixel((args.y, args.x), size)
    view = View(
        head=args.head,
        mode=args.mode,
        cmap=args.cmap,
        scale=scale_named(args.scale),
        smooth=args.smooth,
        opacity=args.opacity,
        heads_grid=args.heads,
        over=args.over,
    )
    args.out.write_bytes(export_zip(exploration, point, view, tuple(args.formats.split(","))))
    return args.out, point, model.name, len(exploration.layers)


if __name__ == "__main__":
    sys.exit(main())
