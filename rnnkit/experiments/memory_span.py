"""Usable memory span: copy/recall accuracy against the lag for SimpleRNN, GRU and LSTM at one
parameter budget.

The ``copy`` task shows a token at step 0 and asks for it ``lag`` steps later, with only blanks
in between. Each cell gets the units that bring its one-layer classifier to the LSTM's parameter
count (`rnnkit.experiments.parameters`). A lag counts as usable when validation accuracy
reaches `accuracy_threshold`: chance + 0.9 · (1 − chance), i.e. 90 % of the way from guessing
(1 / vocab_size) to perfect. The span is the largest tested lag up to which every tested lag is
usable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rnnkit.experiments.parameters import budget_mismatch, count_parameters, match_units
from rnnkit.experiments.runner import Report, format_table, new_figure, train_quietly

CELLS = ("simple", "gru", "lstm")
GAP_FRACTION = 0.9


def accuracy_threshold(chance: float, fraction: float = GAP_FRACTION) -> float:
    """chance + fraction · (1 − chance): ``fraction`` of the gap between guessing and perfect."""
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"Argument `chance` must be in [0, 1). Received: chance={chance!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"Argument `fraction` must be in (0, 1]. Received: fraction={fraction!r}")
    return chance + fraction * (1.0 - chance)


def usable_span(lags: Sequence[int], accuracies: Sequence[float], threshold: float) -> int:
    """Largest lag such that every tested lag up to it has accuracy >= ``threshold`` (0: none).

    Lags are taken in increasing order; a lag that passes after a failing one does not count.
    """
    if len(lags) != len(accuracies):
        raise ValueError(f"usable_span: {len(lags)} lags but {len(accuracies)} accuracies.")
    span = 0
    for lag, accuracy in sorted(zip(lags, accuracies)):
        if accuracy < threshold:
            break
        span = lag
    return span


def run_memory_span(quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/memory_span") -> dict:
    """Copy-task validation accuracy by lag for each cell at equal parameters; usable span per cell."""
    from rnnkit.tasks import make_task
    from rnnkit.training import ModelSpec

    config = {
        "task": "copy",
        "vocab_size": 8,
        "lags": [5, 20] if quick else [5, 10, 20, 50, 100],
        "budget_cell": "lstm",
        "budget_units": 16 if quick else 32,
        "train_examples": 256 if quick else 2000,
        "val_examples": 128 if quick else 500,
        "max_epochs": 2 if quick else 30,
        "stop_at_val_accuracy": 0.99,
        "batch_size": 64,
        "optimizer": "adam",
        "learning_rate": 1e-2,
        "global_clipnorm": 1.0,
    }
    report = Report("memory_span", quick=quick, seed=seed, out_dir=out_dir, config=config)
    vocab = config["vocab_size"]
    features, classes = vocab + 2, vocab
    budget = count_parameters(config["budget_cell"], config["budget_units"], features, classes)
    chance = 1.0 / vocab
    threshold = accuracy_threshold(chance)
    results: dict = {"budget": budget, "chance": chance, "threshold": threshold, "cells": {}}
    for cell in CELLS:
        units = match_units(lambda u, cell=cell: count_parameters(cell, u, features, classes), budget)
        params = count_parameters(cell, units, features, classes)
        accuracies, epochs = [], []
        for lag in config["lags"]:
            task = make_task(
                "copy",
                train_examples=config["train_examples"],
                val_examples=config["val_examples"],
                seed=seed,
                lag=lag,
                vocab_size=vocab,
            )
            run = train_quietly(
                ModelSpec(cell=cell, units=units, layers=1, connection="none"),
                task,
                config["max_epochs"],
                stop_at=config["stop_at_val_accuracy"],
                batch_size=config["batch_size"],
                optimizer=config["optimizer"],
                learning_rate=config["learning_rate"],
                global_clipnorm=config["global_clipnorm"],
                seed=seed,
            )
            accuracies.append(max(run["history"]["val_accuracy"]))
            epochs.append(len(run["history"]["val_accuracy"]))
            print(f"  {cell:>6} lag {lag:>3}: val_accuracy {accuracies[-1]:.3f} after {epochs[-1]} epochs", flush=True)
        results["cells"][cell] = {
            "units": units,
            "parameters": params,
            "budget_gap": budget_mismatch(params, budget),
            "val_accuracy": dict(zip(map(str, config["lags"]), accuracies)),
            "epochs": dict(zip(map(str, config["lags"]), epochs)),
            "span": usable_span(config["lags"], accuracies, threshold),
        }
    headers = ["cell", "units", "params", *(f"lag {lag}" for lag in config["lags"]), "span"]
    rows = [
        [cell, r["units"], r["parameters"], *r["val_accuracy"].values(), r["span"]]
        for cell, r in results["cells"].items()
    ]
    figure, (axes,) = new_figure()
    for cell, r in results["cells"].items():
        axes.plot(config["lags"], list(r["val_accuracy"].values()), marker="o", label=f"{cell} ({r['units']} units)")
    axes.axhline(threshold, color="grey", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.axhline(chance, color="grey", linestyle=":", label=f"chance {chance:.3f}")
    axes.set_xscale("log")
    axes.set_xticks(config["lags"], [str(lag) for lag in config["lags"]])
    axes.set_xlabel("lag (steps between the token and its recall)")
    axes.set_ylabel("best validation accuracy")
    axes.set_title(f"Copy task, {budget} parameters per model")
    axes.legend()
    notes = [
        f"best validation accuracy within {config['max_epochs']} epochs (stopping at "
        f"{config['stop_at_val_accuracy']}); span = largest lag with every lag up to it >= {threshold:.4f} "
        f"(chance {chance:.3f} + {GAP_FRACTION} of the gap to 1). Budget {budget} parameters "
        f"(lstm {config['budget_units']} units); lecture: ~7 steps vanilla RNN, ~100 LSTM.",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)
