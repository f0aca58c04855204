"""Exploding gradients and clipping: one vanilla RNN, one learning rate, with and without
global-norm clipping and the non-finite guard.

Setting: SimpleRNN (1 layer) on the adding problem over long sequences, plain SGD at a high
learning rate — a setting where the unclipped run explodes. Four runs from the same initial
weights and data order:

| run | clipping | guard |
|---|---|---|
| ``unclipped`` | none | none: non-finite steps are skipped (never applied), training goes on |
| ``unclipped+guard`` | none | `NonFiniteGuard`: roll back, halve the learning rate, give up after 3 |
| ``clipped`` | global norm ``clip`` | none |
| ``clipped+guard`` | global norm ``clip`` | `NonFiniteGuard` |

Per step the record keeps the pre-clip gradient norm and the batch loss of every applied step;
"non-finite steps" counts steps whose loss or gradient norm was Inf/NaN.
"""

from __future__ import annotations

import math
import os
import tempfile

import keras
import numpy as np

from rnnkit.experiments.runner import Report, format_table, new_figure, train_quietly

RUNS = (
    ("unclipped", False, False),
    ("unclipped+guard", False, True),
    ("clipped", True, False),
    ("clipped+guard", True, True),
)


class StepRecorder(keras.callbacks.Callback):
    """Per-step record of a `Trainer` run: the trainer calls ``on_train_batch_begin`` and
    ``on_train_batch_end`` for every step, with the epoch's running mean loss over its finite
    steps (plus the current one) and the step's ``grad_norm``. Only finite steps are kept here;
    with equal batches, the step's own loss is k·mean_k − (k−1)·mean_{k−1}."""

    def __init__(self):
        super().__init__()
        self.attempted = 0
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self._applied_in_epoch = 0
        self._mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._applied_in_epoch, self._mean = 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.attempted += 1

    def on_train_batch_end(self, batch, logs=None):
        if not (math.isfinite(logs["loss"]) and math.isfinite(logs["grad_norm"])):
            return  # not applied (the guard, if any, has rolled back)
        k = self._applied_in_epoch + 1
        self.losses.append(k * logs["loss"] - (k - 1) * self._mean)
        self.grad_norms.append(logs["grad_norm"])
        self._applied_in_epoch, self._mean = k, logs["loss"]

    @property
    def non_finite(self) -> int:
        return self.attempted - len(self.losses)


def _train_without_guard(model, task, epochs: int, optimizer, recorder: StepRecorder, config: dict) -> dict:
    """`Trainer` with ``guard=None`` (what `train` does not offer): non-finite steps are skipped."""
    from rnnkit.training import CheckpointStore, Trainer

    with tempfile.TemporaryDirectory(prefix="rnnkit-experiment-") as out:
        trainer = Trainer(
            model,
            optimizer,
            task.kind,
            store=CheckpointStore(out),
            tolerance=task.tolerance,
            guard=None,
            batch_size=config["batch_size"],
            seed=config["seed"],
            verbose=0,
            callbacks=[recorder],
        )
        history = trainer.fit(task, epochs)
    return {"history": history.history, "recovery_events": [], "diverged": None}


