"""Serving II load benchmark (bounded, loopback only).

1. Throughput and p50/p99 latency of REST ``:predict`` at concurrency 1/8/32, with and without
   ``--enable_batching``, against a child ``python -m serving`` process (so the client's threads
   do not share the server's GIL). Requests have random lengths, so batching must pad exactly.
   The same comparison in-process (threads calling ``Predictor.predict`` vs ``Batcher.predict``)
   shows the runtime's share without HTTP.
2. Streaming step latency through ``Predictor.session()`` for a 256-unit LSTM (batch 1, one step
   per chunk), next to a bare ``InferenceSession.run`` of ``step.onnx`` with the same states.

    .venv/bin/python bench/serve_load.py [--units 256] [--min_len 32] [--max_len 64] [--requests 400]
        [--variant fp32|int8] [--concurrency 1,8,32] [--skip_rest] [--rounds 5]

``--variant int8`` exports with ``--quantize int8`` and serves ``model.int8.onnx`` (in-process
``Predictor.load(variant="int8")``, REST ``--variant int8``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

FEATURES = 8


def build(base: str, units: int, variant: str = "fp32") -> str:
    import keras

    from rnnkit import layers as rk
    from rnnkit_export import export_model

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, FEATURES), name="x")
    h = rk.LSTM(units, name="lstm")(keras.layers.Masking(0.0)(inp))
    model = keras.Model(inp, {"scores": keras.layers.Dense(4, name="scores")(h)})
    report = export_model(model, base, "rnn", quantize=None if variant == "fp32" else variant)
    if variant != "fp32" and not report.variants[variant]["published"]:
        raise SystemExit(f"the {variant} variant was not published: {report.variants[variant]['reason']}")
    if not report.zero_padding_invariant:
        raise SystemExit("the benchmark model should be zero-padding invariant (Masking)")
    return os.path.join(base, "rnn")


def bodies(count: int, min_len: int, max_len: int) -> list[tuple[np.ndarray, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        x = rng.normal(size=(1, int(rng.integers(min_len, max_len + 1)), FEATURES)).astype(np.float32)
        out.append((x, json.dumps({"inputs": {"x": x.round(4).tolist()}}).encode()))
    return out


def percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies_ms)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def drive_http(port: int, payloads: list[bytes], concurrency: int, requests: int) -> tuple[float, float, float, int]:
    """`requests` POSTs over `concurrency` keep-alive connections; (req/s, p50 ms, p99 ms, failures)."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    per_thread = max(1, requests // concurrency)

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(per_thread):
            body = payloads[(offset * per_thread + i) % len(payloads)]
            started = time.perf_counter()
            conn.request("POST", "/v1/models/rnn:predict", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            mine.append((time.perf_counter() - started) * 1e3)
            if reply.status != 200:
                with lock:
                    failures[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    wall = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return len(latencies) / wall, p50, p99, failures[0]


def drive_in_process(call, inputs: list[dict], concurrency: int, requests: int) -> tuple[float, float, float]:
    latencies: list[float] = []

    def one(i: int) -> None:
        started = time.perf_counter()
        call(inputs[i % len(inputs)])
        latencies.append((time.perf_counter() - started) * 1e3)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return requests / wall, p50, p99


def bench_http(
    model_dir: str, payloads: list[bytes], requests: int, batching_file: str, variant: str, levels: list[int]
) -> dict:
    from rnnkit_serving import spawn_server

    results = {}
    for batching in (False, True):
        flags = ["--model_base_path", model_dir, "--model_name", "rnn", "--rest_workers", "4", "--variant", variant]
        if batching:
            flags += ["--enable_batching", "--batching_parameters_file", batching_file]
        with spawn_server(flags, timeout=120) as proc:
            port = proc.rest_api_port
            drive_http(port, payloads[:20], 4, 40)  # warm up
            for concurrency in levels:
                count = requests if concurrency > 1 else requests // 2
                results[(batching, concurrency)] = drive_http(port, payloads, concurrency, count)
    return results


def bench_in_process(model_dir: str, xs: list[np.ndarray], requests: int, variant: str, levels: list[int]) -> dict:
    from rnnkit_serving import Predictor
    from rnnkit_serving.scheduling.batching import Batcher, BatchingParameters

    results = {}
    inputs = [{"x": x} for x in xs]
    with Predictor.load(model_dir, variant=variant) as predictor:
        batcher = Batcher(BatchingParameters(32, 2000, 2, 100))
        try:
            for batching in (False, True):
                call = (lambda r: batcher.predict(predictor, r)) if batching else predictor.predict
                drive_in_process(call, inputs, 4, 40)
                for concurrency in levels:
                    count = requests if concurrency > 1 else requests // 2
                    results[(batching, concurrency)] = drive_in_process(call, inputs, concurrency, count)
        finally:
            batcher.close()
    return results


def bench_streaming(model_dir: str, steps: int) -> dict:
    import onnxruntime as ort

    from rnnkit_serving import Predictor

    rng = np.random.default_rng(1)
    chunks = [rng.normal(size=(1, 1, FEATURES)).astype(np.float32) for _ in range(64)]
    out = {}
    with Predictor.load(model_dir) as predictor, predictor.session() as session:
        for chunk in chunks:
            session.step({"x": chunk})
        timings = []
        for i in range(steps):
            started = time.perf_counter()
            session.step({"x": chunks[i % len(chunks)]})
            timings.append((time.perf_counter() - started) * 1e3)
        out["session"] = (statistics.median(timings), percentiles(timings)[1], statistics.fmean(timings))
        pairs = predictor.states
        path = os.path.join(predictor.path or "", "step.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    bare = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in bare.get_outputs()]
    feed = {p.input: np.zeros((1, p.units), np.float32) for p in pairs}
    timings = []
    for i in range(steps + 64):
        feed["x"] = chunks[i % len(chunks)]
        started = time.perf_counter()
        values = dict(zip(outputs, bare.run(outputs, feed)))
        if i >= 64:
            timings.append((time.perf_counter() - started) * 1e3)
        for p in pairs:
            feed[p.input] = values[p.output]
    out["bare step.onnx"] = (statistics.median(timings), percentiles(timings)[1], statistics.fmean(timings))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--min_len", type=int, default=32)
    parser.add_argument("--max_len", type=int, default=64)
    parser.add_argument("--requests", type=int, default=640, help="requests per point (half at concurrency 1)")
    parser.add_argument("--stream_steps", type=int, default=5000)
    parser.add_argument("--variant", choices=("fp32", "int8"), default="fp32", help="which exported graphs serve")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency levels")
    parser.add_argument("--skip_rest", action="store_true", help="in-process rows only (no child server)")
    parser.add_argument("--rounds", type=int, default=1, help="in-process rounds (off/on alternating), medians shown")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    base = tempfile.mkdtemp(prefix="serve-load-")
    model_dir = build(base, args.units, args.variant)
    batching_file = os.path.join(base, "batching.config")
    with open(batching_file, "w") as handle:
        handle.write(
            "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
            "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"
        )
    data = bodies(256, args.min_len, args.max_len)
    print(
        f"model: Masking -> LSTM({args.units}) -> Dense(4), 1 x T x {FEATURES}, T uniform in "
        f"[{args.min_len}, {args.max_len}]; variant {args.variant}; CPUs: {os.cpu_count()}",
        flush=True,
    )

    stream = bench_streaming(model_dir, args.stream_steps)
    print("\nstreaming step (batch 1, 1 step per chunk)       p50 ms    p99 ms   mean ms")
    for name, (p50, p99, mean) in stream.items():
        print(f"  {name:<44} {p50:8.4f}  {p99:8.4f}  {mean:8.4f}")

    rounds = [
        bench_in_process(model_dir, [x for x, _ in data], args.requests, args.variant, levels)
        for _ in range(args.rounds)
    ]  # off and on alternate within each round; the median of each point over the rounds
    local = {key: tuple(statistics.median(r[key][i] for r in rounds) for i in range(3)) for key in rounds[0]}
    tables = {f"in-process (threads -> predictor), median of {args.rounds} interleaved round(s)": local}
    if not args.skip_rest:
        tables["REST :predict (child server)"] = bench_http(
            model_dir, [b for _, b in data], args.requests, batching_file, args.variant, levels
        )
    for title, table in tables.items():
        print(f"\n{title}")
        print("  batching  concurrency     req/s    p50 ms    p99 ms")
        for (batching, concurrency), row in table.items():
            print(
                f"  {'on' if batching else 'off':<9} {concurrency:>11} {row[0]:9.1f} {row[1]:9.2f} {row[2]:9.2f}"
                + (f"  failures {row[3]}" if len(row) > 3 and row[3] else "")
            )
        for concurrency in levels:
            on, off = table[(True, concurrency)], table[(False, concurrency)]
            print(
                f"  concurrency {concurrency}: batching on/off throughput {on[0] / off[0]:.2f}x, "
                f"p99 on/off {on[2] / off[2]:.2f}"
            )
    print("targets: concurrency 1 throughput on/off >= 0.9; concurrency 32 in-process >= 1.5x and p99 on/off <= 0.33")
    return 0


if __name__ == "__main__":
    sys.exit(main())
