"""rnnkit.training: clipping, the non-finite guard, atomic checkpoints, resume, strategies, CLI."""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from rnnkit.tasks import make_task
from rnnkit.training import (
    HISTORY_KEYS,
    CheckpointStore,
    ModelSpec,
    NonFiniteGuard,
    Trainer,
    TrainingDivergedError,
    make_optimizer,
    train,
)
from rnnkit.training import checkpoint as checkpoint_module
from rnnkit.training.cli import add_diagnose_parser, add_train_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ModelSpec(cell="lstm", units=8, layers=2, connection="residual", bidirectional=True)


def tiny_regressor():
    inputs = keras.Input((4, 3))
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.SimpleRNN(4)(inputs)))


def small_task():
    return make_task("sentiment", train_examples=96, val_examples=32, seed=1, length=6)


def global_norm(arrays):
    return float(np.sqrt(sum(float(np.sum(np.square(a))) for a in arrays)))


# -- optimizer and clipping ---------------------------------------------------------------------
def test_make_optimizer_clips_by_global_norm_by_default():
    optimizer = make_optimizer()
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert optimizer.global_clipnorm == 1.0 and optimizer.clipnorm is None
    assert make_optimizer("sgd", global_clipnorm=None, clipnorm=0.5).clipnorm == 0.5


def test_make_optimizer_errors_are_pinned():
    with pytest.raises(ValueError, match=r"Argument `name` must be one of \('adam', .*\)\. Received: name='adm'"):
        make_optimizer("adm")
    with pytest.raises(
        ValueError, match=r"Only one of `global_clipnorm`, `clipnorm` and `clipvalue`.*global_clipnorm=None"
    ):
        make_optimizer(clipnorm=0.5)
    with pytest.raises(
        ValueError, match=r"Argument `learning_rate` must be a positive number\. Received: learning_rate=0"
    ):
        make_optimizer(learning_rate=0)
    with pytest.raises(ValueError, match=r"Argument `global_clipnorm` must be a positive number or None\. Received"):
        make_optimizer(global_clipnorm=-1.0)


@pytest.mark.parametrize("clip", [1.0, None])
def test_clipping_bounds_the_applied_sgd_update(tmp_path, clip):
    lr = 0.1
    model = tiny_regressor()
    optimizer = make_optimizer("sgd", learning_rate=lr, global_clipnorm=clip)
    trainer = Trainer(model, optimizer, "regression", tolerance=0.1, store=CheckpointStore(tmp_path), verbose=0)
    x = np.random.default_rng(0).normal(size=(8, 4, 3)).astype("float32")
    y = np.full(8, 1e4, dtype="float32")  # a huge loss, a huge gradient
    before = [w.copy() for w in model.get_weights()]
    record = trainer.train_step(x, y)
    moved = global_norm([a - b for a, b in zip(model.get_weights(), before)])
    assert record["finite"] and record["grad_norm"] > 1e3  # the recorded norm is the pre-clip one
    if clip is None:
        assert not record["clipped"] and moved == pytest.approx(lr * record["grad_norm"], rel=1e-3)
    else:
        assert record["clipped"]
        assert moved <= lr * clip * (1 + 1e-5)
        assert moved == pytest.approx(lr * clip, rel=1e-4)  # clipped to exactly the threshold


# -- the guard ------------------------------------------------------------------------------------
class Poison(keras.callbacks.Callback):
    """Set the first weight to NaN at the given (epoch, batch) points, to blow up the next step.
    Also keeps the weights at every epoch start and batch end (it runs after the guard)."""

    def __init__(self, when):
        super().__init__()
        self.when = set(when)
        self.epoch = None
        self.epoch_starts = []  # (epoch, weights) at each on_epoch_begin
        self.batch_ends = {}  # (epoch, batch) -> weights after the guard ran

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_starts.append((epoch, [w.copy() for w in self.model.get_weights()]))

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends[(self.epoch, batch)] = [w.copy() for w in self.model.get_weights()]
        if (self.epoch, batch) in self.when or ("every", None) in self.when:
            self.when.discard((self.epoch, batch))
            weight = self.model.weights[0]
            weight.assign(np.full(weight.shape, np.nan, dtype="float32"))


