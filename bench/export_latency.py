"""Inference latency of rnnkit's ONNX export against what a user gets without rnnkit.

    .venv/bin/python bench/export_latency.py [--quick] [--json out.json]

For each model (LSTM, GRU, bidirectional LSTM, 2-layer residual LSTM stack; with and without
a Masking layer) the same weights are run, in one process, by:

- ``rnnkit``    : ONNX Runtime on rnnkit's export (fused LSTM/GRU ops, masks honoured);
- ``tf2onnx``   : ONNX Runtime on the keras.layers twin exported with ``model.export`` and then
                  ``python -m tf2onnx.convert --saved-model`` (the usual path without rnnkit);
- ``savedmodel``: the twin's TF SavedModel ``serve`` signature;
- ``predict``   : ``model.predict_on_batch`` on the Keras model;
- ``torch``     : ``nn.LSTM``/``nn.GRU`` eager with the same weights, where PyTorch is installed
                  (unmasked LSTM/GRU/bi-LSTM rows only);
- ``bare op``   : (batch 64 row) a graph holding only the fused op with the same weights.

ONNX Runtime uses one intra-op thread (the serving default). Times are medians in ms;
ratios are "other / rnnkit" (higher = rnnkit faster). Loopback-free, bounded in time.
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

from export.model_io import ModelIO  # noqa: E402
from export.onnx_export import to_onnx  # noqa: E402
from rnnkit import layers as rk  # noqa: E402

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


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
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
    from export.converters import converter_for

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


def torch_runner(kind: str, model: keras.Model):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
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
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    kinds = ["lstm", "gru"] if args.quick else ["lstm", "gru", "bilstm", "stacked"]
    sizes = [(1, 20), (32, 20)] if args.quick else [(1, 20), (1, 100), (32, 20), (32, 100)]
    budget = 0.1 if args.quick else 0.4
    rows = []
    header = (
        f"{'model':<9}{'mask':>5}{'B':>4}{'T':>5}{'rnnkit':>9}{'tf2onnx':>9}{'SavedMdl':>9}{'predict':>9}{'torch':>8}"
    )
    print("median ms per call (ratio = other / rnnkit)")
    print(header + f"{'x tf2onnx':>10}{'x SavedMdl':>11}{'x torch':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for kind in kinds:
            for masked in (False, True):
                ours = build(kind, rk, masked)
                twin = build(kind, keras.layers, masked)
                twin.set_weights(ours.get_weights())
                io = ModelIO.of(ours)
                rnnkit_sess = session(to_onnx(ours, io).model.SerializeToString())
                base_sess = session(tf2onnx_cli(twin, os.path.join(folder, f"{kind}{masked}")))
                loaded = tf.saved_model.load(os.path.join(folder, f"{kind}{masked}", "saved"))
                serve = loaded.signatures["serve"]
                torch_run = None if masked else torch_runner(kind, twin)
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
                        "batch": batch,
                        "time": steps,
                        "rnnkit": timed(lambda: rnnkit_sess.run(None, {"x": x}), budget),
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
                        f"{kind:<9}{'yes' if masked else 'no':>5}{batch:>4}{steps:>5}{r:>9.3f}{row['tf2onnx']:>9.3f}"
                        f"{row['savedmodel']:>9.3f}{row['predict']:>9.3f}{torch_text}"
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
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "bare_op_batch64": {"rnnkit": t_whole, "bare": t_bare}}, handle, indent=2)


if __name__ == "__main__":
    main()
