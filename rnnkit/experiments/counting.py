"""Counting: aⁿbⁿ learned as next-symbol prediction on n ≤ N, tested on n far past N; LSTM
against GRU at one parameter budget, several seeds.

Protocol after Weiss, Goldberg & Yahav (2018), "On the Practical Computational Power of Finite
Precision RNNs for Language Recognition" (ACL): small one-layer LSTMs and GRUs are trained on
positive strings aⁿbⁿ only, to predict at every step what may come next, and then tested on
much larger n. They find the LSTM learns a counter (a cell that goes up on a and down on b) and
generalises far beyond the training range, while the GRU, which cannot hold an unbounded count
in a saturating state, does not.

Targets (`next_symbol_targets`): after each a of aⁿbⁿ, "a or b" (class 0); after the b's before
the last, "b" (class 1); after the last b, "end" (class 2). Only "end" at the right step (and
never too early) shows that the network counted. A network *accepts* aⁿbⁿ when every step of the
string is predicted right; "counts to" is the largest n such that it accepts every n' ≤ n
(`counts_to`). Training draws a fresh batch of strings with n uniform in 1 … N every step
(`rnnkit.experiments.fresh_batches`); every ``eval_every`` steps the learning curve records the
accepted fraction for n ≤ N and the count reached up to ``test_max_n``.
"""

from __future__ import annotations

import os

import numpy as np

from rnnkit.experiments.fresh_batches import FreshBatches, train_fresh
from rnnkit.experiments.parameters import count_parameters, match_units
from rnnkit.experiments.runner import Report, format_table, new_figure
from rnnkit.tasks import ANBN_SYMBOLS
from rnnkit.tasks.task import one_hot

CELLS = ("lstm", "gru")
NEXT_SYMBOL_CLASSES = ("a_or_b", "b", "end")


def next_symbol_targets(n: int) -> np.ndarray:
    """Class after each of the 2n symbols of aⁿbⁿ: n × "a or b", n − 1 × "b", then "end"."""
    if n < 1:
        raise ValueError(f"Argument `n` must be >= 1. Received: n={n!r}")
    return np.array([0] * n + [1] * (n - 1) + [2], dtype="int32")


