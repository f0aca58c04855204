"""The Keras-native training pieces inside `model.fit`: the recording optimizer,
`GradientNormHistory`, `NonFiniteGuard` (and that `train()` records the same recoveries)."""

import dataclasses
import json
import pathlib

import keras
import numpy as np
import pytest

from rnnkit.tasks import make_task
from rnnkit.training import (
    GradientNormHistory,
    ModelSpec,
    NonFiniteGuard,
    TrainingDivergedError,
    make_optimizer,
    train,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = ModelSpec(cell="lstm", units=8, layers=1, connection="none")
BATCH = 32


def small_task(poison_index=None):
    """96 training examples (three batches of 32); optionally one example full of NaN."""
    task = make_task("sentiment", train_examples=96, val_examples=32, seed=1, length=6)
    if poison_index is None:
        return task
    x = task.x_train.copy()
    x[poison_index] = np.nan
    return dataclasses.replace(task, x_train=x)


def compiled(task, optimizer):
    keras.utils.set_random_seed(0)
    model = SPEC.build(task)
    model.compile(optimizer=optimizer, loss={"probs": "sparse_categorical_crossentropy"})
    return model


class FiniteWeights(keras.callbacks.Callback):
    """Runs after the guard: whether every weight was finite at every batch end."""

    def __init__(self):
        super().__init__()
        self.checked = 0
        self.all_finite = True

    def on_train_batch_end(self, batch, logs=None):
        self.checked += 1
        self.all_finite &= all(np.isfinite(w).all() for w in self.model.get_weights())


class ReferenceNorms(keras.callbacks.Callback):
    """Before each step (fit with shuffle=False), the pre-clip global gradient norm of the batch it
    is about to train on, computed here with a tape from the model's current weights."""

    def __init__(self, task):
        super().__init__()
        self.task = task
        self.norms = []

    def on_train_batch_begin(self, batch, logs=None):
        import tensorflow as tf

        x = self.task.x_train[batch * BATCH : (batch + 1) * BATCH]
        y = self.task.y_train[batch * BATCH : (batch + 1) * BATCH]
        with tf.GradientTape() as tape:
            probs = self.model(x, training=True)["probs"]
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.norms.append(float(np.sqrt(sum(float(np.sum(np.square(g))) for g in grads))))


class Records(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(logs["grad_norm"])


# -- the recording optimizer and GradientNormHistory ---------------------------------------------------
def test_fit_history_holds_the_pre_clip_gradient_norms():
    task = small_task()
    reference = ReferenceNorms(task)
    probe = compiled(task, make_optimizer("sgd", learning_rate=0.5, global_clipnorm=None))
    first = ReferenceNorms(task)  # same seed, same initial weights as `model`
    first.set_model(probe)
    first.on_train_batch_begin(0)
    clip = first.norms[0] * 0.999  # the first step clips; later ones may or may not
    model = compiled(task, make_optimizer("sgd", learning_rate=0.5, global_clipnorm=clip))
    records = Records()
    history = model.fit(
        task.x_train,
        {"probs": task.y_train},
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[reference, GradientNormHistory(), records],
    )
    np.testing.assert_allclose(records.seen, reference.norms, rtol=1e-4)
    logs = history.history
    for epoch in range(2):
        norms = reference.norms[3 * epoch : 3 * epoch + 3]
        assert logs["grad_norm_mean"][epoch] == pytest.approx(np.mean(norms), rel=1e-4)
        assert logs["grad_norm_max"][epoch] == pytest.approx(np.max(norms), rel=1e-4)
        assert logs["clipped_fraction"][epoch] == pytest.approx(np.mean([n > clip for n in norms]))
    assert logs["clipped_fraction"][0] > 0


def test_gradient_norm_history_needs_a_recording_optimizer():
    task = small_task()
    model = compiled(task, keras.optimizers.SGD(0.1))
    with pytest.raises(TypeError, match=r"GradientNormHistory needs an optimizer that records gradient norms .*SGD"):
        model.fit(task.x_train, {"probs": task.y_train}, epochs=1, verbose=0, callbacks=[GradientNormHistory()])


def test_recording_optimizer_saves_and_loads_with_the_model(tmp_path):
    task = small_task()
    model = compiled(task, make_optimizer("adam", learning_rate=1e-3, global_clipnorm=0.5))
    model.fit(task.x_train, {"probs": task.y_train}, batch_size=BATCH, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is type(model.optimizer) and loaded.optimizer.global_clipnorm == 0.5
    np.testing.assert_array_equal(loaded.optimizer.gradient_record.numpy(), model.optimizer.gradient_record.numpy())


# -- NonFiniteGuard in model.fit --------------------------------------------------------------------
def fit_guarded(task, epochs, max_recoveries=3, model=None):
    model = model or compiled(task, make_optimizer("adam", learning_rate=1e-2))
    guard = NonFiniteGuard(lr_factor=0.5, max_recoveries=max_recoveries)
    checker = FiniteWeights()
    history = model.fit(
        task.x_train,
        {"probs": task.y_train},
        validation_data=(task.x_val, {"probs": task.y_val}),
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[GradientNormHistory(), guard, checker],
    )
    return model, guard, checker, history


def test_guard_in_fit_recovers_from_a_nan_batch_and_ends_finite():
    task = small_task(poison_index=40)  # in the second batch of every epoch
    model, guard, checker, history = fit_guarded(task, epochs=3)

    assert [(e["epoch"], e["step"], e["restored_epoch"]) for e in guard.events] == [(1, 2, 0), (2, 2, 1), (3, 2, 2)]
    assert all(e["loss"] == "nan" and e["grad_norm"] == "nan" for e in guard.events)
    assert [e["learning_rate_after"] for e in guard.events] == pytest.approx([5e-3, 2.5e-3, 1.25e-3])
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1.25e-3)
    # no non-finite update was ever left applied, and training ends with finite weights
    assert checker.checked == 9 and checker.all_finite
    assert all(np.isfinite(w).all() for w in model.get_weights())
    logs = history.history
    assert logs["recoveries"] == [1, 2, 3]
    assert logs["learning_rate"] == pytest.approx([5e-3, 2.5e-3, 1.25e-3])
    for key in ("loss", "val_loss", "grad_norm_mean", "grad_norm_max", "clipped_fraction"):
        assert len(logs[key]) == 3 and all(np.isfinite(logs[key])), key
    # each restore dropped the epoch's first step too: one kept step (the third batch) per epoch
    assert int(model.optimizer.iterations.numpy()) == 3


def test_guard_in_fit_stops_after_max_recoveries_with_finite_weights():
    task = small_task(poison_index=40)
    model = compiled(task, make_optimizer("adam", learning_rate=1e-2))
    with pytest.raises(
        TrainingDivergedError,
        match=r"Training stopped: non-finite step at epoch 2, step 2 .* after 1 recoveries \(max_recoveries=1\)",
    ):
        fit_guarded(task, epochs=3, max_recoveries=1, model=model)
    # the model is left in its last good state (after epoch 1), with the one lowered rate
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(5e-3)


def test_guard_rejects_a_learning_rate_schedule():
    task = small_task()
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.9)
    model = compiled(task, make_optimizer("adam", learning_rate=1e-2))
    model.optimizer._learning_rate = schedule
    with pytest.raises(
        ValueError, match=r"NonFiniteGuard lowers a constant learning rate; the optimizer has a schedule"
    ):
        model.fit(task.x_train, {"probs": task.y_train}, epochs=1, verbose=0, callbacks=[NonFiniteGuard()])


def test_fit_guard_and_train_record_the_same_recoveries(tmp_path):
    task = small_task(poison_index=40)
    _, guard, _, _ = fit_guarded(task, epochs=3)
    trained = train(SPEC, task, 3, tmp_path / "run", batch_size=BATCH, learning_rate=1e-2, shuffle=False, verbose=0)
    written = json.loads((tmp_path / "run" / "history.json").read_text())
    assert written["recovery_events"] == guard.events
    assert trained.history["recoveries"] == [1, 2, 3]


# -- MirroredStrategy ------------------------------------------------------------------------------
MIRRORED_WORKER = r"""
import json, sys
import numpy as np
import tensorflow as tf
from rnnkit.training.strategy import make_strategy
strategy = make_strategy("mirrored", cpu_replicas=2)
import keras
sys.path.insert(0, "tests")
from test_training_fit import BATCH, FiniteWeights, ReferenceNorms, Records, SPEC, small_task
from rnnkit.training import GradientNormHistory, NonFiniteGuard, make_optimizer

task = small_task(poison_index=40)
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = SPEC.build(task)
    model.compile(optimizer=make_optimizer("adam", learning_rate=1e-2), loss={"probs": "sparse_categorical_crossentropy"})
reference, records, guard, checker = ReferenceNorms(task), Records(), NonFiniteGuard(max_recoveries=3), FiniteWeights()
history = model.fit(task.x_train, {"probs": task.y_train}, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                    callbacks=[reference, GradientNormHistory(), guard, records, checker])
print("RESULT " + json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "events": guard.events,
    "seen": records.seen,
    "reference": reference.norms,
    "all_finite": bool(checker.all_finite) and all(bool(np.isfinite(w).all()) for w in model.get_weights()),
    "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
}))
"""


@pytest.mark.slow
def test_fit_under_mirrored_strategy_records_the_global_norm_and_recovers(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(MIRRORED_WORKER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert result["replicas"] == 2
    # the recorded norm is that of the whole global batch (both replicas' halves), step by step
    finite = [(s, r) for s, r in zip(result["seen"], result["reference"]) if np.isfinite(s)]
    assert len(finite) == 4
    np.testing.assert_allclose([s for s, _ in finite], [r for _, r in finite], rtol=1e-4)
    assert [(e["epoch"], e["step"]) for e in result["events"]] == [(1, 2), (2, 2)]
    assert result["all_finite"] and result["history"]["recoveries"] == [1, 2]
    assert all(np.isfinite(result["history"]["loss"])) and all(np.isfinite(result["history"]["grad_norm_mean"]))
