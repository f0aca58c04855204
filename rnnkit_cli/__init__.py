"""The `rnnkit` command line (one entry point, one subcommand per job): the ``rnnkit`` console script.

This launcher lives outside the ``rnnkit`` package on purpose. ``import rnnkit`` registers the
rnnkit layers with Keras (so ``keras.saving.load_model`` finds them), which loads Keras and
TensorFlow; a console script inside the package would pay that for every command, ``rnnkit
serve`` included. Here nothing is imported until a command is chosen: subcommands of every box
(``train``, ``export``, ``serve``...) are found by module name in the tables below when the
command line is built, and only the module of the command being run is imported, so ``rnnkit
serve`` never loads keras or TensorFlow, and the dependency rule (rnnkit imports no
export/serving code) holds for the library. A box that is not installed contributes no subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand -> module providing `add_*parser(subparsers)` hooks. Only the module of the
# command being run is imported (so `rnnkit serve` never loads keras or TensorFlow);
# `rnnkit --help` imports them all.
COMMAND_MODULES = {
    "train": "rnnkit.training.cli",
    "diagnose": "rnnkit.training.cli",
    "bench": "rnnkit.experiments.cli",
    "export": "rnnkit_export.cli",
    "serve": "rnnkit_serving.server.cli",
}
# The extra that installs what each command needs (the core install is numpy only).
EXTRAS = {"train": "keras", "diagnose": "keras", "bench": "keras", "export": "export", "serve": "serve"}


def _demo(args: argparse.Namespace) -> int:
    from rnnkit_cli.demo import run_demo

    run_demo(seed=args.seed, out=args.out, epochs=args.epochs, serve=args.serve)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent networks on Keras 3: build, train, export, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job on a built-in default (see docs/getting-started.md)")
    demo.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    demo.add_argument("--out", default="demo_out", help="output directory, replaced on each run (default demo_out)")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    demo.add_argument("--no-serve", dest="serve", action="store_false", help="stop after export")
    demo.set_defaults(func=_demo)
    wanted = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else list(COMMAND_MODULES.values())
    for module_name in dict.fromkeys(wanted):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if command in COMMAND_MODULES:  # the command asked for cannot run here: say what is missing
                hint = "" if "pip install" in str(error) else f" (pip install 'rnnkit[{EXTRAS.get(command, 'all')}]')"
                raise SystemExit(f"rnnkit {command}: {error}{hint}") from None
            continue  # listing commands: that box, or a library it needs, is not part of this installation
        for hook in sorted(n for n in dir(module) if n.startswith("add_") and n.endswith("parser")):
            getattr(module, hook)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return int(args.func(args))
