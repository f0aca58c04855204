"""`Trainer`: one custom training loop for every `tf.distribute` strategy.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585). So
rnnkit runs its own step with ``strategy.run`` over a distributed dataset, the same code under
the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy:

    on each replica r (batch B_r):   s_r = sum_{n in B_r} loss_n,   g_r = d s_r / d w
    all-reduce (one collective):     g = sum_r g_r / N,   loss = sum_r s_r / N,   N = sum_r |B_r|
    optimizer.apply(g)               records the pre-clip global norm ||g|| and whether it
                                     clipped, and applies nothing unless ||g|| is finite
                                     (a non-finite loss makes g non-finite here)

``g`` is the gradient of the mean loss over the whole global batch (partial batches included),
so clipping and the recorded norm mean the same thing for any number of replicas. The
statistics and the non-finite guard are the Keras callbacks `GradientNormHistory` and
`NonFiniteGuard`, the same ones a ``model.fit`` user adds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from rnnkit.tasks import Task
from rnnkit.training.checkpoint import CheckpointStore
from rnnkit.training.guard import GradientNormHistory, NonFiniteGuard, check_constant_learning_rate
from rnnkit.training.optimizer import current_learning_rate, with_gradient_record

logger = logging.getLogger("rnnkit.training")

HISTORY_KEYS = (
    "loss",
    "accuracy",
    "grad_norm_mean",
    "grad_norm_max",
    "clipped_fraction",
    "learning_rate",
    "recoveries",
    "val_loss",
    "val_accuracy",
)


def _single_output(outputs):
    """The model's one output tensor (a dict or list of one entry is unwrapped)."""
    if isinstance(outputs, dict):
        values = list(outputs.values())
    elif isinstance(outputs, (list, tuple)):
        values = list(outputs)
    else:
        return outputs
    if len(values) != 1:
        raise ValueError(f"Trainer: the model must have exactly one output, got {len(values)}.")
    return values[0]


class _EpochLogs(keras.callbacks.Callback):
    """Keeps the epoch logs as the callbacks before it left them."""

    def __init__(self):
        super().__init__()
        self.logs: dict = {}

    def on_epoch_end(self, epoch, logs=None):
        self.logs = dict(logs or {})


