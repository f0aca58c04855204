"""Training on a fresh batch every step, the protocol of the long-lag literature (Hochreiter &
Schmidhuber 1997; Le, Jaitly & Hinton 2015; Arjovsky, Shah & Bengio 2016): the tasks are
generated, so no example is ever seen twice and a model cannot pass by memorising a fixed set.

`FreshBatches` wraps a task generator ``generate(examples, seed) -> (x, y)``: training batch k
uses the seed ``[seed, k]``, the evaluation set the seed ``[seed, EVAL_STREAM]``, so every batch
differs, a run is reproducible from its seed, and evaluation never overlaps training.
`train_fresh` runs a plain Adam loop over such batches and records a learning curve.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

EVAL_STREAM = 2**31 - 1  # the second seed word of the evaluation set; training steps stay below it
LOSSES = ("mse", "crossentropy", "sequence_crossentropy")  # the last: y (batch, time), -1 = padding


@dataclasses.dataclass(frozen=True)
class FreshBatches:
    """Batches of ``batch_size`` drawn anew for every step from ``generate(examples, seed)``."""

    generate: Callable[[int, object], tuple[np.ndarray, np.ndarray]]
    batch_size: int
    seed: int

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= step < EVAL_STREAM:
            raise ValueError(f"Argument `step` must be in [0, {EVAL_STREAM}). Received: step={step!r}")
        return self.generate(self.batch_size, [self.seed, step])

    def evaluation(self, examples: int) -> tuple[np.ndarray, np.ndarray]:
        """A held-out set from its own seed stream (the same for every run with this seed)."""
        return self.generate(examples, [self.seed, EVAL_STREAM])


def _output(outputs):
    return next(iter(outputs.values())) if isinstance(outputs, dict) else outputs


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, loss: str) -> dict:
    """``{"loss": ..., "accuracy" (classification) | "mse" (regression)}`` on (x, y); for
    ``sequence_crossentropy`` the accuracy is per sequence (every unpadded step right)."""
    out = np.asarray(_output(model(x, training=False)))
    if loss == "sequence_crossentropy":
        valid = y >= 0
        safe = np.where(valid, y, 0)
        picked = np.clip(np.take_along_axis(out, safe[..., None], axis=-1)[..., 0], 1e-7, 1.0)
        right = (out.argmax(-1) == safe) | ~valid
        return {
            "loss": float(-np.sum(np.log(picked) * valid) / max(valid.sum(), 1)),
            "accuracy": float(np.mean(right.all(axis=1))),
        }
    if loss == "mse":
        mse = float(np.mean((out[:, 0] - y) ** 2))
        return {"loss": mse, "mse": mse}
    picked = np.clip(out[np.arange(len(y)), y], 1e-7, 1.0)
    return {"loss": float(-np.mean(np.log(picked))), "accuracy": float(np.mean(out.argmax(-1) == y))}


def train_fresh(
    model: keras.Model,
    batches: FreshBatches,
    *,
    steps: int,
    loss: str,
    eval_every: int,
    eval_examples: int,
    solved: Callable[[dict], bool] | None = None,
    probe: Callable[[keras.Model], dict] | None = None,
    learning_rate: float = 1e-3,
    global_clipnorm: float | None = 1.0,
    jit_compile: bool = True,
) -> dict:
    """Adam on ``steps`` fresh batches, evaluating every ``eval_every`` steps on one held-out set.

    ``probe(model) -> {name: number}`` adds more numbers to every evaluation (and to the curve).
    Stops at the first evaluation where ``solved(metrics)`` is true. ``jit_compile``: XLA for the
    training step (about 2× faster on CPU for these small recurrent models; keep the batch shape fixed,
    each new shape compiles again). Returns ``{"curve": {"step":
    [...], "train_loss": [mean since the last evaluation], "loss": [...], "accuracy"|"mse": [...]},
    "solved_at": step or None, "steps": steps run, "seconds": ...}``.
    """
    if loss not in LOSSES:
        raise ValueError(f"Argument `loss` must be one of {LOSSES}. Received: loss={loss!r}")
    if steps < 1 or eval_every < 1:
        raise ValueError(f"Arguments `steps` and `eval_every` must be >= 1. Received: {steps}, {eval_every}")
    optimizer = keras.optimizers.Adam(learning_rate, global_clipnorm=global_clipnorm)
    variables = model.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def step_fn(x, y):
        with tf.GradientTape() as tape:
            out = _output(model(x, training=True))
            if loss == "mse":
                value = tf.reduce_mean(tf.square(out[:, 0] - y))
            elif loss == "sequence_crossentropy":
                valid = tf.cast(y >= 0, out.dtype)
                per_step = keras.losses.sparse_categorical_crossentropy(tf.maximum(y, 0), out)
                value = tf.reduce_sum(per_step * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)
            else:
                value = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out))
        grads = tape.gradient(value, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return value

    x_eval, y_eval = batches.evaluation(eval_examples)
    curve: dict = {"step": [], "train_loss": []}
    started = time.perf_counter()
    window: list[float] = []
    solved_at = None
    step = 0
    for step in range(1, steps + 1):
        x, y = batches.batch(step - 1)
        window.append(float(step_fn(tf.constant(x), tf.constant(y))))
        if step % eval_every == 0 or step == steps:
            metrics = evaluate(model, x_eval, y_eval, loss)
            if probe is not None:
                metrics.update(probe(model))
            curve["step"].append(step)
            curve["train_loss"].append(float(np.mean(window)))
            for key, value in metrics.items():
                curve.setdefault(key, []).append(value)
            window = []
            if solved is not None and solved(metrics):
                solved_at = step
                break
    return {"curve": curve, "solved_at": solved_at, "steps": step, "seconds": round(time.perf_counter() - started, 1)}
