"""Inference latency of rnnkit's ONNX export against what a user gets without rnnkit.

    .venv/bin/python bench/export_latency.py [--quick] [--threads 1,2] [--json out.json]

For each model (LSTM, GRU, bidirectional LSTM, 2-layer residual LSTM stack; with and without
a Masking layer) the same weights are run, in one process, by:

- ``rnnkit``    : ONNX Runtime on rnnkit's export (fused LSTM/GRU ops, masks honoured);
- ``tf2onnx``   : ONNX Runtime on the keras.layers twin exported with ``model.export`` and then
                  ``python -m tf2onnx.convert --saved-model`` (the usual path without rnnkit);
- ``savedmodel``: the twin's TF SavedModel ``serve`` signature;
- ``predict``   : ``model.predict_on_batch`` on the Keras model;
- ``torch``     : ``nn.LSTM``/``nn.GRU`` eager with the same weights, where PyTorch is installed
                  (unmasked LSTM/GRU/bi-LSTM rows only);
- ``int8``      : ONNX Runtime on rnnkit's ``model.int8.onnx`` (``rnnkit export --quantize int8``:
                  DynamicQuantizeLSTM / MatMulInteger; GRU stays float32);
- ``bare op``   : (batch 64 row) a graph holding only the fused op with the same weights.

``--threads 1,2``: every row runs once per thread count; ONNX Runtime gets that many intra-op
threads and PyTorch ``torch.set_num_threads`` the same number (printed in the table; TensorFlow
keeps its own pools). Times are medians in ms; ratios are "other / rnnkit" (higher = rnnkit
faster), ``x int8`` is rnnkit fp32 / rnnkit int8. Then the arg-max agreement of int8 with fp32 on
the built-in sentiment task's validation set (an LSTM trained for a few epochs). Loopback-free,
bounded in time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from rnnkit import layers as rk  # noqa: E402
from rnnkit_export.analysis.model_io import ModelIO  # noqa: E402
from rnnkit_export.onnx.convert import to_onnx  # noqa: E402
from rnnkit_export.variants import to_int8  # noqa: E402

logging.getLogger("tf2onnx").setLevel(logging.ERROR)
F, H = 16, 64


def build(kind: str, lib, masked: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, F), name="x")
    h = keras.layers.Masking()(inp) if masked else inp
    if kind == "lstm":
        h = lib.LSTM(H)(h)
    elif kind == "gru":
        h = lib.GRU(H)(h)
    elif kind == "bilstm":
        h = lib.Bidirectional(lib.LSTM(H))(h)
    elif kind == "stacked":
        # With return_sequences=False the top layer of a 2-layer residual stack has no skip term,
        # so two stacked keras.layers.LSTM are the same equations with the same weights.
        if lib is rk:
            h = rk.StackedRNN(H, num_layers=2, connection="residual")(h)
        else:
            h = keras.layers.LSTM(H)(keras.layers.LSTM(H, return_sequences=True)(h))
    return keras.Model(inp, keras.layers.Dense(4, name="out")(h))


def timed(fn, budget_s: float, max_reps: int = 500) -> float:
    for _ in range(3):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < max_reps and (time.perf_counter() - start) < budget_s:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def session(model_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def tf2onnx_cli(model: keras.Model, folder: str) -> bytes:
    saved = os.path.join(folder, "saved")
    model.export(saved, verbose=False)
    out = os.path.join(folder, "tf2onnx.onnx")
    subprocess.run(
        [sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved, "--output", out, "--opset", "17"],
        check=True,
        capture_output=True,
    )
    with open(out, "rb") as handle:
        return handle.read()


def bare_lstm(model: keras.Model) -> bytes:
    """Only the fused LSTM (+ the same Dense) with the weights of the model's LSTM layer."""
    from rnnkit_export.onnx.converters import converter_for

    layer = next(layer for layer in model.layers if isinstance(layer, rk.LSTM))
    d = converter_for(layer.cell)(layer.cell)
    dense = model.get_layer("out")
    inits = [
        numpy_helper.from_array(d.W[None], "W"),
        numpy_helper.from_array(d.R[None], "R"),
        numpy_helper.from_array(d.B[None], "B"),
        numpy_helper.from_array(np.asarray(dense.kernel), "K"),
        numpy_helper.from_array(np.asarray(dense.bias), "b"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "W", "R", "B"], ["", "yh"], hidden_size=H),
        helper.make_node("Squeeze", ["yh", "ax0"], ["h"]),
        helper.make_node("MatMul", ["h", "K"], ["hk"]),
        helper.make_node("Add", ["hk", "b"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", F])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def int8_bytes(model_bytes: bytes, folder: str) -> bytes:
    """The int8 variant `rnnkit export --quantize int8` writes (rnnkit_export.variants.to_int8)."""
    source, target = os.path.join(folder, "fp32.onnx"), os.path.join(folder, "int8.onnx")
    with open(source, "wb") as handle:
        handle.write(model_bytes)
    to_int8(source, target)
    with open(target, "rb") as handle:
        return handle.read()


INT8_MODELS = (("lstm", 256, 64), ("lstm", 512, 128), ("bilstm", 128, 64))  # (kind, units, features)


def int8_sizes(thread_counts: list[int], budget: float, folder: str) -> list[dict]:
    """fp32 vs int8 at the sizes int8 is for (wider layers than the rows above), T 50."""
    out = []
    for kind, units, features in INT8_MODELS:
        keras.utils.set_random_seed(0)
        inp = keras.Input((None, features), name="x")
        layer = rk.LSTM(units) if kind == "lstm" else rk.Bidirectional(rk.LSTM(units))
        model = keras.Model(inp, keras.layers.Dense(4, name="out")(layer(inp)))
        fp32 = to_onnx(model, ModelIO.of(model)).model.SerializeToString()
        int8 = int8_bytes(fp32, folder)
        for threads in thread_counts:
            a, b = session(fp32, threads), session(int8, threads)
            for batch in (1, 32):
                x = np.random.default_rng(batch).normal(size=(batch, 50, features)).astype("float32")
                diff = float(np.abs(a.run(None, {"x": x})[0] - b.run(None, {"x": x})[0]).max())
                row = {
                    "model": f"{kind} {units} (D {features})",
                    "threads": threads,
                    "batch": batch,
                    "fp32": timed(lambda: a.run(None, {"x": x}), budget),
                    "int8": timed(lambda: b.run(None, {"x": x}), budget),
                    "max_abs_diff": diff,
                }
                out.append(row)
                print(
                    f"{row['model']:<22}{threads:>4}{batch:>4}{row['fp32']:>9.3f}{row['int8']:>9.3f}"
                    f"{row['fp32'] / row['int8']:>8.2f}{diff:>10.1e}",
                    flush=True,
                )
    return out


def set_torch_threads(threads: int) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def sentiment_agreement(folder: str, epochs: int) -> dict:
    """Train Masking -> LSTM(64) -> Dense on the built-in sentiment task; arg-max agreement of the
    int8 graph with the fp32 graph (and both accuracies) on its validation set."""
    from rnnkit.tasks import make_task

    task = make_task("sentiment", train_examples=4000, val_examples=2000, seed=0)
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, task.x_train.shape[-1]), name="x")
    h = rk.LSTM(64, name="lstm")(keras.layers.Masking()(inp))
    model = keras.Model(inp, keras.layers.Dense(task.num_classes, name="out")(h))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(task.x_train, task.y_train, epochs=epochs, batch_size=64, verbose=0)
    fp32 = to_onnx(model, ModelIO.of(model)).model.SerializeToString()
    int8 = int8_bytes(fp32, folder)
    x = task.x_val.astype("float32")
    a = session(fp32).run(None, {"x": x})[0]
    b = session(int8).run(None, {"x": x})[0]
    y = np.asarray(task.y_val).reshape(-1)
    return {
        "examples": len(x),
        "epochs": epochs,
        "agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
        "accuracy_fp32": float((a.argmax(-1) == y).mean()),
        "accuracy_int8": float((b.argmax(-1) == y).mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def torch_runner(kind: str, model: keras.Model):
    try:
        import torch
    except ImportError:
        return None
    rnn_layer = model.layers[1]
    if kind == "lstm":
        net = torch.nn.LSTM(F, H, batch_first=True)
        cells = [rnn_layer.cell]
    elif kind == "gru":
        net = torch.nn.GRU(F, H, batch_first=True)
        cells = [rnn_layer.cell]
    elif kind == "bilstm":
        net = torch.nn.LSTM(F, H, batch_first=True, bidirectional=True)
        cells = [rnn_layer.forward_layer.cell, rnn_layer.backward_layer.cell]
    else:
        return None
    # Same weights: PyTorch gate order LSTM i,f,g,o = Keras i,f,c,o; GRU r,z,n vs Keras z,r,h.
    with torch.no_grad():
        for suffix, cell in zip(["", "_reverse"], cells):
            k, rk_, b = (np.asarray(cell.kernel), np.asarray(cell.recurrent_kernel), np.asarray(cell.bias))
            if kind == "gru":
                order = [1, 0, 2]
                k = np.concatenate([np.split(k, 3, 1)[i] for i in order], 1)
                rk_ = np.concatenate([np.split(rk_, 3, 1)[i] for i in order], 1)
                b = np.concatenate([np.split(b, 3, 1)[i] for i in order], 1)
                b_ih, b_hh = b[0], b[1]
            else:
                b_ih, b_hh = b, np.zeros_like(b)
            getattr(net, f"weight_ih_l0{suffix}").copy_(torch.from_numpy(k.T.copy()))
            getattr(net, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(rk_.T.copy()))
            getattr(net, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(b_ih.copy()))
            getattr(net, f"bias_hh_l0{suffix}").copy_(torch.from_numpy(b_hh.copy()))
    dense = model.get_layer("out")
    kernel = torch.from_numpy(np.asarray(dense.kernel))
    bias = torch.from_numpy(np.asarray(dense.bias))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            _, state = net(torch.from_numpy(x))
            h = state[0] if kind != "gru" else state
            h = torch.cat([h[0], h[1]], -1) if kind == "bilstm" else h[0]
            return (h @ kernel + bias).numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two models, short budgets (smoke run)")
    parser.add_argument("--threads", default="1", help="comma-separated intra-op thread counts (ORT and torch)")
    parser.add_argument("--sentiment_epochs", type=int, default=8, help="training epochs (0 = skip the section)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    kinds = ["lstm", "gru"] if args.quick else ["lstm", "gru", "bilstm", "stacked"]
    sizes = [(1, 20), (32, 20)] if args.quick else [(1, 20), (1, 100), (32, 20), (32, 100)]
    budget = 0.1 if args.quick else 0.4
    rows = []
    header = (
        f"{'model':<9}{'mask':>5}{'thr':>4}{'B':>4}{'T':>5}{'rnnkit':>9}{'int8':>8}{'tf2onnx':>9}{'SavedMdl':>9}"
        f"{'predict':>9}{'torch':>8}"
    )
    print(
        f"median ms per call (ratio = other / rnnkit); thr = ONNX Runtime intra-op threads = torch.set_num_threads "
        f"(inter-op 1; TensorFlow keeps its own pools); CPUs: {os.cpu_count()}"
    )
    print(header + f"{'x int8':>8}{'int8 d':>9}{'x tf2onnx':>10}{'x SavedMdl':>11}{'x torch':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for kind in kinds:
            for masked in (False, True):
                ours = build(kind, rk, masked)
                twin = build(kind, keras.layers, masked)
                twin.set_weights(ours.get_weights())
                io = ModelIO.of(ours)
                fp32_bytes = to_onnx(ours, io).model.SerializeToString()
                base_bytes = tf2onnx_cli(twin, os.path.join(folder, f"{kind}{masked}"))
                quantized = int8_bytes(fp32_bytes, folder)
                loaded = tf.saved_model.load(os.path.join(folder, f"{kind}{masked}", "saved"))
                serve = loaded.signatures["serve"]
                torch_run = None if masked else torch_runner(kind, twin)
                for threads in thread_counts:
                    rnnkit_sess = session(fp32_bytes, threads)
                    base_sess = session(base_bytes, threads)
                    int8_sess = session(quantized, threads)
                    set_torch_threads(threads)
                    base_input = base_sess.get_inputs()[0].name
                    for batch, steps in sizes:
                        rng = np.random.default_rng(batch * steps)
                        x = rng.normal(size=(batch, steps, F)).astype("float32")
                        if masked:
                            for row in range(batch):
                                x[row, rng.integers(steps // 2, steps + 1) :] = 0.0
                        want = np.asarray(twin.predict_on_batch(x))
                        got = rnnkit_sess.run(None, {"x": x})[0]
                        assert np.abs(got - want).max() < 1e-4, (kind, masked, np.abs(got - want).max())
                        if torch_run is not None:  # same weights, same answer
                            assert np.abs(torch_run(x) - want).max() < 1e-4, (kind, np.abs(torch_run(x) - want).max())
                        row = {
                            "model": kind,
                            "masked": masked,
                            "threads": threads,
                            "batch": batch,
                            "time": steps,
                            "rnnkit": timed(lambda: rnnkit_sess.run(None, {"x": x}), budget),
                            "int8": timed(lambda: int8_sess.run(None, {"x": x}), budget),
                            "int8_max_abs_diff": float(np.abs(int8_sess.run(None, {"x": x})[0] - got).max()),
                            "tf2onnx": timed(lambda: base_sess.run(None, {base_input: x}), budget),
                            "savedmodel": timed(lambda: serve(x=tf.constant(x)), budget, 200),
                            "predict": timed(lambda: twin.predict_on_batch(x), budget, 200),
                            "torch": timed(lambda: torch_run(x), budget) if torch_run else None,
                        }
                        rows.append(row)
                        r = row["rnnkit"]
                        torch_text = f"{row['torch']:>8.3f}" if row["torch"] else f"{'-':>8}"
                        torch_ratio = f"{row['torch'] / r:>8.1f}" if row["torch"] else f"{'-':>8}"
                        print(
                            f"{kind:<9}{'yes' if masked else 'no':>5}{threads:>4}{batch:>4}{steps:>5}{r:>9.3f}"
                            f"{row['int8']:>8.3f}{row['tf2onnx']:>9.3f}{row['savedmodel']:>9.3f}{row['predict']:>9.3f}"
                            f"{torch_text}{r / row['int8']:>8.2f}{row['int8_max_abs_diff']:>9.1e}"
                            f"{row['tf2onnx'] / r:>10.1f}{row['savedmodel'] / r:>11.1f}{torch_ratio}",
                            flush=True,
                        )
        # Batch 64: rnnkit's whole graph against a graph holding only the fused op.
        ours = build("lstm", rk, False)
        x = np.random.default_rng(1).normal(size=(64, 50, F)).astype("float32")
        whole = session(to_onnx(ours, ModelIO.of(ours)).model.SerializeToString())
        bare = session(bare_lstm(ours))
        np.testing.assert_allclose(whole.run(None, {"x": x})[0], bare.run(None, {"x": x})[0], atol=1e-5)
        t_whole = timed(lambda: whole.run(None, {"x": x}), budget * 2)
        t_bare = timed(lambda: bare.run(None, {"x": x}), budget * 2)
        print(
            f"\nbatch 64, T 50, LSTM {H}: rnnkit graph {t_whole:.3f} ms, bare fused op {t_bare:.3f} ms, "
            f"ratio {t_whole / t_bare:.2f}"
        )
        print(
            f"\nint8 at wider layers, T 50 (median ms)\n{'model':<22}{'thr':>4}{'B':>4}{'fp32':>9}{'int8':>9}{'x int8':>8}{'max|d|':>10}"
        )
        wide = int8_sizes(thread_counts, budget, folder)
        agreement = sentiment_agreement(folder, args.sentiment_epochs) if args.sentiment_epochs > 0 else None
    worst_tf2onnx = min(r["tf2onnx"] / r["rnnkit"] for r in rows)
    b1 = [r for r in rows if r["batch"] == 1]
    print(f"min speed-up over tf2onnx on any row: {worst_tf2onnx:.2f}x (target >= 1.0)")
    print(
        f"min speed-up over the TF SavedModel at batch 1: {min(r['savedmodel'] / r['rnnkit'] for r in b1):.1f}x (target >= 8)"
    )
    torch_rows = [r for r in b1 if r["torch"]]
    if torch_rows:
        print(
            f"min speed-up over PyTorch eager at batch 1: {min(r['torch'] / r['rnnkit'] for r in torch_rows):.1f}x (target >= 1.5)"
        )
    else:
        print("PyTorch not installed: no torch rows (pip install torch==2.13.0 to add them)")
    for batch in sorted({r["batch"] for r in rows}):
        lstm_rows = [r for r in rows if r["batch"] == batch and r["model"] != "gru"]
        gru_rows = [r for r in rows if r["batch"] == batch and r["model"] == "gru"]
        wide_rows = [r for r in wide if r["batch"] == batch]
        print(
            f"int8 speed-up over fp32 at batch {batch}: LSTM models min {min(r['rnnkit'] / r['int8'] for r in lstm_rows):.2f}x "
            f"(LSTM {H}), {min(r['fp32'] / r['int8'] for r in wide_rows):.2f}x (wider layers) (target >= 2); "
            f"GRU (only its MatMul quantized) {min(r['rnnkit'] / r['int8'] for r in gru_rows):.2f}x-"
            f"{max(r['rnnkit'] / r['int8'] for r in gru_rows):.2f}x"
        )
    if agreement is not None:
        print(
            f"sentiment validation set ({agreement['examples']} examples, LSTM 64 trained {agreement['epochs']} "
            f"epochs): int8 arg-max agreement with fp32 {agreement['agreement']:.4f} (target >= 0.995); accuracy "
            f"fp32 {agreement['accuracy_fp32']:.4f}, int8 {agreement['accuracy_int8']:.4f}; max|diff| "
            f"{agreement['max_abs_diff']:.1e}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "rows": rows,
                    "int8_wide": wide,
                    "bare_op_batch64": {"rnnkit": t_whole, "bare": t_bare},
                    "sentiment": agreement,
                },
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