class Trainer:
    """Train ``model`` (built, with its variables created under ``strategy.scope()``).

    ``kind`` is ``"classification"`` (outputs are class probabilities, sparse categorical
    cross-entropy, accuracy = argmax hits) or ``"regression"`` (one output unit, squared
    error, accuracy = |prediction - target| < ``tolerance``). ``batch_size`` is the global
    batch, split over the replicas; ``shuffle`` reorders the training examples every epoch
    (reproducibly from ``seed`` and the epoch). Checkpoints go to ``store`` at the end of every
    epoch (and once before training); ``guard`` handles non-finite steps (``None`` disables
    it: such steps are then skipped, not applied). ``optimizer`` should come from
    `make_optimizer`; an unbuilt Keras optimizer is replaced by its recording twin.
    ``callbacks`` are Keras callbacks, called after rnnkit's `GradientNormHistory` and the
    guard; setting ``model.stop_training = True`` stops after the epoch.
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        kind: str = "classification",
        *,
        store: CheckpointStore,
        tolerance: float | None = None,
        strategy: tf.distribute.Strategy | None = None,
        guard: NonFiniteGuard | None = None,
        batch_size: int = 64,
        seed: int = 0,
        shuffle: bool = True,
        verbose: int = 1,
        show_progress: bool = True,
        callbacks: Sequence[keras.callbacks.Callback] = (),
    ):
        if kind not in ("classification", "regression"):
            raise ValueError(
                f"Argument `kind` must be one of ('classification', 'regression'). Received: kind={kind!r}"
            )
        if kind == "regression" and tolerance is None:
            raise ValueError("Argument `tolerance` is required when kind='regression'. Received: tolerance=None")
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < replicas:
            raise ValueError(
                f"Argument `batch_size` must be an integer >= the number of replicas ({replicas}). "
                f"Received: batch_size={batch_size!r}"
            )
        optimizer = with_gradient_record(optimizer)
        if guard is not None:
            check_constant_learning_rate(optimizer)
            guard.optimizer = optimizer
        self.model = model
        self.optimizer = optimizer
        self.kind = kind
        self.tolerance = tolerance
        self.store = store
        self.guard = guard
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.verbose = verbose
        self.show_progress = show_progress
        internal = [GradientNormHistory(optimizer)] + ([guard] if guard is not None else [])
        self._epoch_logs = _EpochLogs()  # last: CallbackList hands callbacks a copy of the logs
        self.callbacks = keras.callbacks.CallbackList(internal + list(callbacks) + [self._epoch_logs], model=model)
        self.variables = list(model.trainable_variables)
        if not optimizer.built:
            with self.strategy.scope():
                optimizer.build(self.variables)
        self._train_fn = tf.function(self._distributed_train_step, reduce_retracing=True)
        self._eval_fn = tf.function(self._distributed_eval_step, reduce_retracing=True)

    # -- the step ----------------------------------------------------------------------------
    def _per_example(self, y, outputs):
        """(per-example loss, per-example hit) as float32 vectors."""
        out = _single_output(outputs)
        if self.kind == "classification":
            loss = keras.losses.sparse_categorical_crossentropy(y, out)
            hits = ops.equal(ops.argmax(out, axis=-1), ops.cast(y, "int64"))
        else:
            prediction = ops.reshape(out, (-1,))
            target = ops.cast(y, prediction.dtype)
            loss = ops.square(prediction - target)
            hits = ops.less(ops.abs(prediction - target), self.tolerance)
        return ops.cast(loss, "float32"), ops.cast(hits, "float32")

    def _replica_train_step(self, x, y):
        with tf.GradientTape() as tape:
            loss, hits = self._per_example(y, self.model(x, training=True))
            count = ops.cast(ops.shape(loss)[0], "float32")
            objective = ops.sum(loss)
            if self.model.losses:  # regularizers: mean loss + R, written as a sum over examples
                objective = objective + ops.cast(ops.sum(ops.stack(self.model.losses)), "float32") * count
        grads = tape.gradient(objective, self.variables)
        grads = [ops.zeros_like(v) if g is None else ops.cast(g, "float32") for g, v in zip(grads, self.variables)]
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, [*grads, ops.sum(loss), count, ops.sum(hits)])

    def _distributed_train_step(self, x, y):
        reduced = self.strategy.run(self._replica_train_step, args=(x, y))
        # Every replica holds the same all-reduced values: take the first local copy.
        reduced = [self.strategy.experimental_local_results(value)[0] for value in reduced]
        grads, (loss_sum, count, hits) = reduced[:-3], reduced[-3:]
        denominator = tf.maximum(count, 1.0)
        loss = loss_sum / denominator
        # A non-finite loss poisons the gradient, so the optimizer skips the step and records it.
        poison = tf.where(tf.math.is_finite(loss), 0.0, math.nan)
        grads = [g / denominator + poison for g in grads]
        self.optimizer.apply(grads, self.variables)
        norm, clipped = self.optimizer.gradient_record[0], self.optimizer.gradient_record[1]
        finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))
        return {"loss": loss, "grad_norm": norm, "hits": hits, "count": count, "finite": finite, "clipped": clipped > 0}

    def _replica_eval_step(self, x, y):
        loss, hits = self._per_example(y, self.model(x, training=False))
        count = ops.cast(ops.shape(loss)[0], "float32")
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, [ops.sum(loss), count, ops.sum(hits)])

    def _distributed_eval_step(self, x, y):
        reduced = self.strategy.run(self._replica_eval_step, args=(x, y))
        return [self.strategy.experimental_local_results(value)[0] for value in reduced]

    def train_step(self, x, y) -> dict:
        """One global batch (NumPy arrays, at most ``batch_size`` examples), distributed over the
        replicas; returns the step record (loss, grad_norm, hits, count, finite, clipped)."""
        if not 0 < len(x) <= self.batch_size:
            raise ValueError(
                f"Trainer.train_step: `x` must hold 1 to batch_size={self.batch_size} examples. Received: {len(x)}"
            )
        (batch,) = list(self._dataset(np.asarray(x), np.asarray(y), shuffle_epoch=None, drop_remainder=False))
        return self._as_python_values(self._train_fn(*batch))

    @staticmethod
    def _as_python_values(record: dict) -> dict:
        return {k: (bool(v) if k in ("finite", "clipped") else float(v)) for k, v in record.items()}

    # -- data ----------------------------------------------------------------------------------
    def _dataset(self, x: np.ndarray, y: np.ndarray, shuffle_epoch: int | None, drop_remainder: bool):
        """A distributed dataset of global batches; shuffled reproducibly per (seed, epoch)."""
        if shuffle_epoch is not None and self.shuffle:
            order = np.random.default_rng([self.seed, shuffle_epoch]).permutation(len(x))
            x, y = x[order], y[order]
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(self.batch_size, drop_remainder=drop_remainder)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def _steps(self, examples: int, drop_remainder: bool) -> int:
        return examples // self.batch_size if drop_remainder else math.ceil(examples / self.batch_size)

    # -- loops ---------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Mean loss and accuracy over all examples."""
        totals = np.zeros(3)
        for batch in self._dataset(np.asarray(x), np.asarray(y), shuffle_epoch=None, drop_remainder=False):
            totals += [float(v) for v in self._eval_fn(*batch)]
        loss_sum, count, hits = totals
        return {"loss": loss_sum / max(count, 1.0), "accuracy": hits / max(count, 1.0)}

    def _run_epoch(self, task: Task, epoch: int, epochs: int) -> dict:
        """Train one epoch; return its mean loss and accuracy over the finite steps."""
        drop = self.strategy.num_replicas_in_sync > 1  # no replica ever gets an empty batch
        steps = self._steps(len(task.x_train), drop)
        if steps < 1:
            raise ValueError(
                f"Argument `batch_size` ({self.batch_size}) exceeds the {len(task.x_train)} training examples."
            )
        totals = np.zeros(3)
        progress = None
        if self.verbose and self.show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=True)
        try:
            for step, batch in enumerate(self._dataset(task.x_train, task.y_train, epoch, drop)):
                self.callbacks.on_train_batch_begin(step)
                record = self._as_python_values(self._train_fn(*batch))
                running = totals + [record["loss"] * record["count"], record["count"], record["hits"]]
                logs = {"loss": running[0] / running[1], "accuracy": running[2] / running[1]}
                if record["finite"]:
                    totals = running
                elif self.guard is None:
                    logger.warning("Non-finite step at epoch %d, step %d skipped (no guard).", epoch + 1, step + 1)
                self.callbacks.on_train_batch_end(step, logs)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(
                        loss=f"{logs['loss']:.4f}", acc=f"{logs['accuracy']:.3f}", gnorm=f"{record['grad_norm']:.3g}"
                    )
        finally:
            if progress is not None:
                progress.close()
        if totals[1] == 0:  # no finite step
            return {"loss": math.nan, "accuracy": math.nan}
        return {"loss": totals[0] / totals[1], "accuracy": totals[2] / totals[1]}

    def learning_rate(self) -> float:
        return current_learning_rate(self.optimizer)

    def fit(
        self, task: Task, epochs: int, *, resume: bool = False, meta: dict | None = None
    ) -> keras.callbacks.History:
        """Train until ``epochs`` epochs are complete; return a Keras ``History``.

        ``history.history[key]`` holds one value per completed epoch for each of
        ``HISTORY_KEYS``: mean training loss and accuracy, mean and max of the pre-clip global
        gradient norm, fraction of steps whose gradient was clipped, learning rate, cumulative
        guard recoveries, validation loss and accuracy.

        Without a checkpoint in ``store``, state 0 is saved first. With
        one, ``resume=True`` restores weights, optimizer state, history, recovery count and
        learning rate and continues after its epoch; ``resume=False`` refuses to overwrite it.
        """
        if task.kind != self.kind:
            raise ValueError(f"Trainer kind {self.kind!r} does not fit task '{task.name}' of kind {task.kind!r}.")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"Argument `epochs` must be a positive integer. Received: epochs={epochs!r}")
        meta = dict(meta or {})
        history: dict[str, list] = {key: [] for key in HISTORY_KEYS}
        latest = self.store.latest()
        if latest is not None and not resume:
            raise ValueError(
                f"Checkpoints already exist in {self.store.directory} (latest: {latest.path.name}). "
                "Pass resume=True (`--resume`) to continue from it, or use an empty output directory."
            )
        if latest is not None:
            with self.strategy.scope():
                latest.restore(self.model, self.optimizer)
            history = {key: list(latest.meta.get("history", {}).get(key, [])) for key in HISTORY_KEYS}
            if self.guard is not None:
                self.guard.recoveries = int(latest.meta.get("recoveries", 0))
                self.guard.events = list(latest.meta.get("recovery_events", []))
            epoch = latest.epoch
            logger.info("Resuming from %s (after epoch %d).", latest.path.name, epoch)
        else:
            if resume:
                logger.info("No checkpoint in %s; starting from scratch.", self.store.directory)
            epoch = 0
            self._save(0, history, meta)

        self.model.stop_training = False
        self.callbacks.on_train_begin()
        while epoch < epochs:
            self.callbacks.on_epoch_begin(epoch)
            logs = self._run_epoch(task, epoch, epochs)
            val = self.evaluate(task.x_val, task.y_val)
            logs.update(learning_rate=self.learning_rate(), val_loss=val["loss"], val_accuracy=val["accuracy"])
            # GradientNormHistory adds the gradient statistics, the guard `recoveries`.
            self.callbacks.on_epoch_end(epoch, logs)
            logs = {"recoveries": 0, **self._epoch_logs.logs}
            for key in HISTORY_KEYS:
                history[key].append(float(logs[key]))
            epoch += 1
            self._save(epoch, history, meta)
            if self.verbose:
                logger.info("epoch %d/%d: %s", epoch, epochs, ", ".join(f"{k}={logs[k]:.4g}" for k in HISTORY_KEYS))
            if self.model.stop_training:
                break
        self.callbacks.on_train_end()
        result = keras.callbacks.History()
        result.history = history
        result.epoch = list(range(len(history["loss"])))
        result.params = {
            "epochs": epochs,
            "batch_size": self.batch_size,
            "replicas": self.strategy.num_replicas_in_sync,
        }
        return result

    def _save(self, epoch: int, history: dict, meta: dict) -> None:
        record = {
            **meta,
            "history": history,
            "learning_rate": self.learning_rate(),
            "recoveries": self.guard.recoveries if self.guard is not None else 0,
            "recovery_events": self.guard.events if self.guard is not None else [],
        }
        self.store.save(epoch, self.model, self.optimizer, record)
