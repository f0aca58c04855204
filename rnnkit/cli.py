"""The `rnnkit` command line (one entry point, one subcommand per job).

Subcommands of the other boxes (``export``, ``serve``) live in their own packages and are
found by module name only when the command line is built, so ``import rnnkit`` never loads
them and the dependency rule (rnnkit imports no export/serving code) holds for the library.
A box that is not installed simply contributes no subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import os

# Modules that provide `add_parser(subparsers)` / `add_*_parser(subparsers)` hooks.
COMMAND_MODULES = ("rnnkit.training.cli", "export.cli", "serving.cli")


def _demo(args: argparse.Namespace) -> int:
    from rnnkit.demo import run_demo

    run_demo(seed=args.seed, out=args.out, epochs=args.epochs, serve=args.serve)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent networks on Keras 3: build, train, export, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job on a built-in default (see README)")
    demo.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    demo.add_argument("--out", default="demo_out", help="output directory, replaced on each run (default demo_out)")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    demo.add_argument("--no-serve", dest="serve", action="store_false", help="stop after export")
    demo.set_defaults(func=_demo)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                continue  # that box is not part of this installation
            raise
        for hook in sorted(n for n in dir(module) if n.startswith("add_") and n.endswith("parser")):
            getattr(module, hook)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    return int(args.func(args))