def run_clipping(quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/clipping") -> dict:
    """Loss curves, non-finite step counts and final losses with/without clipping and guard."""
    import logging

    from rnnkit.tasks import make_task
    from rnnkit.training import ModelSpec, make_optimizer

    config = {
        "task": "adding",
        "length": 50 if quick else 100,
        "train_examples": 256 if quick else 1024,
        "val_examples": 128 if quick else 256,
        "batch_size": 32,
        "epochs": 2 if quick else 10,
        "model": {"cell": "simple", "units": 32, "layers": 1, "connection": "none"},
        "optimizer": "sgd",
        "learning_rate": 1.0,
        "clip": 1.0,
        "guard": {"lr_factor": 0.5, "max_recoveries": 3},
        "seed": seed,
    }
    report = Report("clipping", quick=quick, seed=seed, out_dir=out_dir, config=config)
    task = make_task(
        "adding",
        train_examples=config["train_examples"],
        val_examples=config["val_examples"],
        seed=seed,
        length=config["length"],
    )
    spec = ModelSpec(**config["model"])
    results, curves = {}, {}
    logging.getLogger("rnnkit.training").setLevel(logging.ERROR)  # skipped-step warnings: counted instead
    for name, clipped, guarded in RUNS:
        keras.utils.set_random_seed(seed)
        model = spec.build(task)  # same initial weights for every run
        clip = config["clip"] if clipped else None
        recorder = StepRecorder()
        if guarded:
            run = train_quietly(
                model,
                task,
                config["epochs"],
                callbacks=[recorder],
                batch_size=config["batch_size"],
                optimizer=config["optimizer"],
                learning_rate=config["learning_rate"],
                global_clipnorm=clip,
                seed=seed,
                **config["guard"],
            )
        else:
            optimizer = make_optimizer(config["optimizer"], learning_rate=config["learning_rate"], global_clipnorm=clip)
            run = _train_without_guard(model, task, config["epochs"], optimizer, recorder, config)
        history = run["history"]
        finals = history["loss"][-1:] or [math.nan]
        results[name] = {
            "steps": recorder.attempted,
            "non_finite_steps": recorder.non_finite,
            "recoveries": len(run["recovery_events"]),
            "diverged": run["diverged"],
            "epochs_completed": len(history["loss"]),
            "final_train_loss": finals[0],
            "final_val_loss": (history["val_loss"][-1:] or [math.nan])[0],
            "final_val_accuracy": (history["val_accuracy"][-1:] or [math.nan])[0],
            "max_grad_norm": max(recorder.grad_norms, default=math.nan),
            "final_learning_rate": (history["learning_rate"][-1:] or [math.nan])[0],
            "clipped_fraction_last_epoch": (history["clipped_fraction"][-1:] or [math.nan])[0],
        }
        curves[name] = (np.array(recorder.losses), np.array(recorder.grad_norms))
        print(f"  {name}: {recorder.non_finite} non-finite of {recorder.attempted} steps", flush=True)
    # the loss of always predicting the mean target 1.0 (the sum of two U(0, 1)): Var = 1/6
    baseline = float(np.mean((task.y_val - 1.0) ** 2))
    headers = ["run", "steps", "non-finite", "recoveries", "max ||g||", "final train loss", "final val loss", "status"]
    rows = [
        [
            name,
            r["steps"],
            r["non_finite_steps"],
            r["recoveries"],
            r["max_grad_norm"],
            r["final_train_loss"],
            r["final_val_loss"],
            "gave up" if r["diverged"] else f"{r['epochs_completed']} epochs",
        ]
        for name, r in results.items()
    ]
    results["predict_mean_val_loss"] = baseline
    figure, (loss_axes, norm_axes) = new_figure(2)
    for index, (name, (losses, norms)) in enumerate(curves.items()):
        # guarded runs dashed and on top: where a guard never fires, its curve covers the unguarded one
        style = {"color": f"C{index}", "linewidth": 0.9, "label": name, "linestyle": "--" if "guard" in name else "-"}
        loss_axes.plot(np.arange(1, len(losses) + 1), np.where(np.isfinite(losses), losses, np.nan), **style)
        norm_axes.plot(np.arange(1, len(norms) + 1), norms, **style)
    loss_axes.axhline(baseline, color="grey", linestyle=":", label="predict the mean")
    for axes, label in ((loss_axes, "batch loss (MSE)"), (norm_axes, "pre-clip global gradient norm")):
        axes.set_yscale("log")
        axes.set_xlabel("applied step")
        axes.set_ylabel(label)
        axes.legend(fontsize=8)
    loss_axes.set_title(f"SimpleRNN, adding T={config['length']}, SGD lr={config['learning_rate']}")
    norm_axes.set_title(f"clipping threshold {config['clip']}")
    notes = [
        f"SimpleRNN({config['model']['units']}) on adding T={config['length']}, SGD lr {config['learning_rate']}, "
        f"batch {config['batch_size']}, {config['epochs']} epochs; clipping = global norm {config['clip']}. "
        f"Predicting the mean gives val loss {baseline:.4f}.",
        "unclipped runs skip non-finite steps (never applied); the guard rolls back and halves the learning rate.",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)
