"""Depth and skip connections: stacks of 2, 4 and 8 LSTM layers with connection none /
residual / dense / highway, on the sentiment task with a fresh batch every step, several seeds.

The claim (deep stacks need skip connections) comes from the residual and highway literature
(He et al. 2016, "Deep residual learning"; Srivastava, Greff & Schmidhuber 2015, "Training very
deep networks"; for recurrent stacks Wu et al. 2016, GNMT, residual connections from the third
of eight LSTM layers on; Huang et al. 2017 for dense connections).

Where the connections differ: `StackedRNN` puts no skip on its first layer (its input is the
raw features) and, with ``return_sequences=False``, none on the top layer either (it returns its
final output). A 2-layer stack built that way has no skip at all, so none/residual/highway are the
same network. Here the stack runs with ``return_sequences=True`` (`build_classifier`) and the head
reads the last step, so layers 1 … L−1 all carry the skip: 1 skip at 2 layers, 3 at 4, 7 at 8.
The 2-layer rows can show whether *one* skip around the top layer changes training; they cannot
show a depth effect (the gradient reaches the first layer through a single recurrent layer).

For each stack: the held-out loss and accuracy over training (learning curves), the final
values as mean ± standard deviation over seeds, and the gradient norm that reaches the first
layer — the global norm of ∂L/∂θ over the first recurrent layer's weights on one fixed batch, at
initialization and after training, with the ratio to the top layer's norm.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from rnnkit.experiments.fresh_batches import FreshBatches, train_fresh
from rnnkit.experiments.runner import Report, format_table, new_figure
from rnnkit.layers.stacked import CONNECTIONS, StackedRNN

ENCODER = "encoder"  # the StackedRNN's name in `build_classifier`


def build_classifier(depth: int, connection: str, units: int, features: int, classes: int, cell: str = "lstm"):
    """Input → StackedRNN(return_sequences=True) → last step → softmax (the sentences have no
    padding, so no Masking)."""
    inputs = keras.Input(shape=(None, features), name="sequences")
    encoded = StackedRNN(
        units, num_layers=depth, cell=cell, connection=connection, return_sequences=True, name=ENCODER
    )(inputs)
    last = keras.layers.Lambda(lambda sequence: sequence[:, -1, :], name="last_step")(encoded)
    probs = keras.layers.Dense(classes, activation="softmax", name="probs")(last)
    return keras.Model(inputs, {"probs": probs}, name=f"depth{depth}_{connection}")


def layer_gradient_norms(model: keras.Model, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Global norm of ∂(mean cross-entropy)/∂θ_l for each recurrent layer l of the model's stack
    (``model.get_layer("encoder")``), bottom first."""
    stack = model.get_layer(ENCODER)
    groups = [layer.trainable_variables for layer in stack.rnn_layers]
    with tf.GradientTape() as tape:
        outputs = model(x, training=False)
        probs = outputs["probs"] if isinstance(outputs, dict) else outputs
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
    grads = tape.gradient(loss, [v for group in groups for v in group])
    norms, start = [], 0
    for group in groups:
        part = [g for g in grads[start : start + len(group)] if g is not None]
        norms.append(float(tf.linalg.global_norm(part)) if part else 0.0)
        start += len(group)
    return norms


