"""Usable memory span: the longest lag a SimpleRNN, GRU and LSTM of equal parameter count solve,
on the long-lag tasks of the literature, trained on fresh data every step, over several seeds.

Tasks and protocols:

- ``adding`` — the adding problem (Hochreiter & Schmidhuber 1997, experiment 4; the long-lag
  comparison of LSTMs and plain RNNs in Le, Jaitly & Hinton 2015, "A simple way to initialize
  recurrent networks of rectified linear units", run at T = 150–400): T steps of (value, marker)
  pairs, the target the sum of the two marked values. Predicting the constant 1 gives MSE
  ``ADDING_BASELINE_MSE`` = Var(U + U') = 1/6 ≈ 0.167; *solved* means evaluation MSE below
  0.1 × that (``ADDING_SOLVED_MSE`` ≈ 0.0167): an order of magnitude below the baseline. The lag is T.
- ``copy`` — copy memory (Arjovsky, Shah & Bengio 2016, "Unitary evolution recurrent neural
  networks", after Hochreiter & Schmidhuber 1997) reduced to one symbol: a token out of 8 at
  step 0, ``lag − 1`` blanks, a go marker; the answer is the token. *Solved* means evaluation
  accuracy ≥ ``COPY_SOLVED_ACCURACY`` = 0.99 (chance 1/8). Arjovsky et al. copy 10 symbols and
  score a sequence loss; one symbol keeps the same lag at a fraction of the CPU cost.

Every training step draws a new batch (`rnnkit.experiments.fresh_batches`); evaluation is one
held-out generated set, checked every ``eval_every`` steps; a run stops when solved or after
``max_steps``. The cells get the units that bring their one-layer models to the LSTM's parameter
count (`rnnkit.experiments.parameters`).

Span of one (cell, seed) = the largest lag such that every tested lag up to it was solved
(`span`); lags are run in increasing order and a (cell, seed) stops at its first unsolved lag,
so larger lags are recorded as not run. The table reports mean ± standard deviation of the span
over seeds and, per lag, how many seeds solved it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from rnnkit.experiments.fresh_batches import FreshBatches, train_fresh
from rnnkit.experiments.parameters import budget_mismatch, count_parameters, match_units
from rnnkit.experiments.runner import Report, format_table, new_figure

CELLS = ("simple", "gru", "lstm")
TASKS = ("adding", "copy")
COPY_VOCAB = 8
ADDING_BASELINE_MSE = 1.0 / 6.0  # Var(U(0,1) + U(0,1)): the MSE of always predicting 1
ADDING_SOLVED_MSE = 0.1 * ADDING_BASELINE_MSE
COPY_SOLVED_ACCURACY = 0.99


def is_solved(task: str, metrics: dict) -> bool:
    """The span criterion: adding MSE < 0.1 × 1/6; copy accuracy >= 0.99."""
    if task == "adding":
        return metrics["mse"] < ADDING_SOLVED_MSE
    if task == "copy":
        return metrics["accuracy"] >= COPY_SOLVED_ACCURACY
    raise ValueError(f"Argument `task` must be one of {TASKS}. Received: task={task!r}")


def span(lags: Sequence[int], solved: Sequence[bool | None]) -> int:
    """Largest lag such that every tested lag up to it is solved (0: none). ``None`` (not run)
    counts as unsolved. Lags are taken in increasing order; a pass after a failure does not count."""
    if len(lags) != len(solved):
        raise ValueError(f"span: {len(lags)} lags but {len(solved)} solved flags.")
    reached = 0
    for lag, ok in sorted(zip(lags, solved), key=lambda pair: pair[0]):
        if not ok:
            break
        reached = lag
    return reached


def task_generator(task: str, lag: int):
    """``generate(examples, seed) -> (x, y)`` for one lag, from the built-in task functions."""
    from rnnkit.tasks.adding import adding_problem
    from rnnkit.tasks.copy_recall import copy_recall

    if task == "adding":
        return lambda examples, seed: adding_problem(examples, seed, length=lag)
    if task == "copy":
        return lambda examples, seed: copy_recall(examples, seed, lag=lag, vocab_size=COPY_VOCAB)
    raise ValueError(f"Argument `task` must be one of {TASKS}. Received: task={task!r}")


def task_shape(task: str) -> tuple[int, int]:
    """(input features, outputs) of the task's model."""
    return (2, 1) if task == "adding" else (COPY_VOCAB + 2, COPY_VOCAB)


