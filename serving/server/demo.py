"""The serving part of ``make demo``: start ``rnnkit serve`` on 127.0.0.1 as a child process,
query it as TF Serving clients do (REST ``:predict`` in row form, the official gRPC client),
compare the answers with the expected ones, time a few requests, and stop it with SIGTERM."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from typing import Any

import numpy as np

from rnnkit_serving.server.process import spawn_server

REQUESTS = 50


def _rest_predict(url: str, name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    ((input_name, array),) = inputs.items()
    body = json.dumps({"instances": array.tolist()}).encode()
    request = urllib.request.Request(f"{url}/v1/models/{name}:predict", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return np.asarray(json.loads(response.read())["predictions"], np.float32)


def _median_ms(fn: Any, count: int = REQUESTS) -> float:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def run(base_path: str, name: str, inputs: dict[str, np.ndarray], want: np.ndarray) -> dict[str, float]:
    """Serve `<base_path>/<name>`, query it over REST and gRPC, print and return the results."""
    import grpc
    import tensorflow as tf  # the official TF Serving client builds TensorProtos with TF
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    results: dict[str, float] = {}
    server = spawn_server(["--model_base_path", f"{base_path}/{name}", "--model_name", name], port=None)
    try:
        print(f"serving '{name}' on {server.rest_url} (REST) and {server.grpc_target} (gRPC)")
        rest = _rest_predict(server.rest_url or "", name, inputs)
        results["rest_max_abs_diff"] = float(np.abs(rest - want).max())
        print(f"REST  :predict -> {np.array2string(rest, precision=4, suppress_small=True)}")

        channel = grpc.insecure_channel(server.grpc_target or "")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        for key, array in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        reply = stub.Predict(request, timeout=30)
        (output,) = reply.outputs.values()
        grpc_answer = tf.make_ndarray(output)
        results["grpc_max_abs_diff"] = float(np.abs(grpc_answer - want).max())
        print(f"gRPC  Predict  -> {np.array2string(grpc_answer, precision=4, suppress_small=True)}")
        print(
            f"parity against Keras: REST max|diff| {results['rest_max_abs_diff']:.2e}, "
            f"gRPC max|diff| {results['grpc_max_abs_diff']:.2e}"
        )
        one = {k: v[:1] for k, v in inputs.items()}
        results["rest_p50_ms"] = _median_ms(lambda: _rest_predict(server.rest_url or "", name, one))
        single = predict_pb2.PredictRequest()
        single.model_spec.name = name
        for key, array in one.items():
            single.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        results["grpc_p50_ms"] = _median_ms(lambda: stub.Predict(single, timeout=30))
        print(
            f"latency, one sequence, {REQUESTS} requests: REST p50 {results['rest_p50_ms']:.2f} ms, "
            f"gRPC p50 {results['grpc_p50_ms']:.2f} ms"
        )
        channel.close()
    finally:
        status = server.stop()
        print(f"server stopped (SIGTERM, drained), exit status {status}")
    results["exit_status"] = float(status)
    return results
