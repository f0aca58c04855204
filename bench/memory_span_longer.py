"""The memory-span runs that hit the step cap, rerun with a longer one (same seeds, models and batches as
`rnnkit bench memory_span`, so the first 4000 / 1500 steps are the same runs): is the failure the budget?

    .venv/bin/python bench/memory_span_longer.py      # ≈ 6 min on 2 CPU cores

Prints, per run, the step at which it met the span criterion (None: never) and the final held-out metric.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from rnnkit.experiments.fresh_batches import FreshBatches, train_fresh  # noqa: E402
from rnnkit.experiments.memory_span import is_solved, task_generator  # noqa: E402
from rnnkit.tasks import make_task  # noqa: E402
from rnnkit.training import ModelSpec  # noqa: E402

# (task, cell, units at the memory_span budget, lag, step cap): the runs stopped by the cap in the committed run
RUNS = [("copy", "lstm", 32, 50, 5000), ("copy", "gru", 37, 50, 5000), ("adding", "lstm", 32, 200, 10000)]


def main() -> int:
    for task, cell, units, lag, steps in RUNS:
        for seed in (0, 1, 2):
            kwargs = {"length": lag} if task == "adding" else {"lag": lag, "vocab_size": 8}
            shape_task = make_task(task, train_examples=2, val_examples=2, seed=seed, **kwargs)
            keras.utils.set_random_seed(seed)
            model = ModelSpec(cell=cell, units=units, layers=1, connection="none").build(shape_task)
            run = train_fresh(
                model,
                FreshBatches(task_generator(task, lag), 64, seed),
                steps=steps,
                loss="mse" if task == "adding" else "crossentropy",
                eval_every=100,
                eval_examples=1000,
                solved=lambda metrics, task=task: is_solved(task, metrics),
                learning_rate=1e-3,
                global_clipnorm=1.0,
            )
            metric = "mse" if task == "adding" else "accuracy"
            print(
                f"{task} {cell} T={lag} seed {seed}: solved at step {run['solved_at']} (cap {steps}), "
                f"final {metric} {run['curve'][metric][-1]:.4f} ({run['seconds']:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