def run_memory_span(quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/memory_span") -> dict:
    """Span per cell and task (mean ± std over seeds), solved counts per lag, learning curves."""
    import keras

    from rnnkit.tasks import make_task
    from rnnkit.training import ModelSpec

    config = {
        "tasks": list(TASKS),
        "lags": [5, 10] if quick else [10, 25, 50, 100, 200],
        "seeds": [seed] if quick else [seed, seed + 1, seed + 2],
        "budget_cell": "lstm",
        "budget_units": 8 if quick else 32,
        "batch_size": 16 if quick else 64,
        "max_steps": {"adding": 20, "copy": 20} if quick else {"adding": 4000, "copy": 1500},
        "eval_every": 10 if quick else 100,
        "eval_examples": 64 if quick else 1000,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "global_clipnorm": 1.0,
        "criteria": {"adding": f"mse < {ADDING_SOLVED_MSE:.4f}", "copy": f"accuracy >= {COPY_SOLVED_ACCURACY}"},
    }
    report = Report("memory_span", quick=quick, seed=seed, out_dir=out_dir, config=config)
    lags, seeds = config["lags"], config["seeds"]
    results: dict = {"tasks": {}}
    rows = []
    for task in TASKS:
        features, outputs = task_shape(task)
        budget = count_parameters(config["budget_cell"], config["budget_units"], features, outputs)
        metric = "mse" if task == "adding" else "accuracy"
        task_results: dict = {"budget": budget, "metric": metric, "cells": {}}
        for cell in CELLS:
            units = match_units(lambda u, cell=cell, f=features, o=outputs: count_parameters(cell, u, f, o), budget)
            params = count_parameters(cell, units, features, outputs)
            runs = []
            for run_seed in seeds:
                solved_flags: list[bool | None] = [None] * len(lags)
                per_lag = {}
                for index, lag in enumerate(lags):
                    shape_task = make_task(
                        task, train_examples=2, val_examples=2, seed=run_seed, **_lag_kwargs(task, lag)
                    )
                    keras.utils.set_random_seed(run_seed)
                    model = ModelSpec(cell=cell, units=units, layers=1, connection="none").build(shape_task)
                    run = train_fresh(
                        model,
                        FreshBatches(task_generator(task, lag), config["batch_size"], run_seed),
                        steps=config["max_steps"][task],
                        loss="mse" if task == "adding" else "crossentropy",
                        eval_every=config["eval_every"],
                        eval_examples=config["eval_examples"],
                        solved=lambda metrics, task=task: is_solved(task, metrics),
                        learning_rate=config["learning_rate"],
                        global_clipnorm=config["global_clipnorm"],
                    )
                    solved_flags[index] = run["solved_at"] is not None
                    best = (min if metric == "mse" else max)(run["curve"][metric])
                    per_lag[str(lag)] = {
                        "solved_at": run["solved_at"],
                        "steps": run["steps"],
                        "best": best,
                        "final": run["curve"][metric][-1],
                        "curve": run["curve"],
                        "seconds": run["seconds"],
                    }
                    print(
                        f"  {task:>6} {cell:>6} seed {run_seed} lag {lag:>3}: best {metric} {best:.4f}, "
                        f"{'solved at step ' + str(run['solved_at']) if solved_flags[index] else 'not solved'} "
                        f"({run['seconds']:.0f} s)",
                        flush=True,
                    )
                    if not solved_flags[index]:
                        break
                runs.append({"seed": run_seed, "span": span(lags, solved_flags), "lags": per_lag})
            spans = [r["span"] for r in runs]
            solved_count = {
                str(lag): sum(1 for r in runs if (r["lags"].get(str(lag)) or {}).get("solved_at") is not None)
                for lag in lags
            }
            run_count = {str(lag): sum(1 for r in runs if str(lag) in r["lags"]) for lag in lags}
            task_results["cells"][cell] = {
                "units": units,
                "parameters": params,
                "budget_gap": budget_mismatch(params, budget),
                "runs": runs,
                "spans": spans,
                "span_mean": float(np.mean(spans)),
                "span_std": float(np.std(spans)),
                "solved_seeds": solved_count,
                "run_seeds": run_count,
            }
            rows.append(
                [
                    task,
                    cell,
                    units,
                    params,
                    *(_solved_cell(solved_count[str(lag)], run_count[str(lag)]) for lag in lags),
                    f"{np.mean(spans):.0f} ± {np.std(spans):.0f}",
                    " ".join(map(str, spans)),
                ]
            )
        results["tasks"][task] = task_results
    headers = ["task", "cell", "units", "params", *(f"T={lag}" for lag in lags), "span mean ± sd", "span per seed"]
    figure = _span_figure(results, lags, seeds)
    _curves_figure(results, lags, report.out_dir)
    notes = [
        f"T=lag cells: seeds that solved it / seeds that ran it ('-': no seed got there, each stops at its first "
        f"unsolved lag). Solved: adding {config['criteria']['adding']} (0.1 × the predict-1 baseline 1/6), copy "
        f"{config['criteria']['copy']}, on {config['eval_examples']} held-out generated examples, checked every "
        f"{config['eval_every']} steps; at most {config['max_steps']['adding']} (adding) / "
        f"{config['max_steps']['copy']} (copy) steps of {config['batch_size']} fresh examples, "
        f"Adam {config['learning_rate']}, clipnorm {config['global_clipnorm']}. Budget: the lstm at "
        f"{config['budget_units']} units. Lecture: ~7 steps vanilla RNN, ~100 LSTM. Curves: memory_span_curves.png.",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)


def _lag_kwargs(task: str, lag: int) -> dict:
    return {"length": lag} if task == "adding" else {"lag": lag, "vocab_size": COPY_VOCAB}


def _solved_cell(solved: int, ran: int) -> str:
    return f"{solved}/{ran}" if ran else "-"


def _span_figure(results: dict, lags: list[int], seeds: list[int]):
    figure, axes_list = new_figure(len(results["tasks"]))
    for axes, (task, task_results) in zip(axes_list, results["tasks"].items()):
        for index, (cell, r) in enumerate(task_results["cells"].items()):
            fractions = [r["solved_seeds"][str(lag)] / len(seeds) for lag in lags]
            axes.plot(
                lags,
                fractions,
                marker="o",
                color=f"C{index}",
                label=f"{cell} ({r['units']} u), span {r['span_mean']:.0f} ± {r['span_std']:.0f}",
            )
        axes.set_xscale("log")
        axes.set_xticks(lags, [str(lag) for lag in lags])
        axes.set_ylim(-0.05, 1.05)
        axes.set_xlabel("lag T")
        axes.set_ylabel(f"fraction of {len(seeds)} seeds that solved T")
        axes.set_title(f"{task}, {task_results['budget']} parameters per model")
        axes.legend(fontsize=8)
    return figure


def _curves_figure(results: dict, lags: list[int], out_dir) -> None:
    """memory_span_curves.png: evaluation metric against training step, one panel per (task, cell),
    one colour per lag, one line per seed."""
    from pathlib import Path

    tasks = list(results["tasks"])
    figure, axes_list = new_figure(len(CELLS), size=(4.6, 3.6))
    figure.set_size_inches(4.6 * len(CELLS), 3.6 * len(tasks))
    figure.clear()
    for row, task in enumerate(tasks):
        task_results = results["tasks"][task]
        metric = task_results["metric"]
        for col, cell in enumerate(CELLS):
            axes = figure.add_subplot(len(tasks), len(CELLS), row * len(CELLS) + col + 1)
            for index, lag in enumerate(lags):
                for k, run in enumerate(task_results["cells"][cell]["runs"]):
                    record = run["lags"].get(str(lag))
                    if record is None:
                        continue
                    curve = record["curve"]
                    axes.plot(
                        curve["step"],
                        curve[metric],
                        color=f"C{index}",
                        alpha=0.7,
                        linewidth=1,
                        label=f"T={lag}" if k == 0 else None,
                    )
            if metric == "mse":
                axes.axhline(ADDING_BASELINE_MSE, color="grey", linestyle=":", linewidth=1)
                axes.axhline(ADDING_SOLVED_MSE, color="grey", linestyle="--", linewidth=1)
                axes.set_yscale("log")
            else:
                axes.axhline(COPY_SOLVED_ACCURACY, color="grey", linestyle="--", linewidth=1)
                axes.axhline(1 / COPY_VOCAB, color="grey", linestyle=":", linewidth=1)
            axes.set_title(f"{task} · {cell}", fontsize=9)
            axes.set_xlabel("training step (fresh batch each)", fontsize=8)
            axes.set_ylabel(f"held-out {metric}", fontsize=8)
            axes.legend(fontsize=7)
    figure.tight_layout()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    figure.savefig(Path(out_dir) / "memory_span_curves.png", dpi=100)
