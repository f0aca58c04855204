"""Argument parsing for `rnnkit train` and `rnnkit diagnose` (wired into `rnnkit.cli`).

Each ``add_*_parser(subparsers)`` adds one subcommand whose ``func(args) -> int`` is the exit
status: 0 done, 1 training diverged (the guard gave up), 2 a bad argument.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rnnkit.layers.stacked import CELL_KINDS, CONNECTIONS
from rnnkit.tasks import task_names

DISTRIBUTE_CHOICES = ("mirrored", "multiworker")
# --flag -> generator parameter (only flags the user gives are passed on)
TASK_FLAGS = {"length": "length", "lag": "lag", "vocab_size": "vocab_size", "max_n": "max_n", "window": "window"}


def _fail(command: str, error: Exception, status: int) -> int:
    print(f"rnnkit {command}: error: {error}", file=sys.stderr)
    return status


def _train(args: argparse.Namespace) -> int:
    # Split the CPU / start multi-worker before anything else creates TF state.
    from rnnkit.tasks import make_task
    from rnnkit.training import ModelSpec, TrainingDivergedError, make_strategy, train

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        strategy = make_strategy(args.distribute, args.cpu_replicas)
        spec = ModelSpec(
            cell=args.cell,
            units=args.units,
            layers=args.layers,
            connection=args.connection,
            bidirectional=args.bidirectional,
            dropout=args.dropout,
        )
        task_params = {
            param: getattr(args, flag) for flag, param in TASK_FLAGS.items() if getattr(args, flag) is not None
        }
        task = make_task(
            args.task,
            train_examples=args.train_examples,
            val_examples=args.val_examples,
            seed=args.seed,
            **task_params,
        )
        history = train(
            spec,
            task,
            args.epochs,
            args.out,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            learning_rate=args.learning_rate,
            global_clipnorm=None if args.global_clipnorm <= 0 else args.global_clipnorm,
            resume=args.resume,
            distribute=strategy,
            seed=args.seed,
            lr_factor=args.lr_factor,
            max_recoveries=args.max_recoveries,
            verbose=args.verbose,
        )
    except TrainingDivergedError as error:
        return _fail("train", error, 1)
    except ValueError as error:
        return _fail("train", error, 2)
    logs = history.history
    if logs["loss"]:
        print(
            f"done: {len(logs['loss'])} epochs, loss {logs['loss'][-1]:.4f}, accuracy {logs['accuracy'][-1]:.3f}, "
            f"val_accuracy {logs['val_accuracy'][-1]:.3f}; wrote {args.out}/model.keras, history.json, checkpoints/"
        )
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """``rnnkit train``: Masking -> StackedRNN -> Dense on a built-in task."""
    parser = subparsers.add_parser(
        "train",
        help="train a stacked recurrent model on a built-in task (clipping, non-finite guard, checkpoints)",
        description="Train Masking -> StackedRNN -> Dense on a built-in task. Writes OUT/model.keras, "
        "OUT/history.json and OUT/checkpoints/ (atomic); --resume continues from the latest checkpoint.",
    )
    task = parser.add_argument_group("task")
    task.add_argument("--task", choices=task_names(), default="sentiment", help="built-in task (default sentiment)")
    task.add_argument("--length", type=int, help="sequence length (adding, sentiment)")
    task.add_argument("--lag", type=int, help="recall lag (copy)")
    task.add_argument("--vocab-size", type=int, help="token count (copy)")
    task.add_argument("--max-n", type=int, help="largest n (anbn)")
    task.add_argument("--window", type=int, help="negation window (sentiment)")
    task.add_argument("--train-examples", type=int, default=2000, help="training examples (default 2000)")
    task.add_argument("--val-examples", type=int, default=500, help="validation examples (default 500)")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=tuple(CELL_KINDS), default="lstm", help="recurrent cell (default lstm)")
    model.add_argument("--units", type=int, default=32, help="units per layer and direction (default 32)")
    model.add_argument("--layers", type=int, default=2, help="stacked layers (default 2)")
    model.add_argument(
        "--connection", choices=CONNECTIONS, default="residual", help="between layers (default residual)"
    )
    model.add_argument("--bidirectional", action="store_true", help="bidirectional layers")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout between layers (default 0)")
    run = parser.add_argument_group("training")
    run.add_argument("--epochs", type=int, default=10, help="total epochs, counting resumed ones (default 10)")
    run.add_argument("--batch-size", type=int, default=64, help="global batch size (default 64)")
    run.add_argument("--optimizer", default="adam", help="adam | adamw | sgd | rmsprop | adagrad (default adam)")
    run.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate (default 1e-3)")
    run.add_argument(
        "--global-clipnorm", type=float, default=1.0, help="global-norm clipping threshold; 0 disables (default 1.0)"
    )
    run.add_argument("--lr-factor", type=float, default=0.5, help="learning-rate factor per recovery (default 0.5)")
    run.add_argument("--max-recoveries", type=int, default=3, help="recoveries before giving up (default 3)")
    run.add_argument("--seed", type=int, default=0, help="seed for data, weights and shuffling (default 0)")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    run.add_argument(
        "--distribute", choices=DISTRIBUTE_CHOICES, default=None, help="tf.distribute strategy (default: none)"
    )
    run.add_argument(
        "--cpu-replicas", type=int, default=None, help="with --distribute mirrored: split the CPU into N devices"
    )
    run.add_argument("--quiet", dest="verbose", action="store_const", const=0, default=1, help="no progress bar")
    parser.set_defaults(func=_train)
    return parser


def _diagnose(args: argparse.Namespace) -> int:
    from rnnkit.diagnostics import gradient_flow, gradient_flow_table, plot_gradient_flow

    try:
        lags = tuple(int(v) for v in args.lags.split(","))
        cells = tuple(args.cells.split(","))
        results = [
            gradient_flow(
                cell,
                args.length,
                units=args.units,
                batch=args.batch,
                seed=args.seed,
                state=args.state,
                train_epochs=args.train_epochs,
            )
            for cell in cells
        ]
    except ValueError as error:
        return _fail("diagnose", error, 2)
    print(f"mean ||dJ^(i)/dh^(j)|| by lag i-j (T={args.length}, units={args.units}, state={args.state}):")
    print(gradient_flow_table(results, lags))
    print(f"wrote {plot_gradient_flow(results, args.plot)}")
    return 0


def add_diagnose_parser(subparsers) -> argparse.ArgumentParser:
    """``rnnkit diagnose``: the gradient-flow table and plot for simple / LSTM / GRU cells."""
    parser = subparsers.add_parser(
        "diagnose",
        help="gradient flow through time: ||dJ/dh|| against lag for simple/LSTM/GRU (table + PNG)",
        description="Measure the norm of dJ^(i)/dh^(j) against the lag i-j at initialization "
        "(and after --train-epochs on the adding problem), print a table and write a log-scale PNG.",
    )
    parser.add_argument("--cells", default="simple,lstm,gru", help="comma-separated cells (default simple,lstm,gru)")
    parser.add_argument("--length", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument("--units", type=int, default=32, help="units (default 32)")
    parser.add_argument("--batch", type=int, default=16, help="sequences averaged over (default 16)")
    parser.add_argument("--lags", default="1,5,10,20,50,100", help="table lags (default 1,5,10,20,50,100)")
    parser.add_argument("--state", choices=("h", "full"), default="h", help="perturb h only or the full state")
    parser.add_argument("--train-epochs", type=int, default=0, help="also measure after training (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--plot", default="gradient_flow.png", help="PNG path (default gradient_flow.png)")
    parser.set_defaults(func=_diagnose)
    return parser
