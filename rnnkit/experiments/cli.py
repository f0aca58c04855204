"""``rnnkit bench NAME [--quick] [--seed N] [--out DIR]`` (wired into `rnnkit.cli`), also used by
the thin ``bench/<name>.py`` scripts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnkit.experiments.runner import EXPERIMENTS, default_out_dir, experiment_names, run_experiment

ALL = "all"


def add_arguments(parser: argparse.ArgumentParser, name: str | None = None) -> None:
    """``--quick``, ``--seed`` and ``--out`` (default ``bench/out/<name>``; with ``all``, one
    subdirectory per experiment under ``--out``, default ``bench/out``)."""
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (under a minute)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, weights and shuffling (default 0)")
    default = default_out_dir(name) if name else None
    parser.add_argument("--out", default=default, help=f"output directory (default {default or 'bench/out/NAME'})")


def bench(name: str, quick: bool, seed: int, out: str | None) -> int:
    """Run ``name`` (or every experiment for ``all``); 0 on success, 2 for an unknown name."""
    if name != ALL and name not in EXPERIMENTS:
        print(
            f"rnnkit bench: error: NAME must be one of {(*experiment_names(), ALL)}. Received: {name!r}",
            file=sys.stderr,
        )
        return 2
    names = experiment_names() if name == ALL else (name,)
    for each in names:
        if name == ALL:
            target = Path(out) / each if out else default_out_dir(each)
        else:
            target = Path(out) if out else default_out_dir(each)
        run_experiment(each, quick=quick, seed=seed, out_dir=target)
    return 0


def _bench(args: argparse.Namespace) -> int:
    return bench(args.name, args.quick, args.seed, args.out)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """``rnnkit bench``: run one of the lecture-claim experiments (or all of them)."""
    lines = "\n".join(f"  {name:<14} {experiment.claim}" for name, experiment in EXPERIMENTS.items())
    parser = subparsers.add_parser(
        "bench",
        help="run an experiment that measures one of the lecture's claims (table, PNG, JSON)",
        description=f"Experiments (each prints a table and writes OUT/NAME.png and OUT/NAME.json):\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        choices=(*experiment_names(), ALL),
        help=f"one of {', '.join((*experiment_names(), ALL))}",
    )
    add_arguments(parser)
    parser.set_defaults(func=_bench)
    return parser


def main(name: str, argv: list[str] | None = None) -> int:
    """Entry point of ``bench/<name>.py``."""
    parser = argparse.ArgumentParser(
        prog=f"bench/{name}.py", description=f"{name}: {EXPERIMENTS[name].claim} (see rnnkit.experiments.{name})"
    )
    add_arguments(parser, name)
    args = parser.parse_args(argv)
    return bench(name, args.quick, args.seed, args.out)
