"""Depth and skip connections: stacks of 2, 4 and 8 LSTM layers with connection none /
residual / dense / highway on the sentiment task.

For each stack: the final training loss, validation accuracy, and the gradient norm that
reaches the first layer — the global norm of ∂L/∂θ over the first recurrent layer's weights,
on one fixed batch of training examples, at initialization and after training (with the top
layer's norm beside it: the ratio first/top shows how much the gradient shrinks on its way down).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from rnnkit.experiments.runner import Report, format_table, new_figure, train_quietly
from rnnkit.layers.stacked import CONNECTIONS

ENCODER = "encoder"  # ModelSpec's name for its StackedRNN


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
    """Final training loss and first-layer gradient norm for 2/4/8 layers × 4 connections."""
    from rnnkit.tasks import make_task
    from rnnkit.training import ModelSpec

    config = {
        "task": "sentiment",
        "length": 20,
        "window": 2,
        "cell": "lstm",
        "units": 16,
        "depths": [2, 4] if quick else [2, 4, 8],
        "connections": list(CONNECTIONS),
        "train_examples": 256 if quick else 1000,
        "val_examples": 128 if quick else 500,
        "probe_examples": 128 if quick else 256,
        "epochs": 1 if quick else 8,
        "batch_size": 32,
        "optimizer": "adam",
        "learning_rate": 1e-2,
        "global_clipnorm": 1.0,
    }
    report = Report("depth", quick=quick, seed=seed, out_dir=out_dir, config=config)
    task = make_task(
        "sentiment",
        train_examples=config["train_examples"],
        val_examples=config["val_examples"],
        seed=seed,
        length=config["length"],
        window=config["window"],
    )
    probe_x, probe_y = task.x_train[: config["probe_examples"]], task.y_train[: config["probe_examples"]]
    results: dict = {"runs": []}
    rows = []
    for depth in config["depths"]:
        for connection in config["connections"]:
            keras.utils.set_random_seed(seed)
            spec = ModelSpec(cell=config["cell"], units=config["units"], layers=depth, connection=connection)
            model = spec.build(task)
            before = layer_gradient_norms(model, probe_x, probe_y)
            run = train_quietly(
                model,
                task,
                config["epochs"],
                batch_size=config["batch_size"],
                optimizer=config["optimizer"],
                learning_rate=config["learning_rate"],
                global_clipnorm=config["global_clipnorm"],
                seed=seed,
            )
            after = layer_gradient_norms(model, probe_x, probe_y)
            history = run["history"]
            record = {
                "layers": depth,
                "connection": connection,
                "parameters": int(model.count_params()),
                "final_train_loss": history["loss"][-1],
                "final_val_accuracy": history["val_accuracy"][-1],
                "loss_curve": history["loss"],
                "first_layer_grad_norm_init": before[0],
                "top_layer_grad_norm_init": before[-1],
                "first_layer_grad_norm_trained": after[0],
                "top_layer_grad_norm_trained": after[-1],
                "layer_grad_norms_init": before,
                "layer_grad_norms_trained": after,
            }
            results["runs"].append(record)
            rows.append(
                [
                    depth,
                    connection,
                    record["parameters"],
                    record["final_train_loss"],
                    record["final_val_accuracy"],
                    before[0],
                    before[0] / before[-1] if before[-1] else None,
                    after[0],
                    after[0] / after[-1] if after[-1] else None,
                ]
            )
            print(
                f"  {depth} layers, {connection}: loss {record['final_train_loss']:.4f}, "
                f"first-layer ||g|| {before[0]:.3g} -> {after[0]:.3g}",
                flush=True,
            )
    headers = [
        "layers",
        "connection",
        "params",
        "train loss",
        "val acc",
        "||g1|| init",
        "g1/gtop init",
        "||g1|| trained",
        "g1/gtop trained",
    ]
    figure, (loss_axes, grad_axes) = new_figure(2)
    for index, connection in enumerate(config["connections"]):
        runs = [r for r in results["runs"] if r["connection"] == connection]
        depths = [r["layers"] for r in runs]
        loss_axes.plot(depths, [r["final_train_loss"] for r in runs], marker="o", color=f"C{index}", label=connection)
        grad_axes.plot(
            depths,
            [r["first_layer_grad_norm_init"] for r in runs],
            marker="o",
            color=f"C{index}",
            label=f"{connection} init",
        )
        grad_axes.plot(
            depths,
            [r["first_layer_grad_norm_trained"] for r in runs],
            marker="s",
            linestyle="--",
            color=f"C{index}",
            label=f"{connection} trained",
        )
    for axes, label in ((loss_axes, "final training loss"), (grad_axes, "first-layer gradient norm")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(config["depths"], [str(d) for d in config["depths"]])
        axes.set_xlabel("stacked LSTM layers")
        axes.set_ylabel(label)
        axes.legend(fontsize=8)
    grad_axes.set_yscale("log")
    loss_axes.set_title(f"sentiment length {config['length']}, {config['epochs']} epochs, {config['units']} units")
    grad_axes.set_title(f"||∂L/∂θ_layer1|| on {config['probe_examples']} training examples")
    notes = [
        f"LSTM stacks, {config['units']} units per layer, Adam {config['learning_rate']}, {config['epochs']} epochs on "
        f"{config['train_examples']} sentences of length {config['length']}; ||g1|| = global norm of the first "
        "layer's gradient on a fixed batch, g1/gtop = that over the top layer's.",
        "StackedRNN puts no skip on the first layer (raw features) nor on the top layer (it returns its final "
        "output), so at 2 layers none/residual/highway are the same network and their rows are equal; skips act "
        "on layers 1 .. L-2.",
    ]
    return report.finish(format_table(headers, rows), figure, results, notes)
