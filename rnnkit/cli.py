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
import sys

# Subcommand -> module providing `add_*parser(subparsers)` hooks. Only the module of the
# command being run is imported (so `rnnkit serve` never loads keras or TensorFlow);
# `rnnkit --help` imports them all.
COMMAND_MODULES = {
    "train": "rnnkit.training.cli",
    "diagnose": "rnnkit.training.cli",
    "bench": "rnnkit.experiments.cli",
    "export": "export.cli",
    "serve": "serving.cli",
}
# Modules of the other boxes the demo runs (`rnnkit demo` steps 3 and 4). With COMMAND_MODULES,
# the only place rnnkit names export or serving modules (tests/test_import_direction.py checks).
DEMO_MODULES = {
    "export": "export",
    "serve": "serving.demo",
}


def _demo(args: argparse.Namespace) -> int:
    from rnnkit.demo import run_demo

    run_demo(seed=args.seed, out=args.out, epochs=args.epochs, serve=args.serve)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's module is imported."""
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
    wanted = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else list(COMMAND_MODULES.values())
    for module_name in dict.fromkeys(wanted):
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return int(args.func(args))
