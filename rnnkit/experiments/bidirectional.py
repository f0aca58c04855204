"""Bidirectionality on the synthetic sentiment task, at equal parameters.

The label flips when a negator stands within ``window`` words of the sentiment word, before
*or after* it. A unidirectional LSTM reads the sentence once and must carry the sentiment word
to the end; a bidirectional one sees both sides of every word. The unidirectional model gets
the units that match the bidirectional model's parameter count. Two sentence lengths: short
(the README found no gap) and long.
"""

from __future__ import annotations

import os

import numpy as np

from rnnkit.experiments.parameters import budget_mismatch, count_parameters, match_units
from rnnkit.experiments.runner import Report, format_table, new_figure, train_quietly

DIRECTIONS = (("unidirectional", False), ("bidirectional", True))


def run_bidirectional(
    quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/bidirectional"
) -> dict:
    """Validation accuracy of a uni- and a bidirectional LSTM (equal parameters) by sentence length."""
    from rnnkit.tasks import SENTIMENT_VOCABULARY, make_task
    from rnnkit.training import ModelSpec

    config = {
        "task": "sentiment",
        "window": 2,
        "lengths": [10] if quick else [10, 40],
        "seeds": [seed] if quick else [seed, seed + 1],
        "cell": "lstm",
        "bidirectional_units": 16,
        "train_examples": 256 if quick else 2000,
        "val_examples": 128 if quick else 500,
        "epochs": 2 if quick else 12,
        "batch_size": 32,
        "optimizer": "adam",
        "learning_rate": 1e-2,
        "global_clipnorm": 1.0,
    }
    report = Report("bidirectional", quick=quick, seed=seed, out_dir=out_dir, config=config)
    features, classes, cell = len(SENTIMENT_VOCABULARY), 2, config["cell"]
    budget = count_parameters(cell, config["bidirectional_units"], features, classes, bidirectional=True)
    units = {
        "bidirectional": config["bidirectional_units"],
        "unidirectional": match_units(lambda u: count_parameters(cell, u, features, classes), budget),
    }
    results: dict = {"budget": budget, "models": {}, "runs": []}
    for name, bidirectional in DIRECTIONS:
        params = count_parameters(cell, units[name], features, classes, bidirectional=bidirectional)
        results["models"][name] = {
            "units": units[name],
            "parameters": params,
            "budget_gap": budget_mismatch(params, budget),
        }
    curves: dict = {}
    for length in config["lengths"]:
        for run_seed in config["seeds"]:
            task = make_task(
                "sentiment",
                train_examples=config["train_examples"],
                val_examples=config["val_examples"],
                seed=run_seed,
                length=length,
                window=config["window"],
            )
            for name, bidirectional in DIRECTIONS:
                run = train_quietly(
                    ModelSpec(cell=cell, units=units[name], layers=1, connection="none", bidirectional=bidirectional),
                    task,
                    config["epochs"],
                    batch_size=config["batch_size"],
                    optimizer=config["optimizer"],
                    learning_rate=config["learning_rate"],
                    global_clipnorm=config["global_clipnorm"],
                    seed=run_seed,
                )
                val = run["history"]["val_accuracy"]
                curves.setdefault((length, name), []).append(val)
                results["runs"].append(
                    {"length": length, "seed": run_seed, "model": name, "final_val_accuracy": val[-1], "best": max(val)}
                )
                print(f"  length {length} seed {run_seed} {name}: val_accuracy {val[-1]:.3f}", flush=True)
    rows = []
    for length in config["lengths"]:
        means = {}
        for name, _ in DIRECTIONS:
            finals = [r["final_val_accuracy"] for r in results["runs"] if r["length"] == length and r["model"] == name]
            means[name] = float(np.mean(finals))
            rows.append([length, name, units[name], results["models"][name]["parameters"], *finals, means[name]])
        results[f"length_{length}"] = {**means, "gap": means["bidirectional"] - means["unidirectional"]}
    headers = ["length", "model", "units", "params", *(f"seed {s}" for s in config["seeds"]), "mean"]
    figure, axes_list = new_figure(len(config["lengths"]))
    for axes, length in zip(axes_list, config["lengths"]):
        for index, (name, _) in enumerate(DIRECTIONS):
            for run_index, val in enumerate(curves[(length, name)]):
                label = f"{name} ({units[name]} units)" if run_index == 0 else None
                axes.plot(np.arange(1, len(val) + 1), val, color=f"C{index}", marker=".", label=label)
        axes.axhline(0.5, color="grey", linestyle=":")
        axes.set_xlabel("epoch")
        axes.set_ylabel("validation accuracy")
        axes.set_title(f"sentiment, length {length}, window {config['window']}, {budget} params")
        axes.legend()
    notes = [
        f"final validation accuracy after {config['epochs']} epochs; one LSTM layer; budget {budget} parameters "
        f"(bidirectional {units['bidirectional']} units per direction, unidirectional {units['unidirectional']}).",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)