def make_trainer(tmp_path, task, callbacks=(), learning_rate=1e-2, max_recoveries=3):
    keras.utils.set_random_seed(0)
    model = TINY.build(task)
    optimizer = make_optimizer("adam", learning_rate=learning_rate)
    return Trainer(
        model,
        optimizer,
        task.kind,
        store=CheckpointStore(tmp_path / "checkpoints", keep=5),
        guard=NonFiniteGuard(lr_factor=0.5, max_recoveries=max_recoveries),
        batch_size=32,
        verbose=0,
        callbacks=callbacks,
    )


def test_guard_restores_last_good_state_halves_lr_and_training_continues(tmp_path):
    task = small_task()  # 96 examples, batches of 32: three steps per epoch
    poison = Poison({(1, 1)})  # after the second batch of the second epoch
    trainer = make_trainer(tmp_path, task, [poison])
    history = trainer.fit(task, 3)

    (event,) = trainer.guard.events
    assert event["epoch"] == 2 and event["step"] == 3 and event["restored_epoch"] == 1
    assert event["loss"] == "nan" and event["grad_norm"] == "nan"
    assert event["learning_rate_before"] == pytest.approx(1e-2) and event["learning_rate_after"] == pytest.approx(5e-3)
    # right after the bad step the model holds exactly the state saved after epoch 1: no update of
    # epoch 2 (the poison included) stayed applied; the epoch went on with the next batch, not rerun
    saved = trainer.store.load(trainer.store.directory / "ckpt-000001.npz")
    for restored, kept in zip(poison.batch_ends[(1, 2)], saved.model_weights):
        np.testing.assert_array_equal(restored, kept)
    assert len([epoch for epoch, _ in poison.epoch_starts if epoch == 1]) == 1
    # optimizer state came back too: 3 steps (epoch 1) + 0 kept of epoch 2 + 3 steps (epoch 3)
    assert int(trainer.optimizer.iterations.numpy()) == 6
    assert len(history.history["loss"]) == 3 and set(history.history) == set(HISTORY_KEYS)
    assert all(np.isfinite(history.history["loss"]))  # the epoch's loss is over its finite steps
    assert history.history["learning_rate"] == pytest.approx([1e-2, 0.5e-2, 0.5e-2])
    assert history.history["recoveries"] == [0, 1, 1]
    assert all(np.isfinite(w).all() for w in trainer.model.get_weights())
    assert not np.array_equal(trainer.model.get_weights()[0], saved.model_weights[0])


def test_guard_stops_after_max_recoveries_with_a_clear_message(tmp_path):
    task = small_task()
    trainer = make_trainer(tmp_path, task, [Poison({("every", None)})], max_recoveries=3)
    with pytest.raises(
        TrainingDivergedError, match=r"Training stopped: non-finite step .* after 3 recoveries \(max_recoveries=3\)"
    ):
        trainer.fit(task, 2)
    assert [e["learning_rate_after"] for e in trainer.guard.events] == pytest.approx([5e-3, 2.5e-3, 1.25e-3])


def test_guard_argument_errors_are_pinned():
    with pytest.raises(ValueError, match=r"Argument `lr_factor` must be a float in \(0, 1\)\. Received: lr_factor=2"):
        NonFiniteGuard(lr_factor=2)
    with pytest.raises(ValueError, match=r"Argument `max_recoveries` must be a non-negative integer\. Received"):
        NonFiniteGuard(max_recoveries=-1)


