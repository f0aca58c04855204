"""Train-step time of rnnkit layers against their keras.layers twins, in the same run, and
the cost of rnnkit's training callbacks inside `model.fit`.

    .venv/bin/python bench/train_step.py [--quick] [--json out.json]

Part 1: each row builds the same model (Input -> recurrent layer -> Dense) twice, once with
the rnnkit layer and once with the keras.layers twin, copies the weights, compiles both the
same way (Adam, MSE, jit_compile=False) and times `train_on_batch` in interleaved rounds
(median of per-round means), so machine noise hits both sides alike. Ratio = rnnkit / Keras
(lower is better; target <= 1.2).

Part 2: one rnnkit LSTM model, compiled with `make_optimizer("adam")`, runs one `model.fit`
epoch per sample with ``callbacks=[GradientNormHistory(), NonFiniteGuard()]`` ("on") and with
no callbacks ("off"), interleaved; a third variant uses plain ``keras.optimizers.Adam`` with
the same global clipping (the recording optimizer's own cost). Overhead = on / off - 1
(target <= 5 %). Per-step time = epoch time / steps. Because that difference of two epoch
times is noisy on a shared machine, the callbacks' own per-step work (both callbacks' batch-end
hooks, called directly) is timed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from rnnkit import layers as rk  # noqa: E402
from rnnkit.training import GradientNormHistory, NonFiniteGuard, make_optimizer  # noqa: E402

KINDS = {
    "LSTM": (rk.LSTM, keras.layers.LSTM),
    "GRU": (rk.GRU, keras.layers.GRU),
    "SimpleRNN": (rk.SimpleRNN, keras.layers.SimpleRNN),
}


def build(layer_cls, units: int, features: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, features))
    out = keras.layers.Dense(1)(layer_cls(units)(inp))
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=False)
    return model


def time_pair(kind: str, batch: int, steps: int, features: int, units: int, rounds: int, per_round: int) -> dict:
    ours_cls, theirs_cls = KINDS[kind]
    ours = build(ours_cls, units, features, 0)
    theirs = build(theirs_cls, units, features, 0)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, steps, features)).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")
    for model in (ours, theirs):  # trace and warm up
        for _ in range(3):
            model.train_on_batch(x, y)
    samples: dict[str, list[float]] = {"rnnkit": [], "keras": []}
    for _ in range(rounds):
        for name, model in (("rnnkit", ours), ("keras", theirs)):
            start = time.perf_counter()
            for _ in range(per_round):
                model.train_on_batch(x, y)
            samples[name].append((time.perf_counter() - start) / per_round * 1e3)
    ms_ours = statistics.median(samples["rnnkit"])
    ms_theirs = statistics.median(samples["keras"])
    return {
        "layer": kind,
        "batch": batch,
        "time": steps,
        "features": features,
        "units": units,
        "rnnkit_ms": round(ms_ours, 3),
        "keras_ms": round(ms_theirs, 3),
        "ratio": round(ms_ours / ms_theirs, 3),
    }


def time_fit_callbacks(batch: int, steps: int, features: int, units: int, batches: int, rounds: int) -> dict:
    """Per-step ms of one model.fit epoch: callbacks on, off, and plain Keras Adam (no callbacks)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * batches, steps, features)).astype("float32")
    y = rng.normal(size=(batch * batches, 1)).astype("float32")

    def model_with(optimizer) -> keras.Model:
        keras.utils.set_random_seed(0)
        inp = keras.Input((None, features))
        model = keras.Model(inp, keras.layers.Dense(1)(rk.LSTM(units)(inp)))
        model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
        return model

    variants = {
        "callbacks_on": (model_with(make_optimizer("adam", learning_rate=1e-3)), True),
        "callbacks_off": (model_with(make_optimizer("adam", learning_rate=1e-3)), False),
        "keras_adam": (model_with(keras.optimizers.Adam(1e-3, global_clipnorm=1.0)), False),
    }

    def epoch(model, with_callbacks):
        callbacks = [GradientNormHistory(), NonFiniteGuard()] if with_callbacks else []
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        return (time.perf_counter() - start) / batches * 1e3

    for model, with_callbacks in variants.values():  # trace and warm up
        epoch(model, with_callbacks)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (model, with_callbacks) in variants.items():
            samples[name].append(epoch(model, with_callbacks))
    ms = {name: statistics.median(values) for name, values in samples.items()}
    # The callbacks' own work per step, timed directly (steadier than a difference of two noisy epochs).
    model = variants["callbacks_on"][0]
    history, guard = GradientNormHistory(), NonFiniteGuard()
    for callback in (history, guard):
        callback.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    history.on_epoch_begin(0)
    calls = 2000
    start = time.perf_counter()
    for step in range(calls):
        history.on_train_batch_end(step, {"loss": 0.5})
        guard.on_train_batch_end(step, {"loss": 0.5})
    callback_ms = (time.perf_counter() - start) / calls * 1e3
    return {
        "batch": batch,
        "time": steps,
        "features": features,
        "units": units,
        "steps_per_epoch": batches,
        **{f"{name}_ms": round(value, 3) for name, value in ms.items()},
        "callback_overhead": round(ms["callbacks_on"] / ms["callbacks_off"] - 1, 4),
        "callback_work_ms": round(callback_ms, 4),
        "callback_work_share": round(callback_ms / ms["callbacks_off"], 4),
        "recording_optimizer_overhead": round(ms["callbacks_off"] / ms["keras_adam"] - 1, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small size, few rounds (smoke run)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.quick:
        sizes, rounds, per_round = [(8, 20, 16, 32)], 2, 3
    else:
        sizes, rounds, per_round = [(32, 50, 32, 64), (32, 100, 32, 128)], 5, 5
    rows = []
    print(f"{'layer':<10}{'B':>4}{'T':>5}{'F':>4}{'H':>5}{'rnnkit ms':>11}{'keras ms':>10}{'ratio':>7}")
    for kind in KINDS:
        for batch, steps, features, units in sizes:
            row = time_pair(kind, batch, steps, features, units, rounds, per_round)
            rows.append(row)
            print(
                f"{kind:<10}{batch:>4}{steps:>5}{features:>4}{units:>5}"
                f"{row['rnnkit_ms']:>11.2f}{row['keras_ms']:>10.2f}{row['ratio']:>7.2f}"
            )
    worst = max(row["ratio"] for row in rows)
    print(f"worst ratio rnnkit/keras: {worst:.2f} (target <= 1.2)")

    fit_size, fit_batches, fit_rounds = ((8, 20, 16, 32), 8, 3) if args.quick else ((32, 50, 32, 64), 20, 7)
    fit_row = time_fit_callbacks(*fit_size, batches=fit_batches, rounds=fit_rounds)
    print()
    print("model.fit, rnnkit LSTM, ms per step (median of interleaved one-epoch rounds):")
    print(
        f"  B={fit_row['batch']} T={fit_row['time']} F={fit_row['features']} H={fit_row['units']}, "
        f"{fit_row['steps_per_epoch']} steps/epoch"
    )
    print(f"  callbacks on  (GradientNormHistory + NonFiniteGuard): {fit_row['callbacks_on_ms']:.2f}")
    print(f"  callbacks off (same recording optimizer):             {fit_row['callbacks_off_ms']:.2f}")
    print(f"  plain keras.optimizers.Adam, no callbacks:            {fit_row['keras_adam_ms']:.2f}")
    print(f"  callback overhead: {fit_row['callback_overhead']:+.1%} (target <= 5 %)")
    print(
        f"  callbacks' own work per step, timed directly: {fit_row['callback_work_ms']:.3f} ms "
        f"({fit_row['callback_work_share']:.1%} of a step)"
    )
    print(f"  recording optimizer vs plain Adam: {fit_row['recording_optimizer_overhead']:+.1%}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "fit_callbacks": fit_row, "keras": keras.__version__}, handle, indent=2)


if __name__ == "__main__":
    main()
