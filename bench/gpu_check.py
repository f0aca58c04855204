"""GPU check: ONNX Runtime CUDA against ONNX Runtime CPU and PyTorch cuDNN, in process and served.

Two stages, because the GPU machine this is for has no TensorFlow, Keras or network, and exporting needs them:

    .venv/bin/python bench/gpu_check.py prepare OUTDIR    # here: Keras models, export, weights, references
    python3 bench/gpu_check.py run OUTDIR [--cell_seconds 0.4] [--serve_seconds 3] [--batches 1,32,256]

``prepare`` builds four models of rnnkit layers, (batch, time, 64) -> Dense(4): LSTM(256), GRU(256),
Bidirectional(LSTM(256)) and a 4-layer residual StackedRNN of LSTM(256), exports each with
``python -m rnnkit_cli export --formats onnx --quantize fp16`` into OUTDIR/models/<name>/1 and keeps in
OUTDIR/ref/<name>.npz the Keras weights (for the same torch.nn modules) and Keras's output on a fixed input.

``run`` needs numpy and onnxruntime (onnxruntime-gpu for the CUDA columns), optionally torch, and to serve the
``[serve]`` packages (+ tritonclient, grpcio-health-checking for gRPC); it imports no rnnkit module. (a) In process:
p50 ms of one call, host array in and out, of ONNX Runtime CPU, ONNX Runtime CUDA on model.onnx and
model.fp16.onnx, torch.nn.LSTM/GRU on cuDNN in fp32 and fp16, at batch 1/32/256 x 100 steps, and each one's
max |diff| to Keras. (b) Served: the LSTM under ``python -m rnnkit_cli serve`` on CPU and on GPU (fp32, fp16),
dynamic batching on, driven over KServe v2 REST (binary tensors) and KServe v2 gRPC at concurrency 1 and 32 for
``--serve_seconds`` each, one answer per server and protocol checked against Keras. One markdown table is printed
and written to $OUT (else OUTDIR) as gpu_check.md, with gpu_check.json and the servers' logs. It fails soft: no
torch, no CUDA provider (said loudly), a server that does not start: those cells say so, the rest runs. Exit 1
if a parity check fails.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ("lstm", "gru", "bilstm", "stack4")
UNITS, FEATURES, STEPS, CLASSES, REF_BATCH = 256, 64, 100, 4, 8
RUNNERS = ("ORT CPU", "ORT CUDA fp32", "ORT CUDA fp32 IO binding", "ORT CUDA fp16", "torch fp32", "torch fp16")
# parity: max |runner - Keras| <= tolerance x max(1, max |Keras|); GPU fp32 may use TF32 math (10-bit mantissa)
TOLERANCE = {"ORT CPU": 1e-4, "ORT CUDA fp32": 5e-3, "ORT CUDA fp32 IO binding": 5e-3, "torch fp32": 5e-3,
             "ORT CUDA fp16": 3e-2, "torch fp16": 3e-2}
CPU_THREADS = min(16, os.cpu_count() or 1)
SERVED = os.environ.get("GPU_CHECK_SERVED", "lstm")  # the served model (run sets it; spawned clients inherit it)
# (label, --device, --variant, --intra_op_threads, batch threads, --server_workers); batching merges up to 32 rows.
# The multi-worker servers run only where the checkout's server has --server_workers.
WORKERS = 8
SERVERS = (("CPU", "cpu", "fp32", 4, 4, 1), ("GPU fp32", "gpu", "fp32", 1, 2, 1), ("GPU fp16", "gpu", "fp16", 1, 2, 1),
           (f"CPU x{WORKERS}", "cpu", "fp32", 2, 2, WORKERS), (f"GPU fp32 x{WORKERS}", "gpu", "fp32", 1, 2, WORKERS))
CONCURRENCY = (1, 32)
CLIENT_PROCESSES = 4  # the load comes from this many processes (threads in each), so the client is not the limit
Runner = Callable[[np.ndarray], np.ndarray]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- prepare (here)
def prepare(outdir: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO))
    import keras

    from rnnkit import layers as rk

    for sub in ("models", "ref"):
        shutil.rmtree(outdir / sub, ignore_errors=True)
        (outdir / sub).mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            keras.utils.set_random_seed(0)
            if name == "bilstm":
                rnn = rk.Bidirectional(rk.LSTM(UNITS), name="rnn")
                cells = [rnn.forward_layer.cell, rnn.backward_layer.cell]
            elif name == "stack4":
                rnn = rk.StackedRNN(UNITS, num_layers=4, connection="residual", name="rnn")
                cells = [layer.cell for layer in rnn.rnn_layers]
            else:
                rnn = (rk.GRU if name == "gru" else rk.LSTM)(UNITS, name="rnn")
                cells = [rnn.cell]
            inp = keras.Input((None, FEATURES), name="x")
            model = keras.Model(inp, keras.layers.Dense(CLASSES, name="y")(rnn(inp)))
            rng = np.random.default_rng(1)
            for weight in model.weights:  # non-zero biases, so that a bias in the wrong place shows
                if "bias" in weight.path:
                    weight.assign(np.asarray(weight) + rng.normal(0, 0.1, weight.shape).astype("float32"))
            x = rng.normal(size=(REF_BATCH, STEPS, FEATURES)).astype("float32")
            dense = model.get_layer("y")
            ref = {"x": x, "y": np.asarray(model(x)), "dense_kernel": dense.kernel, "dense_bias": dense.bias}
            for i, cell in enumerate(cells):
                ref |= {f"cell{i}_kernel": cell.kernel, f"cell{i}_recurrent": cell.recurrent_kernel, f"cell{i}_bias": cell.bias}
            arrays: dict[str, Any] = {k: np.asarray(v) for k, v in ref.items()}
            np.savez(outdir / "ref" / f"{name}.npz", **arrays)
            model.save(path := os.path.join(tmp, f"{name}.keras"))
            # untrained Dense(4) scores are near-tied: the fp16 gate's arg-max part is off, its max|diff| part stays
            command = ["-m", "rnnkit_cli", "export", path, "--model_base_path", str(outdir / "models"), "--model_name",
                       name, "--version", "1", "--formats", "onnx", "--streaming", "off", "--quantize", "fp16",
                       "--variant_min_agreement", "0"]
            done = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True)
            print(done.stdout.strip(), done.stderr.strip(), sep="\n", flush=True)
            if done.returncode != 0 or not (outdir / "models" / name / "1" / "model.fp16.onnx").is_file():
                raise SystemExit(f"export of {name} failed or published no fp16 variant (exit {done.returncode})")
    (outdir / "models" / "models.config").unlink(missing_ok=True)  # names this machine's paths; run needs none
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    info = {"prepared": now(), "git": git.stdout.strip(), "keras": keras.__version__, "models": MODELS}
    (outdir / "prepare.json").write_text(json.dumps(info, indent=1))
    size = sum(f.stat().st_size for f in outdir.rglob("*") if f.is_file())
    print(f"prepared {outdir}: {size / 2**20:.1f} MiB")


# ------------------------------------------------------------------------------------------- run: in process
def p50_ms(fn: Callable[[], Any], seconds: float) -> float:
    fn(), fn()  # warm-up: allocations, cuDNN plans
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 5 or (time.perf_counter() - start < seconds and len(samples) < 2000):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def ort_runner(ort: Any, path: Path, cuda: bool, threads: int = 1) -> Runner | str:
    """A session's run on `path`, or why there is none."""
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"CUDA provider not available (onnxruntime {ort.__version__}: {ort.get_available_providers()})"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # missing CUDA/cuDNN libraries, bad file
        return f"session failed: {type(error).__name__}: {str(error)[:300]}"
    if cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        return f"CUDA provider did not initialise (session providers {session.get_providers()})"
    return lambda x: session.run(None, {"x": x})[0]