# -- checkpoints ----------------------------------------------------------------------------------
def test_interrupted_checkpoint_write_leaves_previous_loadable(tmp_path, monkeypatch):
    model = tiny_regressor()
    optimizer = make_optimizer("adam")
    optimizer.build(model.trainable_variables)
    store = CheckpointStore(tmp_path)
    store.save(1, model, optimizer, {"note": "good"})
    good = [w.copy() for w in model.get_weights()]

    def crash_midway(handle, **arrays):  # half a file, then the process "dies"
        handle.write(b"PK\x03\x04 partial zip")
        raise KeyboardInterrupt

    model.set_weights([w + 1.0 for w in good])
    monkeypatch.setattr(checkpoint_module.np, "savez", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        store.save(2, model, optimizer)
    monkeypatch.undo()
    assert [p.name for p in store.paths()] == ["ckpt-000001.npz"]
    assert not list(tmp_path.glob("*.tmp"))  # the partial temp file was removed

    # a hard kill leaves a stray temp file; a damaged final file is skipped too
    (tmp_path / ".ckpt-000002-abc.tmp").write_bytes(b"PK\x03\x04 torn")
    (tmp_path / "ckpt-000003.npz").write_bytes(b"not a zip")
    latest = store.latest()
    assert latest.epoch == 1 and latest.meta["note"] == "good"
    latest.restore(model, optimizer)
    for restored, kept in zip(model.get_weights(), good):
        np.testing.assert_array_equal(restored, kept)


def test_checkpoint_store_keeps_the_newest(tmp_path):
    model = tiny_regressor()
    optimizer = make_optimizer("sgd")
    optimizer.build(model.trainable_variables)
    store = CheckpointStore(tmp_path, keep=2)
    for epoch in range(4):
        store.save(epoch, model, optimizer)
    assert [p.name for p in store.paths()] == ["ckpt-000002.npz", "ckpt-000003.npz"]


# -- train(): outputs, resume ---------------------------------------------------------------------
def test_resume_continues_where_it_stopped(tmp_path):
    task = small_task()
    common = dict(batch_size=32, learning_rate=1e-2, seed=0, verbose=0)
    straight = train(TINY, task, 4, tmp_path / "straight", **common)
    train(TINY, task, 2, tmp_path / "split", **common)  # "stopped" after two epochs
    with pytest.raises(ValueError, match=r"Checkpoints already exist in .*Pass resume=True \(`--resume`\)"):
        train(TINY, task, 4, tmp_path / "split", **common)
    resumed = train(TINY, task, 4, tmp_path / "split", resume=True, **common)

    assert len(resumed.history["loss"]) == 4
    np.testing.assert_allclose(resumed.history["loss"], straight.history["loss"], rtol=1e-5)
    a = keras.saving.load_model(tmp_path / "straight" / "model.keras")
    b = keras.saving.load_model(tmp_path / "split" / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    written = json.loads((tmp_path / "split" / "history.json").read_text())
    assert written["stopped"] is None and written["model"]["bidirectional"] is True
    assert written["history"]["loss"] == resumed.history["loss"]
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] != []


def test_train_argument_errors_are_pinned(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"Argument `distribute` must be one of \('default', 'mirrored', 'multiworker'\)\. Received: distribute='tpu'",
    ):
        train(TINY, "sentiment", 1, tmp_path, distribute="tpu")
    with pytest.raises(
        ValueError,
        match=r"Argument `batch_size` must be an integer >= the number of replicas \(1\)\. Received: batch_size=0",
    ):
        train(TINY, small_task(), 1, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match=r"ModelSpec: keys must be among .* Received unknown keys: \['cells'\]"):
        train({"cells": "lstm"}, small_task(), 1, tmp_path)


# -- command line ---------------------------------------------------------------------------------
def cli(argv):
    parser = argparse.ArgumentParser(prog="rnnkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_diagnose_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_train_and_diagnose(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", "copy", "--lag", "4", "--train-examples", "64", "--val-examples", "16", "--units", "4"]
    assert cli([*argv, "--layers", "1", "--epochs", "1", "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    assert (out / "model.keras").is_file() and (out / "history.json").is_file()
    assert (out / "checkpoints" / "ckpt-000001.npz").is_file()
    assert cli([*argv, "--layers", "1", "--epochs", "2", "--out", str(out), "--resume", "--quiet"]) == 0
    assert len(json.loads((out / "history.json").read_text())["history"]["loss"]) == 2
    assert cli(["train", "--task", "adding", "--lag", "3", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "Task 'adding' takes parameters ('length',). Received: lag=3" in capsys.readouterr().err

    png = tmp_path / "flow.png"
    assert (
        cli(["diagnose", "--length", "12", "--units", "4", "--batch", "2", "--lags", "1,5,10", "--plot", str(png)]) == 0
    )
    printed = capsys.readouterr().out
    assert "simple init" in printed and "gru init" in printed and png.is_file()


# -- strategies (fresh processes) -------------------------------------------------------------------
WORKER = """
import hashlib, json, sys

import keras
import numpy as np

from rnnkit.tasks import make_task
from rnnkit.training import CheckpointStore, ModelSpec, Trainer, make_optimizer, make_strategy, train

distribute, out = sys.argv[1], sys.argv[2]
strategy = make_strategy(distribute, cpu_replicas=2 if distribute == "mirrored" else None)
task = make_task("sentiment", train_examples=64, val_examples=16, seed=1, length=6)
spec = ModelSpec(cell="gru", units=4, layers=2, connection="residual", bidirectional=True)
history = train(spec, task, 2, out, batch_size=16, distribute=strategy, learning_rate=0.05, verbose=0)


# one step with a huge gradient under the same strategy: the update is bounded by lr * threshold
with strategy.scope():
    inputs = keras.Input((4, 3))
    regressor = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.SimpleRNN(4)(inputs)))
    sgd = make_optimizer("sgd", learning_rate=0.1, global_clipnorm=1.0)
step_store = CheckpointStore(out + "/step-" + str(id(strategy)))
trainer = Trainer(regressor, sgd, "regression", tolerance=0.1, strategy=strategy, store=step_store, batch_size=8, verbose=0)
before = [w.copy() for w in regressor.get_weights()]
record = trainer.train_step(np.random.default_rng(0).normal(size=(8, 4, 3)).astype("float32"), np.full(8, 1e4, "float32"))
moved = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(regressor.get_weights(), before))))
weights = regressor.get_weights()
print("RESULT " + json.dumps({
    "replicas": history.params["replicas"],
    "loss": history.history["loss"],
    "grad_norm": record["grad_norm"],
    "moved": moved,
    "digest": hashlib.sha256(b"".join(np.round(w, 5).tobytes() for w in weights)).hexdigest(),
}), flush=True)
"""


def worker_script(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return script


def run_workers(script, argv_list, env_list, timeout=240):
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for argv, env in zip(argv_list, env_list)
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append((proc.returncode, out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    results = []
    for code, out in outputs:
        assert code == 0, out[-3000:]
        (line,) = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        results.append(json.loads(line[len("RESULT ") :]))
    return results


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_trains(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    (result,) = run_workers(worker_script(tmp_path), [["mirrored", str(tmp_path / "out")]], [env])
    assert result["replicas"] == 2
    assert len(result["loss"]) == 2 and all(np.isfinite(result["loss"]))
    assert result["grad_norm"] > 1e3 and result["moved"] == pytest.approx(0.1, rel=1e-4)  # global, not per replica
    assert (tmp_path / "out" / "model.keras").is_file()


@pytest.mark.slow
def test_multiworker_strategy_two_processes_on_loopback(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    envs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        envs.append(env)
    out = tmp_path / "out"
    results = run_workers(worker_script(tmp_path), [["multiworker", str(out)]] * 2, envs)
    assert [r["replicas"] for r in results] == [2, 2]
    assert results[0]["digest"] == results[1]["digest"]  # both workers hold the same weights
    for result in results:
        assert result["grad_norm"] > 1e3 and result["moved"] == pytest.approx(0.1, rel=1e-4)
    assert results[0]["loss"] == results[1]["loss"] and all(np.isfinite(results[0]["loss"]))
    assert (out / "model.keras").is_file()  # the chief writes the shared outputs ...
    assert (out / ".workers" / "1" / "ckpt-000002.npz").is_file()  # ... the other worker its own checkpoints