def run_depth(quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/depth") -> dict:
    """Learning curves, final loss/accuracy and first-layer gradient norm for 2/4/8 layers × 4 connections."""
    from rnnkit.tasks.sentiment import sentiment

    config = {
        "task": "sentiment",
        "length": 20,
        "window": 2,
        "cell": "lstm",
        "units": 16,
        "return_sequences_inside": True,
        "depths": [2, 4] if quick else [2, 4, 8],
        "connections": list(CONNECTIONS),
        "seeds": [seed] if quick else [seed, seed + 1, seed + 2],
        "steps": 20 if quick else 3000,
        "batch_size": 32,
        "eval_every": 10 if quick else 100,
        "eval_examples": 128 if quick else 1000,
        "probe_examples": 128 if quick else 256,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "global_clipnorm": 1.0,
    }
    report = Report("depth", quick=quick, seed=seed, out_dir=out_dir, config=config)

    def generate(examples, batch_seed):
        return sentiment(examples, batch_seed, length=config["length"], window=config["window"])

    features, classes = generate(1, 0)[0].shape[-1], 2
    results: dict = {"runs": [], "summary": []}
    rows = []
    for depth in config["depths"]:
        for connection in config["connections"]:
            records = []
            for run_seed in config["seeds"]:
                batches = FreshBatches(generate, config["batch_size"], run_seed)
                probe_x, probe_y = generate(config["probe_examples"], [run_seed, 7, 7])
                keras.utils.set_random_seed(run_seed)
                model = build_classifier(depth, connection, config["units"], features, classes, config["cell"])
                before = layer_gradient_norms(model, probe_x, probe_y)
                run = train_fresh(
                    model,
                    batches,
                    steps=config["steps"],
                    loss="crossentropy",
                    eval_every=config["eval_every"],
                    eval_examples=config["eval_examples"],
                    learning_rate=config["learning_rate"],
                    global_clipnorm=config["global_clipnorm"],
                )
                after = layer_gradient_norms(model, probe_x, probe_y)
                curve = run["curve"]
                record = {
                    "layers": depth,
                    "connection": connection,
                    "seed": run_seed,
                    "parameters": int(model.count_params()),
                    "final_train_loss": curve["train_loss"][-1],
                    "final_eval_loss": curve["loss"][-1],
                    "final_eval_accuracy": curve["accuracy"][-1],
                    "first_layer_grad_norm_init": before[0],
                    "first_layer_grad_norm_trained": after[0],
                    "layer_grad_norms_init": before,
                    "layer_grad_norms_trained": after,
                    "curve": curve,
                    "seconds": run["seconds"],
                }
                records.append(record)
                results["runs"].append(record)
                print(
                    f"  {depth} layers, {connection:>8}, seed {run_seed}: held-out loss "
                    f"{record['final_eval_loss']:.4f}, accuracy {record['final_eval_accuracy']:.3f}, first-layer "
                    f"||g|| {before[0]:.3g} -> {after[0]:.3g} ({run['seconds']:.0f} s)",
                    flush=True,
                )
            summary = _summary(records)
            results["summary"].append(summary)
            rows.append(
                [
                    depth,
                    connection,
                    summary["parameters"],
                    _mean_sd(summary["eval_loss"]),
                    _mean_sd(summary["eval_accuracy"]),
                    summary["g1_init"],
                    summary["g1_over_gtop_init"],
                    summary["g1_trained"],
                    summary["g1_over_gtop_trained"],
                ]
            )
    headers = [
        "layers",
        "connection",
        "params",
        "held-out loss",
        "held-out acc",
        "||g1|| init",
        "g1/gtop init",
        "||g1|| trained",
        "g1/gtop trained",
    ]
    figure = _figure(results, config)
    notes = [
        f"LSTM stacks, {config['units']} units per layer, return_sequences=True inside (skips on layers 1 .. L-1, "
        f"head on the last step), {config['steps']} steps of {config['batch_size']} fresh sentences of length "
        f"{config['length']}, Adam {config['learning_rate']}, {len(config['seeds'])} seeds (mean ± sd); held-out = "
        f"{config['eval_examples']} generated sentences; ||g1|| = global norm of the first layer's gradient on a fixed "
        "batch (geometric mean over seeds), g1/gtop = that over the top layer's.",
        "At 2 layers only one layer (the top) carries a skip and the first layer's gradient passes one recurrent "
        "layer whatever the connection: those rows test one skip, not depth.",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _geomean(values: list[float]) -> float:
    positive = [v for v in values if v > 0]
    return float(np.exp(np.mean(np.log(positive)))) if positive else 0.0


def _summary(records: list[dict]) -> dict:
    def ratio(record, key):
        norms = record[key]
        return norms[0] / norms[-1] if norms[-1] else 0.0

    return {
        "layers": records[0]["layers"],
        "connection": records[0]["connection"],
        "parameters": records[0]["parameters"],
        "eval_loss": [r["final_eval_loss"] for r in records],
        "eval_accuracy": [r["final_eval_accuracy"] for r in records],
        "eval_loss_mean": float(np.mean([r["final_eval_loss"] for r in records])),
        "eval_accuracy_mean": float(np.mean([r["final_eval_accuracy"] for r in records])),
        "g1_init": _geomean([r["first_layer_grad_norm_init"] for r in records]),
        "g1_trained": _geomean([r["first_layer_grad_norm_trained"] for r in records]),
        "g1_over_gtop_init": _geomean([ratio(r, "layer_grad_norms_init") for r in records]),
        "g1_over_gtop_trained": _geomean([ratio(r, "layer_grad_norms_trained") for r in records]),
    }


def _figure(results: dict, config: dict):
    """One panel per depth: held-out loss against step, one colour per connection, one line per seed."""
    depths = config["depths"]
    figure, axes_list = new_figure(len(depths), size=(5.0, 3.8))
    for axes, depth in zip(axes_list, depths):
        for index, connection in enumerate(config["connections"]):
            runs = [r for r in results["runs"] if r["layers"] == depth and r["connection"] == connection]
            for k, run in enumerate(runs):
                axes.plot(
                    run["curve"]["step"],
                    run["curve"]["loss"],
                    color=f"C{index}",
                    alpha=0.75,
                    linewidth=1,
                    label=connection if k == 0 else None,
                )
        axes.axhline(np.log(2), color="grey", linestyle=":", linewidth=1, label="ln 2 (chance)")
        axes.set_title(f"{depth} LSTM layers (return_sequences=True inside)", fontsize=9)
        axes.set_xlabel("training step (fresh batch each)")
        axes.set_ylabel("held-out loss")
        axes.legend(fontsize=8)
    return figure
