"""Counting: aⁿbⁿ membership, trained on n ≤ N, tested on longer n; LSTM against GRU at one
parameter budget.

Training and validation use the built-in ``anbn`` task (n ≤ ``max_n``). Two test sets reach
past it, up to n = 2·``max_n``:

- *longer* — the same generator with ``max_n`` doubled, kept where the string has more than
  ``max_n`` a's (members and the task's own near misses, ~half each);
- *off by one* — for every n = 1 … 2·``max_n``: aⁿbⁿ (member), aⁿbⁿ⁻¹ and aⁿbⁿ⁺¹ (not), the
  strings only a counter separates.

"Counts to n" is the largest n such that every off-by-one string up to n is classified right.
"""

from __future__ import annotations

import os

import numpy as np

from rnnkit.experiments.parameters import count_parameters, match_units
from rnnkit.experiments.runner import Report, format_table, new_figure, train_quietly
from rnnkit.tasks import ANBN_SYMBOLS
from rnnkit.tasks.counting import anbn_strings
from rnnkit.tasks.task import one_hot

CELLS = ("lstm", "gru")


def encode(strings: list[str], length: int | None = None) -> np.ndarray:
    """One-hot strings over (a, b), right-padded with all-zero steps (the ``anbn`` encoding)."""
    length = length or max(len(s) for s in strings)
    ids = np.full((len(strings), length), -1, dtype="int64")
    for row, text in enumerate(strings):
        ids[row, : len(text)] = [ANBN_SYMBOLS.index(ch) for ch in text]
    return one_hot(ids, len(ANBN_SYMBOLS))


def is_member(text: str) -> bool:
    half = len(text) // 2
    return len(text) % 2 == 0 and half > 0 and text == "a" * half + "b" * half


def longer_strings(examples: int, seed, max_n: int) -> list[str]:
    """``anbn`` strings drawn with n up to 2·max_n, kept where they hold more than max_n a's."""
    strings = anbn_strings(examples, np.random.default_rng(seed), 2 * max_n)
    return [s for s in strings if s.count("a") > max_n]


def off_by_one_strings(largest_n: int) -> tuple[list[str], np.ndarray]:
    """aⁿbⁿ, aⁿbⁿ⁻¹, aⁿbⁿ⁺¹ for n = 1 … largest_n (aⁿbⁿ⁻¹ skipped at n = 1); returns (strings, n)."""
    strings, ns = [], []
    for n in range(1, largest_n + 1):
        for m in (n, n - 1, n + 1):
            if m >= 1:
                strings.append("a" * n + "b" * m)
                ns.append(n)
    return strings, np.array(ns)


def counts_to(ns: np.ndarray, correct: np.ndarray) -> int:
    """Largest n such that every string with n' ≤ n is right (0 when n = 1 already fails)."""
    reached = 0
    for n in np.unique(ns):
        if not correct[ns == n].all():
            break
        reached = int(n)
    return reached


def _predict(model, strings: list[str]) -> np.ndarray:
    outputs = model.predict(encode(strings), batch_size=256, verbose=0)
    probs = outputs["probs"] if isinstance(outputs, dict) else outputs
    return np.argmax(probs, axis=-1) == 1


