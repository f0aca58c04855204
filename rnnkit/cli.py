"""The `rnnkit` command line (one entry point, one subcommand per job)."""

from __future__ import annotations

import argparse
import os


def _demo(args: argparse.Namespace) -> int:
    from rnnkit.demo import run_demo

    run_demo(seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent networks on Keras 3: build, train, export, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="build a stacked residual bidirectional LSTM classifier and run it on a built-in batch"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    return int(args.func(args))
