"""Serving latency, cold start and memory of rnnkit's server (loopback only, bounded in time).

    .venv/bin/python bench/serve_latency.py [--quick]

On one small exported model (Masking -> LSTM(64) -> Dense(4), 16 features, batch 1, 20 steps):

- raw ``Predictor.predict`` latency (ONNX Runtime, CPU), and bare ``InferenceSession.run`` for
  reference; intra-op threads 1 vs 2 at batch 1 and 32; pre-bound I/O (``io_binding``) vs ``run``;
- REST and gRPC p50/p99 at concurrency 1 against ``python -m serving`` on 127.0.0.1
  (the official tensorflow_serving client for gRPC, httpx with keep-alive for REST);
- cold start (process start to the first successful answer) and peak RSS (VmHWM) of
  ``python -m serving`` with the ONNX backend (REST only, and with gRPC) and the TF backend.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
B, T, F, H = 1, 20, 16, 64


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def timed(fn, n: int) -> list[float]:
    for _ in range(max(5, n // 20)):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def export_small(base: str) -> str:
    import keras

    import rnnkit.layers as rk
    from rnnkit_export import export_model

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, F), name="frames")
    x = keras.layers.Masking()(inp)
    x = rk.LSTM(H)(x)
    model = keras.Model(inp, {"scores": keras.layers.Dense(4)(x)})
    export_model(model, base, "small")
    return os.path.join(base, "small")


def raw_latency(model_dir: str, n: int) -> None:
    import onnxruntime as ort

    from rnnkit_serving import Predictor, RuntimeOptions

    x = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
    with Predictor.load(model_dir) as p:
        p50, p99 = percentiles(timed(lambda: p.predict({"frames": x}), n))
        print(f"raw Predictor.predict (onnx, 1 thread)   p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    onnx_path = os.path.join(model_dir, "1", "model.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    p50, p99 = percentiles(timed(lambda: session.run(None, {"frames": x}), n))
    print(f"bare InferenceSession.run                p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    binding = session.io_binding()
    binding.bind_cpu_input("frames", x)
    binding.bind_output("scores")
    p50b, _ = percentiles(timed(lambda: session.run_with_iobinding(binding), n))
    print(f"pre-bound I/O (run_with_iobinding)       p50 {p50b:.3f} ms  (vs run {p50:.3f} ms)")
    print("intra-op threads (Predictor.predict p50, ms):")
    for batch in (1, 32):
        xb = np.random.default_rng(1).normal(size=(batch, T, F)).astype(np.float32)
        row = []
        for threads in (1, 2):
            with Predictor.load(model_dir, options=RuntimeOptions(intra_op_threads=threads)) as p:
                row.append(percentiles(timed(lambda: p.predict({"frames": xb}), n // 2))[0])
        print(f"  batch {batch:>2}: 1 thread {row[0]:.3f}   2 threads {row[1]:.3f}")


def serve(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        # what the `rnnkit` console script runs (the launcher outside the rnnkit package)
        [sys.executable, "-m", "rnnkit_cli", "serve", *args, "--host", "127.0.0.1"],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cold_start(model_dir: str, backend: str, grpc_on: bool, kserve_grpc: bool = False) -> tuple[float, float]:
    import httpx

    from rnnkit_serving import free_port

    rest = free_port()
    grpc_port = free_port() if grpc_on else 0
    body = {"instances": np.zeros((1, T, F)).tolist()}
    started = time.perf_counter()
    proc = serve(
        [
            "--model_base_path",
            model_dir,
            "--model_name",
            "small",
            "--backend",
            backend,
            "--rest_api_port",
            str(rest),
            "--port",
            str(grpc_port),
            "--grpc_inference_port",
            str(free_port() if kserve_grpc else 0),
        ]
    )
    try:
        deadline = started + 120
        while time.perf_counter() < deadline:
            try:
                if (
                    httpx.post(f"http://127.0.0.1:{rest}/v1/models/small:predict", json=body, timeout=5).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                time.sleep(0.01)
        elapsed = time.perf_counter() - started
        return elapsed, peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)


def wire_latency(model_dir: str, n: int) -> None:
    import grpc
    import httpx
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from rnnkit_serving import free_port

    rest, grpc_port = free_port(), free_port()
    proc = serve(
        [
            "--model_base_path",
            model_dir,
            "--model_name",
            "small",
            "--rest_api_port",
            str(rest),
            "--port",
            str(grpc_port),
        ]
    )
    x = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{rest}", timeout=30)
        body = {"instances": x.tolist()}
        for _ in range(600):
            try:
                if client.post("/v1/models/small:predict", json=body).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        import json

        content = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        p50, p99 = percentiles(
            timed(lambda: client.post("/v1/models/small:predict", content=content, headers=headers), n)
        )
        print(f"REST :predict  (concurrency 1, httpx)    p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        # The same request from the standard library's keep-alive client: httpx itself costs ~0.3 ms.
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", rest, timeout=30)

        def lean_post() -> int:
            connection.request("POST", "/v1/models/small:predict", content, headers)
            response = connection.getresponse()
            response.read()
            return response.status

        p50l, p99l = percentiles(timed(lean_post, n))
        print(f"REST :predict  (concurrency 1, http.client) p50 {p50l:.3f} ms  p99 {p99l:.3f} ms")
        connection.close()
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "small"
        request.inputs["frames"].CopyFrom(tf.make_tensor_proto(x))
        p50g, p99g = percentiles(timed(lambda: stub.Predict(request, timeout=30), n))
        print(f"gRPC Predict   (concurrency 1)           p50 {p50g:.3f} ms  p99 {p99g:.3f} ms")
        channel.close()
        client.close()
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    n = 60 if args.quick else 400
    with tempfile.TemporaryDirectory() as base:
        model_dir = export_small(base)
        print(
            f"model: Masking -> LSTM({H}) -> Dense(4); request batch {B}, {T} steps, {F} features; CPU cores {os.cpu_count()}"
        )
        raw_latency(model_dir, n)
        wire_latency(model_dir, n)
        print("cold start (process start -> first 200) and peak RSS:")
        for backend, grpc_on, kserve_grpc, label in [
            ("onnx", False, False, "onnx, REST only (--port 0)"),
            ("onnx", True, False, "onnx, REST + gRPC"),
            ("onnx", False, True, "onnx, REST + KServe gRPC"),
            ("tf", False, False, "tf,   REST only (--port 0)"),
        ]:
            seconds, rss = cold_start(model_dir, backend, grpc_on, kserve_grpc)
            print(f"  {label:<28} {seconds:.2f} s   {rss:.0f} MiB")


if __name__ == "__main__":
    main()