def run_counting(quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/counting") -> dict:
    """aⁿbⁿ: validation (n ≤ N), longer-n and off-by-one accuracy for LSTM and GRU at equal parameters."""
    import keras

    from rnnkit.tasks import make_task
    from rnnkit.training import ModelSpec

    config = {
        "task": "anbn",
        "max_n": 10,
        "seeds": [seed] if quick else [seed, seed + 1, seed + 2],
        "budget_cell": "lstm",
        "budget_units": 16,
        "train_examples": 256 if quick else 2000,
        "val_examples": 128 if quick else 500,
        "longer_examples": 400 if quick else 4000,
        "epochs": 2 if quick else 30,
        "batch_size": 64,
        "optimizer": "adam",
        "learning_rate": 1e-2,
        "global_clipnorm": 1.0,
    }
    report = Report("counting", quick=quick, seed=seed, out_dir=out_dir, config=config)
    max_n = config["max_n"]
    features, classes = len(ANBN_SYMBOLS), 2
    budget = count_parameters(config["budget_cell"], config["budget_units"], features, classes)
    longer = longer_strings(config["longer_examples"], [seed, 5], max_n)
    longer_labels = np.array([is_member(s) for s in longer])
    longer_ns = np.array([s.count("a") for s in longer])
    hard, hard_ns = off_by_one_strings(2 * max_n)
    hard_labels = np.array([is_member(s) for s in hard])
    results: dict = {"budget": budget, "longer_examples": len(longer), "cells": {}}
    per_n: dict = {}
    rows = []
    for cell in CELLS:
        units = match_units(lambda u, cell=cell: count_parameters(cell, u, features, classes), budget)
        per_seed = []
        for run_seed in config["seeds"]:
            task = make_task(
                "anbn",
                train_examples=config["train_examples"],
                val_examples=config["val_examples"],
                seed=run_seed,
                max_n=max_n,
            )
            keras.utils.set_random_seed(run_seed)
            model = ModelSpec(cell=cell, units=units, layers=1, connection="none").build(task)
            run = train_quietly(
                model,
                task,
                config["epochs"],
                batch_size=config["batch_size"],
                optimizer=config["optimizer"],
                learning_rate=config["learning_rate"],
                global_clipnorm=config["global_clipnorm"],
                seed=run_seed,
            )
            longer_right = _predict(model, longer) == longer_labels
            hard_right = _predict(model, hard) == hard_labels
            record = {
                "seed": run_seed,
                "train_loss": run["history"]["loss"][-1],
                "val_accuracy": run["history"]["val_accuracy"][-1],
                "longer_accuracy": float(longer_right.mean()),
                "off_by_one_accuracy_trained_n": float(hard_right[hard_ns <= max_n].mean()),
                "off_by_one_accuracy_longer_n": float(hard_right[hard_ns > max_n].mean()),
                "counts_to": counts_to(hard_ns, hard_right),
            }
            per_seed.append(record)
            per_n.setdefault(cell, []).append(
                [float(longer_right[longer_ns == n].mean()) for n in range(max_n + 1, 2 * max_n + 1)]
            )
            rows.append(
                [
                    cell,
                    units,
                    run_seed,
                    record["val_accuracy"],
                    record["longer_accuracy"],
                    record["off_by_one_accuracy_trained_n"],
                    record["off_by_one_accuracy_longer_n"],
                    record["counts_to"],
                ]
            )
            print(
                f"  {cell} seed {run_seed}: val {record['val_accuracy']:.3f}, longer {record['longer_accuracy']:.3f}, "
                f"counts to {record['counts_to']}",
                flush=True,
            )
        results["cells"][cell] = {
            "units": units,
            "parameters": count_parameters(cell, units, features, classes),
            "runs": per_seed,
            **{
                f"mean_{key}": float(np.mean([r[key] for r in per_seed]))
                for key in (
                    "val_accuracy",
                    "longer_accuracy",
                    "off_by_one_accuracy_trained_n",
                    "off_by_one_accuracy_longer_n",
                    "counts_to",
                )
            },
        }
    for cell, r in results["cells"].items():
        rows.append(
            [
                f"{cell} mean",
                r["units"],
                "-",
                r["mean_val_accuracy"],
                r["mean_longer_accuracy"],
                r["mean_off_by_one_accuracy_trained_n"],
                r["mean_off_by_one_accuracy_longer_n"],
                r["mean_counts_to"],
            ]
        )
    headers = [
        "cell",
        "units",
        "seed",
        f"val n<={max_n}",
        f"longer n<={2 * max_n}",
        "±1 trained n",
        "±1 longer n",
        "counts to n",
    ]
    figure, (axes,) = new_figure()
    ns = list(range(max_n + 1, 2 * max_n + 1))
    for index, (cell, curves) in enumerate(per_n.items()):
        for curve in curves:
            axes.plot(ns, curve, color=f"C{index}", alpha=0.35, linewidth=0.8)
        axes.plot(ns, np.mean(curves, axis=0), color=f"C{index}", marker="o", label=f"{cell} (mean of {len(curves)})")
    axes.axhline(0.5, color="grey", linestyle=":", label="chance")
    axes.set_xlabel(f"n (number of a's; trained on n <= {max_n})")
    axes.set_ylabel("accuracy on longer strings")
    axes.set_title(f"aⁿbⁿ beyond the training range, {budget} parameters")
    axes.legend()
    notes = [
        f"trained on n <= {max_n} ({config['epochs']} epochs, Adam {config['learning_rate']}); longer = the task's "
        f"own mix with {max_n} < n <= {2 * max_n} ({len(longer)} strings); ±1 = aⁿbⁿ vs aⁿbⁿ⁻¹, aⁿbⁿ⁺¹; "
        f"counts to n = largest n with every ±1 string up to n right.",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)