def encode_anbn(ns, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot aⁿbⁿ for each n, right-padded with all-zero steps to ``length``; targets padded with -1."""
    ns = [int(n) for n in ns]
    if max(ns) * 2 > length:
        raise ValueError(f"Argument `length` ({length}) is shorter than the longest string (2·{max(ns)}).")
    ids = np.full((len(ns), length), -1, dtype="int64")
    targets = np.full((len(ns), length), -1, dtype="int32")
    for row, n in enumerate(ns):
        ids[row, :n] = ANBN_SYMBOLS.index("a")
        ids[row, n : 2 * n] = ANBN_SYMBOLS.index("b")
        targets[row, : 2 * n] = next_symbol_targets(n)
    return one_hot(ids, len(ANBN_SYMBOLS)), targets


def anbn_prediction_batch(examples: int, seed, max_n: int) -> tuple[np.ndarray, np.ndarray]:
    """``examples`` strings aⁿbⁿ with n uniform in 1 … max_n, padded to 2·max_n (a fixed shape)."""
    ns = np.random.default_rng(seed).integers(1, max_n + 1, size=examples)
    return encode_anbn(ns, 2 * max_n)


def counts_to(ns: np.ndarray, correct: np.ndarray) -> int:
    """Largest n such that every string with n' ≤ n is right (0 when n = 1 already fails)."""
    reached = 0
    for n in np.unique(ns):
        if not correct[ns == n].all():
            break
        reached = int(n)
    return reached


def accepted(model, ns: np.ndarray, length: int) -> np.ndarray:
    """Per n: does the model predict every step of aⁿbⁿ right?"""
    x, targets = encode_anbn(ns, length)
    out = model.predict(x, batch_size=128, verbose=0)
    probs = out["probs"] if isinstance(out, dict) else out
    valid = targets >= 0
    return ((probs.argmax(-1) == targets) | ~valid).all(axis=1)


def build_predictor(cell: str, units: int):
    """Masking → rnnkit LSTM/GRU (return_sequences=True) → per-step softmax over the 3 classes."""
    import keras

    from rnnkit.layers import GRU, LSTM

    layer = {"lstm": LSTM, "gru": GRU}[cell]
    inputs = keras.Input(shape=(None, len(ANBN_SYMBOLS)), name="sequences")
    masked = keras.layers.Masking(mask_value=0.0)(inputs)
    hidden = layer(units, return_sequences=True, name=cell)(masked)
    probs = keras.layers.Dense(len(NEXT_SYMBOL_CLASSES), activation="softmax", name="probs")(hidden)
    return keras.Model(inputs, {"probs": probs}, name=f"anbn_{cell}")


def run_counting(quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/counting") -> dict:
    """aⁿbⁿ next-symbol prediction: in-range acceptance and count reached, LSTM vs GRU, over seeds."""
    import keras

    config = {
        "task": "anbn next-symbol prediction (positive strings only)",
        "max_n": 6 if quick else 50,
        "test_max_n": 12 if quick else 200,
        "seeds": [seed] if quick else [seed + k for k in range(5)],
        "budget_cell": "lstm",
        "budget_units": 4 if quick else 10,
        "batch_size": 16 if quick else 32,
        "steps": 20 if quick else 3000,
        "eval_every": 10 if quick else 100,
        "eval_examples": 64 if quick else 500,
        "optimizer": "adam",
        "learning_rate": 1e-2,
        "global_clipnorm": 1.0,
    }
    report = Report("counting", quick=quick, seed=seed, out_dir=out_dir, config=config)
    max_n, test_max_n = config["max_n"], config["test_max_n"]
    features, classes = len(ANBN_SYMBOLS), len(NEXT_SYMBOL_CLASSES)
    budget = count_parameters(config["budget_cell"], config["budget_units"], features, classes)
    test_ns = np.arange(1, test_max_n + 1)
    results: dict = {"budget": budget, "cells": {}}
    rows = []
    for cell in CELLS:
        units = match_units(lambda u, cell=cell: count_parameters(cell, u, features, classes), budget)
        per_seed = []
        for run_seed in config["seeds"]:
            keras.utils.set_random_seed(run_seed)
            model = build_predictor(cell, units)

            def probe(model):
                right = accepted(model, test_ns, 2 * test_max_n)
                return {
                    "accepted_in_range": float(right[:max_n].mean()),
                    "accepted_beyond": float(right[max_n:].mean()),
                    "counts_to": counts_to(test_ns, right),
                }

            run = train_fresh(
                model,
                FreshBatches(
                    lambda examples, s: anbn_prediction_batch(examples, s, max_n), config["batch_size"], run_seed
                ),
                steps=config["steps"],
                loss="sequence_crossentropy",
                eval_every=config["eval_every"],
                eval_examples=config["eval_examples"],
                probe=probe,
                learning_rate=config["learning_rate"],
                global_clipnorm=config["global_clipnorm"],
            )
            right = accepted(model, test_ns, 2 * test_max_n)
            curve = run["curve"]
            record = {
                "seed": run_seed,
                "final_train_loss": curve["train_loss"][-1],
                "accepted_in_range": float(right[:max_n].mean()),
                "accepted_beyond": float(right[max_n:].mean()),
                "counts_to": counts_to(test_ns, right),
                "best_counts_to": max(curve["counts_to"]),
                "accepted_n": [int(n) for n in test_ns[right]],
                "curve": curve,
                "seconds": run["seconds"],
            }
            per_seed.append(record)
            rows.append(
                [
                    cell,
                    units,
                    run_seed,
                    record["final_train_loss"],
                    record["accepted_in_range"],
                    record["accepted_beyond"],
                    record["counts_to"],
                    record["best_counts_to"],
                ]
            )
            print(
                f"  {cell} seed {run_seed}: accepts {record['accepted_in_range']:.2f} of n <= {max_n}, "
                f"{record['accepted_beyond']:.2f} of {max_n} < n <= {test_max_n}; counts to {record['counts_to']} "
                f"(best during training {record['best_counts_to']}) ({run['seconds']:.0f} s)",
                flush=True,
            )
        counts = [r["counts_to"] for r in per_seed]
        results["cells"][cell] = {
            "units": units,
            "parameters": count_parameters(cell, units, features, classes),
            "runs": per_seed,
            "counts_to_mean": float(np.mean(counts)),
            "counts_to_std": float(np.std(counts)),
            "accepted_beyond_mean": float(np.mean([r["accepted_beyond"] for r in per_seed])),
        }
        rows.append(
            [
                f"{cell} mean ± sd",
                units,
                "-",
                float(np.mean([r["final_train_loss"] for r in per_seed])),
                float(np.mean([r["accepted_in_range"] for r in per_seed])),
                results["cells"][cell]["accepted_beyond_mean"],
                f"{np.mean(counts):.1f} ± {np.std(counts):.1f}",
                "-",
            ]
        )
    headers = [
        "cell",
        "units",
        "seed",
        "train loss",
        f"accepts n<={max_n}",
        f"accepts {max_n}<n<={test_max_n}",
        "counts to n",
        "best during training",
    ]
    figure = _figure(results, config)
    notes = [
        f"trained on aⁿbⁿ, n <= {max_n} ({config['steps']} steps of {config['batch_size']} fresh strings, Adam "
        f"{config['learning_rate']}), next-symbol targets (a|b, b, end); accepts = every step right; counts to n = "
        f"largest n with every n' <= n accepted, tested up to n = {test_max_n}. Budget {budget} parameters "
        f"(lstm {config['budget_units']} units). Weiss et al. 2018: the LSTM counts far past the training range, "
        "the GRU does not. Figure: counts-to and in-range acceptance against training step, every seed.",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)


def _figure(results: dict, config: dict):
    figure, (count_axes, range_axes) = new_figure(2)
    for index, (cell, r) in enumerate(results["cells"].items()):
        for k, run in enumerate(r["runs"]):
            curve = run["curve"]
            label = f"{cell} ({r['units']} units)" if k == 0 else None
            count_axes.plot(curve["step"], curve["counts_to"], color=f"C{index}", alpha=0.8, label=label)
            range_axes.plot(curve["step"], curve["accepted_in_range"], color=f"C{index}", alpha=0.8, label=label)
    count_axes.axhline(config["max_n"], color="grey", linestyle="--", label=f"trained up to n = {config['max_n']}")
    count_axes.set_ylabel(f"counts to n (tested up to {config['test_max_n']})")
    range_axes.set_ylabel(f"fraction of n <= {config['max_n']} accepted")
    for axes in (count_axes, range_axes):
        axes.set_xlabel("training step (fresh batch each)")
        axes.legend(fontsize=8)
    count_axes.set_title(f"aⁿbⁿ next-symbol prediction, {results['budget']} parameters, one line per seed")
    return figure