def ort_iobinding_runner(ort: Any, path: Path) -> Runner | str:
    """ORT CUDA with IO binding: the input copied to the device as an OrtValue, the output bound on the
    device and copied back once (the host array in and out, as `run` does, so the times compare)."""
    runner = ort_runner(ort, path, True)
    if isinstance(runner, str):
        return runner
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[("CUDAExecutionProvider", {"device_id": 0})])
    output = session.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        binding = session.io_binding()
        binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(output, "cuda", 0)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


def torch_params(name: str, ref: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The state dict of each torch.nn.LSTM/GRU from the Keras weights. Gates: Keras LSTM i,f,c,o = torch i,f,g,o;
    Keras GRU z,r,h -> torch r,z,n, with reset_after's bias (2, 3H) = [input; recurrent] = torch's b_ih, b_hh."""
    modules, cell = [], 0
    for _ in range(4 if name == "stack4" else 1):
        params: dict[str, np.ndarray] = {}
        for suffix in ("", "_reverse") if name == "bilstm" else ("",):
            k, r, b = (ref[f"cell{cell}_{part}"] for part in ("kernel", "recurrent", "bias"))
            if name == "gru":
                k, r, b = (np.concatenate([np.split(a, 3, -1)[j] for j in (1, 0, 2)], -1) for a in (k, r, b))
                b_ih, b_hh = b[0], b[1]
            else:
                b_ih, b_hh = b, np.zeros_like(b)
            for field, value in (("weight_ih", k.T), ("weight_hh", r.T), ("bias_ih", b_ih), ("bias_hh", b_hh)):
                params[f"{field}_l0{suffix}"] = np.ascontiguousarray(value)
            cell += 1
        modules.append(params)
    return modules


def torch_runner(torch: Any, name: str, ref: dict[str, np.ndarray], half: bool) -> Runner:
    device, dtype = torch.device("cuda"), (torch.float16 if half else torch.float32)
    nets = []
    for i, params in enumerate(torch_params(name, ref)):
        net = (torch.nn.GRU if name == "gru" else torch.nn.LSTM)(
            FEATURES if i == 0 else UNITS, UNITS, batch_first=True, bidirectional=name == "bilstm")
        net.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
        nets.append(net.to(device, dtype).eval())
    kernel, bias = (torch.from_numpy(ref[k]).to(device, dtype) for k in ("dense_kernel", "dense_bias"))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            h = torch.from_numpy(x).to(device, dtype)
            for i, net in enumerate(nets[:-1]):  # residual stack: x_{l+1} = f_l(x_l) + x_l for 1 <= l < top
                h = net(h)[0] + (h if i > 0 else 0)
            state = nets[-1](h)[1]
            state = state if name == "gru" else state[0]
            last = torch.cat([state[0], state[1]], -1) if name == "bilstm" else state[-1]
            return (last @ kernel + bias).float().cpu().numpy()

    return run


def parity(got: np.ndarray, want: np.ndarray, tolerance: float) -> tuple[float, bool]:
    diff = float(np.abs(got.astype(np.float64) - want).max()) if got.shape == want.shape else float("inf")
    return diff, diff <= tolerance * max(1.0, float(np.abs(want).max()))


def loud(notes: list[str], message: str) -> None:
    if message not in notes:
        notes.append(message)
        print(f"\n{'!' * 100}\n!!! {message}\n{'!' * 100}\n", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- run: served
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    """PYTHONPATH for `python -m rnnkit_cli serve` from a checkout that is not pip-installed: the repo root, and a
    folder of links rnnkit_serving -> serving, rnnkit_export -> export if those names do not import (or GPU_CHECK_SHIM)."""
    env, paths = dict(os.environ), [str(REPO)]
    probe = subprocess.run([sys.executable, "-c", "import rnnkit_serving"], cwd=REPO, capture_output=True,
                           env={**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])})
    if probe.returncode != 0 or env.get("GPU_CHECK_SHIM"):
        shim = Path(tempfile.mkdtemp(prefix="rnnkit-shim-"))
        for link, folder in (("rnnkit_serving", "serving"), ("rnnkit_export", "export")):
            (shim / link).symlink_to(REPO / folder, target_is_directory=True)
        paths.insert(0, str(shim))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def start_server(label: str, device: str, variant: str, threads: int, batch_threads: int, workers: int, folder: Path,
                 out: Path, env: dict[str, str], grpc: bool) -> dict[str, Any]:
    """A `rnnkit serve` child process, up and answering metadata; or {"error": why not}."""
    tag = label.lower().replace(" ", "-")
    batching = Path(env["GPU_CHECK_TMP"]) / f"batching-{tag}.config"
    batching.write_text(f"max_batch_size {{ value: 32 }}\nbatch_timeout_micros {{ value: 0 }}\n"
                        f"num_batch_threads {{ value: {batch_threads} }}\nmax_enqueued_batches {{ value: 1000 }}\n")
    rest, grpc_port = free_port(), (free_port() if grpc else 0)
    flags = ["--model_name", SERVED, "--model_base_path", str(folder / "models" / SERVED), "--port", "0",
             "--rest_api_port", str(rest), "--grpc_inference_port", str(grpc_port), "--device", device,
             "--strict_device", "--variant", variant, "--intra_op_threads", str(threads), "--enable_batching",
             "--batching_parameters_file", str(batching), "--rest_workers", "40", "--grpc_workers", "40",
             "--file_system_poll_wait_seconds", "0", "--drain_seconds", "2"]
    if workers > 1:
        flags += ["--server_workers", str(workers)]
    with open(out / f"server-{tag}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rnnkit_cli", "serve", *flags], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", rest, timeout=2)
            conn.request("GET", f"/v1/models/{SERVED}/metadata")
            reply = conn.getresponse()
            if reply.status == 200:
                meta = reply.read().decode()
                facts = meta[meta.find('"providers"'):][:120] if '"providers"' in meta else "?"
                return {"proc": proc, "rest": rest, "grpc": grpc_port, "facts": facts}
        except OSError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    tail = (out / f"server-{tag}.log").read_text()[-600:].strip().replace("\n", " | ")
    return {"error": f"server {label} did not start (exit {proc.returncode}): {tail}"}


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rest_client(port: int, x: np.ndarray) -> Callable[[], np.ndarray]:
    """KServe v2 REST infer with the binary tensor extension both ways, on one keep-alive connection."""
    head = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    body, conn = head + x.tobytes(), http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call() -> np.ndarray:
        conn.request("POST", f"/v2/models/{SERVED}/infer", body, headers)
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"REST {reply.status}: {data[:200]!r}")
        size = int(reply.getheader("Inference-Header-Content-Length") or len(data))
        return np.frombuffer(data[size:], np.float32).reshape(json.loads(data[:size])["outputs"][0]["shape"])

    return call


def grpc_client(port: int, x: np.ndarray) -> Callable[[], np.ndarray]:
    """KServe v2 gRPC ModelInfer with raw_input_contents, on one channel."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))
    request = service_pb2.ModelInferRequest(model_name=SERVED, inputs=[tensor], raw_input_contents=[x.tobytes()])

    def call() -> np.ndarray:
        reply = stub.ModelInfer(request, timeout=60)
        return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(list(reply.outputs[0].shape))

    return call


def new_client(kind: str, port: int) -> Callable[[], np.ndarray]:
    """A client of the served LSTM on one connection, sending the fixed 1 x STEPS x FEATURES sequence."""
    x = np.random.default_rng(7).normal(size=(1, STEPS, FEATURES)).astype(np.float32)
    return rest_client(port, x) if kind == "REST" else grpc_client(port, x)


def _client_process(kind: str, port: int, threads: int, seconds: float, ready: Any, go: Any, start: Any,
                    results: Any) -> None:
    """One load process: `threads` threads, each with its own connection, calling back to back for `seconds`
    from the start time the parent sets (time.monotonic is one clock for all processes)."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    calls: list[Callable[[], Any] | None] = []
    for i in range(threads):
        try:
            call = new_client(kind, port)
            call(), call()  # warm-up: connection, first batches
            calls.append(call)
        except Exception:
            calls.append(None)
            errors[i] += 1
    ready.put(1)
    go.wait()

    def worker(i: int) -> None:
        call = calls[i]
        while call is not None and time.monotonic() < start.value + seconds:
            t0 = time.perf_counter()
            try:
                call()
                latencies[i].append((time.perf_counter() - t0) * 1e3)
            except Exception:
                errors[i] += 1
                time.sleep(0.01)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(seconds + 120)
    results.put(([ms for mine in latencies for ms in mine], sum(errors)))


def drive(kind: str, port: int, concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` connections calling back to back for `seconds`, spread over up to CLIENT_PROCESSES
    processes (spawned: the parent holds gRPC channels, which do not survive a fork)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = min(CLIENT_PROCESSES, concurrency)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ready, results, go, start = context.Queue(), context.Queue(), context.Event(), context.Value("d", 0.0)
    children = [context.Process(target=_client_process, args=(kind, port, n, seconds, ready, go, start, results),
                                daemon=True) for n in shares]
    for child in children:
        child.start()
    for _ in children:
        ready.get(timeout=120)
    start.value = time.monotonic()
    go.set()
    done: list[float] = []
    errors = 0
    for _ in children:
        mine, failed = results.get(timeout=seconds + 180)
        done += mine
        errors += failed
    wall = time.monotonic() - start.value
    for child in children:
        child.join(10)
    return {"rps": len(done) / wall, "p50_ms": statistics.median(done) if done else float("nan"), "errors": errors}


def serve_rows(folder: Path, out: Path, seconds: float, results: dict[str, Any], notes: list[str],
               failures: list[str]) -> list[list[str]]:
    env = server_env()
    ref = dict(np.load(folder / "ref" / f"{SERVED}.npz"))
    try:
        from tritonclient.grpc import service_pb2  # noqa: F401

        grpc_ok = True
    except Exception as error:  # tritonclient raises RuntimeError when its grpc extra is missing
        grpc_ok = False
        notes.append(f"KServe gRPC skipped: {type(error).__name__}: {error}")
    cells: dict[str, dict[str, str]] = {}
    usage = subprocess.run([sys.executable, "-m", "rnnkit_cli", "serve", "--help"], cwd=REPO, env=env,
                           capture_output=True, text=True).stdout
    has_workers = "--server_workers" in usage
    with tempfile.TemporaryDirectory() as tmp:
        env["GPU_CHECK_TMP"] = tmp
        for label, device, variant, threads, batch_threads, workers in SERVERS:
            if workers > 1 and not has_workers:
                notes.append(f"{label}: skipped, this checkout's server has no --server_workers")
                continue
            server = start_server(label, device, variant, threads, batch_threads, workers, folder, out, env, grpc_ok)
            if "error" in server and grpc_ok:  # once more without the gRPC front: its packages may be what failed
                notes.append(f"{label}: did not start with its gRPC front ({server['error'][-400:]}); trying REST only")
                server = start_server(label, device, variant, threads, batch_threads, workers, folder, out, env, False)
            if "error" in server:
                loud(notes, server["error"])
                results["served"].setdefault(SERVED, {})[label] = server
                continue
            record: dict[str, Any] = {"facts": server["facts"]}
            clients = {"REST": lambda x: rest_client(server["rest"], x)}
            ports = {"REST": server["rest"], "gRPC": server["grpc"]}
            if server["grpc"]:
                clients["gRPC"] = lambda x: grpc_client(server["grpc"], x)
            tolerance = TOLERANCE["ORT CPU" if device == "cpu" else f"ORT CUDA {variant}"]
            for proto, client in clients.items():
                try:
                    diff, ok = parity(client(ref["x"])(), ref["y"], tolerance)
                except Exception as error:
                    diff, ok = float("inf"), False
                    notes.append(f"{label} {proto} parity request failed: {error}")
                record[f"{proto} parity"] = diff
                cells.setdefault(f"{proto} parity: max abs diff vs Keras", {})[label] = f"{diff:.1e}" + " FAIL" * (not ok)
                if not ok:
                    failures.append(f"served {label} {proto}: max|diff| {diff:.2e}")
                for conc in CONCURRENCY:
                    stats = record[f"{proto} c{conc}"] = drive(proto, ports[proto], conc, seconds)
                    text = f"{stats['rps']:.0f} req/s, {stats['p50_ms']:.2f} ms" + f", {stats['errors']} errors" * (
                        stats["errors"] > 0)
                    cells.setdefault(f"{proto} c{conc}: req/s, p50 ms", {})[label] = text
                    print(f"served {label} {proto} c{conc}: {text}", flush=True)
            stop_server(server["proc"])
            results["served"].setdefault(SERVED, {})[label] = record
    rows = []
    ratios = (("GPU fp32", "CPU"), (f"GPU fp32 x{WORKERS}", f"CPU x{WORKERS}"), (f"GPU fp32 x{WORKERS}", "CPU"))
    for case, by_server in cells.items():
        speeds = []
        for top, bottom in ratios:
            gpu, cpu = (results["served"].get(SERVED, {}).get(s, {}).get(case.split(":")[0]) for s in (top, bottom))
            ok = isinstance(cpu, dict) and isinstance(gpu, dict) and cpu["rps"] > 0
            speeds.append(f"{gpu['rps'] / cpu['rps']:.1f}x" if ok else "")
        rows.append([case, *(by_server.get(s[0], "-") for s in SERVERS), *speeds])
    header = [f"served `{SERVED}`", *(s[0] for s in SERVERS), *(f"{top} / {bottom}" for top, bottom in ratios)]
    return [header, ["---"] * len(header), *rows]


# ------------------------------------------------------------------------------------------- run
def run(folder: Path, cell_seconds: float, serve_seconds: float, batches: list[int], serve: bool,
        served_models: list[str]) -> int:
    out = Path(os.environ.get("OUT") or folder)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    try:
        import torch  # before onnxruntime, so that ORT finds torch's CUDA/cuDNN libraries loaded

        if not torch.cuda.is_available():
            notes.append(f"torch {torch.__version__} sees no CUDA device: torch columns skipped")
            torch = None
    except ImportError:
        torch = None
        notes.append("PyTorch not installed: torch columns skipped")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels torch brought (a no-op for what is loaded)
        except Exception as error:
            notes.append(f"onnxruntime.preload_dlls() failed: {error}")
    smi = shutil.which("nvidia-smi")
    query = [str(smi), "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    facts = {"date": now(), "gpu": subprocess.run(query, capture_output=True, text=True).stdout.strip() if smi else "none",
             "onnxruntime": f"{ort.__version__} {ort.get_available_providers()}", "cpus": os.cpu_count(),
             "torch": f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
             if torch else "-", "python": platform.python_version(), "prepared": json.dumps(json.loads((folder / "prepare.json").read_text()))}
    results: dict[str, Any] = {"facts": facts, "inproc": {}, "parity": {}, "served": {}, "notes": notes}
    rows: list[list[str]] = []
    failures: list[str] = []
    for name in MODELS:
        ref = dict(np.load(folder / "ref" / f"{name}.npz"))
        version = folder / "models" / name / "1"
        # ORT CPU: the faster of CPU_THREADS and 1 intra-op threads at each batch (one wins at small batches)
        runners: dict[str, Runner | str] = {
            "ORT CPU": ort_runner(ort, version / "model.onnx", False, CPU_THREADS),
            "ORT CPU 1t": ort_runner(ort, version / "model.onnx", False, 1) if CPU_THREADS > 1 else "-",
            "ORT CUDA fp32": ort_runner(ort, version / "model.onnx", True),
            "ORT CUDA fp32 IO binding": ort_iobinding_runner(ort, version / "model.onnx"),
            "ORT CUDA fp16": ort_runner(ort, version / "model.fp16.onnx", True),
        }
        for label, half in (("torch fp32", False), ("torch fp16", True)):
            try:
                runners[label] = torch_runner(torch, name, ref, half) if torch else "no torch with CUDA"
            except Exception as error:
                runners[label] = f"torch failed: {type(error).__name__}: {error}"
        for label, runner in runners.items():
            if isinstance(runner, str) and runner != "-" and (torch or not label.startswith("torch")):
                loud(notes, f"{label}: {runner}")
        times: dict[str, dict[int, float]] = {label: {} for label in runners}
        for batch in batches:
            x = np.random.default_rng(batch).normal(size=(batch, STEPS, FEATURES)).astype(np.float32)
            for label, runner in runners.items():
                if not isinstance(runner, str):
                    times[label][batch] = p50_ms(functools.partial(runner, x), cell_seconds)
            cells = {r: f"{times[r][batch]:.3f}" if batch in times[r] else "-" for r in RUNNERS}
            cpu, threads = min((times[r][batch], t) for r, t in (("ORT CPU", CPU_THREADS), ("ORT CPU 1t", 1)) if batch in times[r])
            cells["ORT CPU"] = f"{cpu:.3f} ({threads} thr)"
            cuda, th = times["ORT CUDA fp32"].get(batch), times["torch fp32"].get(batch)
            rows.append([name, f"B {batch}, p50 ms", *cells.values(), f"{cpu / cuda:.1f}x" if cuda else "-",
                         f"{th / cuda:.2f}x" if th and cuda else "-"])
            print(" | ".join(rows[-1]), flush=True)
        diffs: dict[str, float] = {}
        texts = dict.fromkeys(RUNNERS, "-")
        for label, runner in runners.items():
            if not isinstance(runner, str) and label in TOLERANCE:
                diffs[label], ok = parity(runner(ref["x"]), ref["y"], TOLERANCE[label])
                texts[label] = f"{diffs[label]:.1e}" + " FAIL" * (not ok)
                failures += [] if ok else [f"{name} {label}: max|diff| {diffs[label]:.2e}"]
        rows.append([name, f"max abs diff vs Keras (B {REF_BATCH})", *texts.values(), "", ""])
        results["inproc"][name], results["parity"][name] = times, diffs
        runners.clear()
    if torch is not None:
        torch.cuda.empty_cache()
    global SERVED
    served: list[list[str]] = []
    for model in served_models if serve else []:
        SERVED = os.environ["GPU_CHECK_SERVED"] = model
        served += ([] if not served else [[]]) + serve_rows(folder, out, serve_seconds, results, notes, failures)
    header = ["model", "case", *RUNNERS, "CUDA fp32 speed-up vs CPU", "ORT CUDA fp32 speed-up vs torch fp32"]
    table = "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])
    if served:
        table += "\n\n" + "\n".join("| " + " | ".join(r) + " |" if r else "" for r in served)
    legend = (f"In process: p50 ms of one call, host numpy array in and out; T={STEPS}, F={FEATURES}, H={UNITS}; ORT CPU "
              f"the faster of {CPU_THREADS} and 1 intra-op threads, ORT CUDA default provider options. Speed-ups are time ratios (>1: CUDA, "
              f"resp. ORT, faster); IO binding: input copied to the device as an OrtValue, output bound on the device. "
              f"Served: {served_models}, one row per request (KServe v2 REST binary / gRPC raw), load from {CLIENT_PROCESSES} "
              f"client processes; servers {SERVERS}: label, device, variant, intra-op threads, batch threads, "
              f"--server_workers; --enable_batching, max 32 rows; ratios of req/s. Parity tolerances, x max(1, max|Keras|): {TOLERANCE}.")
    lines = [f"# rnnkit GPU check, {facts['date']}", "", *(f"- {k}: {v}" for k, v in facts.items() if k != "date"),
             *(f"- **NOTE: {n}**" for n in notes), "", table, "", legend, "",
             "Parity: " + ("all within tolerance" if not failures else "**FAILED**: " + "; ".join(failures))]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({**results, "failures": failures}, indent=1, default=str))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("prepare", "run"))
    parser.add_argument("outdir", type=Path, help="the prepared folder (models/, ref/)")
    parser.add_argument("--cell_seconds", type=float, default=0.4, help="time budget of an in-process cell (0.4)")
    parser.add_argument("--serve_seconds", type=float, default=3.0, help="load per served cell (3)")
    parser.add_argument("--batches", default="1,32,256", help="in-process batch sizes (1,32,256)")
    parser.add_argument("--skip_serve", action="store_true", help="the in-process part only")
    parser.add_argument("--served", default="lstm", help="models served, one table each (lstm)")
    parser.add_argument("--concurrency", default="1,32", help="client connections per served cell (1,32)")
    args = parser.parse_args()
    if args.stage == "prepare":
        prepare(args.outdir.resolve())
        return 0
    batches = [int(b) for b in args.batches.split(",")]
    global CONCURRENCY
    CONCURRENCY = tuple(int(c) for c in args.concurrency.split(","))
    served = [m for m in args.served.split(",") if m]
    return run(args.outdir.resolve(), args.cell_seconds, args.serve_seconds, batches, not args.skip_serve, served)


if __name__ == "__main__":
    raise SystemExit(main())
