"""``spatial-attn``: the command line (one function per subcommand, so more can be added).

Training and evaluation import torch and diffusers only when their subcommand runs, so
``spatial-attn --help`` stays instant.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

MODELS = ("ddpm", "sagan", "vit")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen subcommand."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spatial-attn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(title="subcommands")
    add_train(sub)
    add_eval(sub)
    add_faces(sub)
    add_serve(sub)
    return parser


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a bundled model on procedural faces made on the fly")
    p.add_argument("model", choices=MODELS)
    p.add_argument("--steps", type=int, help="optimisation steps (default: the model's)")
    p.add_argument("--batch-size", type=int, help="faces per step (default: the model's)")
    p.add_argument("--lr", type=float, help="peak learning rate (SAGAN: the generator's; D gets 4x)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data and noise all follow it")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (recorded in the card)")
    p.add_argument("--out", type=Path, default=Path("checkpoints"), help="exports to OUT/<name>/")
    p.add_argument("--run-dir", type=Path, default=Path("runs"), help="resume checkpoints go here")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/<name>/resume.safetensors")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0, help="how often to save for --resume")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one bundled model; the command line itself goes into the model card (reproducibility)."""
    from .train import TRAINERS
    from .train.common import Settings, run

    trainer_cls, defaults = TRAINERS[args.model]
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
    )
    trainer = trainer_cls(settings)
    record = run(trainer, settings, args.run_dir / trainer.name)
    print(
        f"{trainer.name}: {record['steps']} steps in {record['train_seconds'] / 60:.1f} min "
        f"on {record['threads']} thread(s) -> {args.out / trainer.name}"
    )
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure the bundled models on fresh faces and print the table")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--samples", type=int, default=256, help="generated samples judged per model")
    p.add_argument("--faces", type=int, default=200, help="real faces for the eye-to-eye lift")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write-cards", action="store_true", help="put the table into each model card")
    p.add_argument("--grids", type=Path, help="also save DDPM / SAGAN sample grids here (e.g. assets)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_all, format_table, write_cards, write_grids

    results = evaluate_all(args.checkpoints, samples=args.samples, faces=args.faces, threads=args.threads)
    table = format_table(results)
    print(table)
    if args.write_cards:
        write_cards(args.checkpoints, table, results)
    if args.grids:
        for path in write_grids(args.grids, results):
            print(path)
    return 0


def add_faces(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faces", help="write example faces as PNG and measure the generator's speed")
    p.add_argument("--out", type=Path, default=Path("assets/faces"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_faces)


def cmd_faces(args: argparse.Namespace) -> int:
    from .data.gallery import measure_throughput, write_examples

    for path in write_examples(args.out, seed=args.seed):
        print(path)
    print(f"make_faces: {measure_throughput():,.0f} images/s (batches of 5,000, all kinds, best of 5)")
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="open the web app (the same flags as `python app.py`)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import launch  # imports gradio: only when serving

    launch(args.model, host=args.host, port=args.port, share=args.share)
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags shared by ``python app.py`` and ``spatial-attn serve``."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the app on your network)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--model", default="ddpm-faces", help="bundled model to open (default ddpm-faces)")
    parser.add_argument(
        "--share", action="store_true", help="ask Gradio for a public share link (off by default)"
    )


if __name__ == "__main__":
    sys.exit(main())
