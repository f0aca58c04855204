"""Where rnnkit's server spends a request's time: stage timings in-process, and py-spy on a live child server.

    .venv/bin/python bench/profile_hot_path.py [--model_dir DIR] [--seconds 8] [--steps 100] [--no_pyspy]
        [--protocols kserve_json,kserve_binary]

(``py-spy`` must be installed in the venv for the second part: ``.venv/bin/pip install py-spy``; it runs as root
or with ptrace rights.) Hold the shared lock: ``flock /tmp/rnnkit-test.lock .venv/bin/python bench/profile_hot_path.py``.

1. Stage timings (one thread, median of many calls) of the pure codec functions on one 1 x STEPS x 64 float32
   request: the JSON depth guard, ``json.loads`` vs ``orjson.loads``, KServe's ``decode_infer_request`` (JSON and
   binary), TF Serving's ``decode_predict_request`` (rows and columns), the gRPC decoders, the model run, and
   the response encoders. These show per-element Python work directly.
2. ``py-spy record --format raw`` (all threads, 997 Hz) of ``python -m rnnkit_cli serve`` while one client
   sends the same request in a loop (concurrency 1, http.client keep-alive), per protocol. Samples are turned
   into milliseconds per request (samples / rate / requests) and printed by leaf line (self time) and by
   rnnkit/starlette/uvicorn/asyncio frame (inclusive), and per thread, so hand-offs between the event loop and
   the worker threads show as their own rows. The raw files stay in ``bench/out/profile-*.txt``.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import serve_overhead as so  # noqa: E402

RATE = 997


def median_ms(fn: Callable[[], object], seconds: float = 0.6) -> float:
    return statistics.median(so.time_calls(fn, seconds, least=30))


def stage_timings(model_dir: str, steps: int) -> list[tuple[str, float]]:
    import orjson

    from rnnkit_serving import Predictor
    from rnnkit_serving.codecs import json_depth
    from rnnkit_serving.codecs.kserve import grpc as kserve_grpc
    from rnnkit_serving.codecs.kserve import rest as kserve_rest
    from rnnkit_serving.codecs.tfs import grpc as tfs_grpc
    from rnnkit_serving.codecs.tfs import json_tensor
    from rnnkit_serving.codecs.tfs import rest as tfs_rest
    from rnnkit_serving.core.signature import ElementBudget

    x = so.sequence(steps)
    rows: list[tuple[str, float]] = []

    def add(label: str, fn: Callable[[], object]) -> None:
        try:
            rows.append((label, median_ms(fn)))
        except Exception as error:  # noqa: BLE001 - the codecs are being changed: report, go on
            rows.append((f"{label}  [failed: {error!r}]"[:160], float("nan")))

    with Predictor.load(model_dir) as predictor:
        signature = predictor.signature()
        budget = lambda: ElementBudget(1 << 26)  # noqa: E731
        _, body, _ = so.rest_request("kserve_json", x)
        _, binary_body, headers = so.rest_request("kserve_binary", x)
        header_length = headers[so.HEADER_LENGTH]
        _, rows_body, _ = so.rest_request("tfs_rows", x)
        _, cols_body, _ = so.rest_request("tfs_cols", x)
        print(
            f"bodies: KServe JSON {len(body) / 1e3:.0f} KB, binary {len(binary_body) / 1e3:.0f} KB, "
            f"TFS rows {len(rows_body) / 1e3:.0f} KB, columns {len(cols_body) / 1e3:.0f} KB"
        )
        add("json_depth.exceeds_depth(KServe JSON body)", lambda: json_depth.exceeds_depth(body))
        add("json_depth.json_depth(KServe JSON body) (the full scan)", lambda: json_depth.json_depth(body))
        add("json.loads(KServe JSON body)", lambda: json.loads(body))
        add("orjson.loads(KServe JSON body) (reference)", lambda: orjson.loads(body))
        add("kserve rest.parse_body (guard + json.loads)", lambda: kserve_rest.parse_body(body))
        doc = json.loads(body)
        flat = doc["inputs"][0]["data"]
        add("np.array(flat list, float32) (reference)", lambda: np.array(flat, dtype=np.float32))
        add("kserve rest._flatten(data)", lambda: kserve_rest._flatten(flat))
        add(
            "kserve rest._check_values(data)",
            lambda: kserve_rest._check_values(flat, "FP32", so.INPUT, signature.inputs[0].dtype),
        )
        add(
            "kserve rest.decode_infer_request (JSON doc, checked path: a body with true/false)",
            lambda: kserve_rest.decode_infer_request(doc, signature, None, budget()),
        )
        add(
            "kserve rest.decode_infer_request (JSON doc, numbers in C: what the server runs)",
            lambda: kserve_rest.decode_infer_request(doc, signature, None, budget(), False, True),
        )
        add(
            "kserve rest.split_binary_body (binary)",
            lambda: kserve_rest.split_binary_body(binary_body, header_length),
        )
        bdoc, braw = kserve_rest.split_binary_body(binary_body, header_length)
        add(
            "kserve rest.decode_infer_request (binary)",
            lambda: kserve_rest.decode_infer_request(bdoc, signature, braw, budget()),
        )
        rows_doc, cols_doc = json.loads(rows_body), json.loads(cols_body)
        sigs = predictor.signatures
        add("tfs json_tensor.parse_json (TFS rows body)", lambda: json_tensor.parse_json(rows_body))
        add(
            "tfs rest.decode_predict_request (rows doc, checked path)",
            lambda: tfs_rest.decode_predict_request(rows_doc, sigs, budget()),
        )
        add(
            "tfs rest.decode_predict_request (rows doc, numbers in C: what the server runs)",
            lambda: tfs_rest.decode_predict_request(rows_doc, sigs, budget(), True),
        )
        add(
            "tfs rest.decode_predict_request (columns doc, numbers in C)",
            lambda: tfs_rest.decode_predict_request(cols_doc, sigs, budget(), True),
        )
        inputs = {so.INPUT: x}
        add("Predictor.predict (model run + validation)", lambda: predictor.predict(inputs))
        session = so.ort_session(so.onnx_file(model_dir))
        add("bare InferenceSession.run (floor)", lambda: session.run(None, inputs))
        outputs = predictor.predict(inputs)
        add(
            "kserve rest.encode_infer_response",
            lambda: kserve_rest.encode_infer_response(so.MODEL, 1, outputs, None, None),
        )
        add("tfs rest.encode_predict_response (rows)", lambda: tfs_rest.encode_predict_response(outputs, True))
        sequence = {"y": np.random.default_rng(0).standard_normal((1, steps, 64)).astype(np.float32)}
        add(
            f"kserve rest.encode_infer_response (a 1 x {steps} x 64 FP32 sequence output)",
            lambda: kserve_rest.encode_infer_response(so.MODEL, 1, sequence, None, None),
        )
        add(
            f"tfs rest.encode_predict_response (a 1 x {steps} x 64 float32 sequence output, rows)",
            lambda: tfs_rest.encode_predict_response(sequence, True),
        )
        try:
            from tritonclient.grpc import service_pb2

            request = service_pb2.ModelInferRequest(model_name=so.MODEL)
            request.inputs.add(name=so.INPUT, datatype="FP32", shape=list(x.shape))
            request.raw_input_contents.append(x.tobytes())
            wire = request.SerializeToString()
            own = kserve_grpc.protos().pb2.ModelInferRequest
            parsed = own.FromString(wire)
            add("kserve grpc ModelInferRequest.FromString", lambda: own.FromString(wire))
            add(
                "kserve grpc.decode_infer_request (raw contents)",
                lambda: kserve_grpc.decode_infer_request(parsed, signature, budget()),
            )
        except Exception as error:  # noqa: BLE001
            rows.append((f"kserve grpc decode [setup failed: {error!r}]"[:160], float("nan")))
        try:
            tfs_request = tfs_grpc.protos().predict.PredictRequest()
            tfs_request.model_spec.name = so.MODEL
            tfs_request.inputs[so.INPUT].CopyFrom(tfs_grpc.array_to_tensor(x, as_tensor_content=True))
            add(
                "tfs grpc.decode_predict_request (tensor_content)",
                lambda: tfs_grpc.decode_predict_request(tfs_request, signature, budget()),
            )
        except Exception as error:  # noqa: BLE001
            rows.append((f"tfs grpc decode [setup failed: {error!r}]"[:160], float("nan")))
    return rows


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def short(path: str) -> str:
    """serving/... for rnnkit's files, the package path for installed ones, the module path for the stdlib."""
    if path.startswith(so.ROOT + "/"):
        return os.path.relpath(path, so.ROOT)
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def analyse(raw_path: str, requests: int, top: int) -> None:
    """Self time by leaf line, inclusive time by function of interest, and time per thread, in ms per request."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            threads[frames[0]] += count
            seen: set[str] = set()
            for frame in frames[1:]:
                match = _FRAME.match(frame)
                if not match:
                    continue
                key = f"{match['func']} ({short(match['file'])})"
                if key not in seen and re.search(r"\((serving|export|starlette|uvicorn|asyncio|concurrent)/", key):
                    seen.add(key)
                    inclusive[key] += count
            last = _FRAME.match(frames[-1])
            leaf[f"{last['func']} ({short(last['file'])}:{last['line']})" if last else frames[-1]] += count
    per_request = 1e3 / RATE / max(1, requests)
    print(f"  {total} samples, {requests} requests: {total * per_request:.3f} ms of CPU-busy samples per request")
    print("  by thread (ms/request):")
    for name, count in threads.most_common(8):
        print(f"    {count * per_request:7.3f}  {name}")
    print(f"  self time by leaf line, top {top} (ms/request):")
    for name, count in leaf.most_common(top):
        print(f"    {count * per_request:7.3f}  {name}")
    print(f"  inclusive, by function of serving/, starlette, uvicorn, asyncio, concurrent, top {top} (ms/request):")
    for name, count in inclusive.most_common(top):
        print(f"    {count * per_request:7.3f}  {name}")


def pyspy(model_dir: str, steps: int, protocols: list[str], seconds: float, top: int) -> None:
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy")
        return
    scratch = tempfile.mkdtemp(prefix="profile-")
    # a WIP header guard (serving/fronts/rest/connections.py) counts a large first read as headers: lift its limit
    with so.rnnkit_servers(model_dir, ["off"], scratch, ["--max_header_bytes", str(1 << 24)]) as servers:
        server = servers["off"]
        for protocol in protocols:
            path, body, headers = so.rest_request(protocol, so.sequence(steps))
            connection = http.client.HTTPConnection("127.0.0.1", server.rest, timeout=30)

            def call() -> None:
                connection.request("POST", path, body, headers)
                reply = connection.getresponse()
                reply.read()
                if reply.status != 200:
                    raise RuntimeError(reply.status)

            for _ in range(50):
                call()
            raw = os.path.join(so.OUT, f"profile-{protocol}-{steps}.txt")
            recorder = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--format",
                    "raw",
                    "--threads",
                    "--full-filenames",
                    "-r",
                    str(RATE),
                    "-d",
                    str(int(seconds)),
                ]
                + ["-o", raw, "--pid", str(server.proc.pid), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(1.0)  # py-spy attaches
            requests = 0
            latencies = []
            deadline = time.monotonic() + seconds - 1.5
            while time.monotonic() < deadline:
                started = time.perf_counter()
                call()
                latencies.append((time.perf_counter() - started) * 1e3)
                requests += 1
            _, err = recorder.communicate(timeout=seconds + 30)
            connection.close()
            # py-spy samples for `seconds`; the client ran (seconds - 2.5) of them: scale the count to the window
            window_requests = int(requests * seconds / (seconds - 2.5))
            print(
                f"\n{protocol} {steps}x{so.FEATURES}, c1: {requests} requests, p50 {statistics.median(latencies):.3f} ms "
                f"(py-spy: {err.decode(errors='replace').strip().splitlines()[-1] if err else ''})"
            )
            if os.path.exists(raw):
                analyse(raw, window_requests, top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="py-spy window per protocol")
    parser.add_argument("--protocols", default="kserve_json,kserve_binary")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no_pyspy", action="store_true")
    args = parser.parse_args()
    model_dir = args.model_dir or so.export(tempfile.mkdtemp(prefix="profile-model-"))
    print(f"model {model_dir}; 1 x {args.steps} x {so.FEATURES} float32")
    print("\nstage timings (median ms per call, one thread):")
    for label, ms in stage_timings(model_dir, args.steps):
        print(f"  {ms:8.3f}  {label}")
    if not args.no_pyspy:
        pyspy(model_dir, args.steps, args.protocols.split(","), args.seconds, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
