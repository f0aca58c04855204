"""How much of rnnkit's served latency is the client and the loopback transport, which any server pays.

    .venv/bin/python bench/transport_floor.py [--seconds 6] [--rounds 3] [--payload 100x64] [--handoff]

Hold the shared lock when other suites may run: ``flock /tmp/rnnkit-test.lock .venv/bin/python bench/transport_floor.py``.

`bench/serve_overhead.py` reports overhead = served c1 p50 - the model's in-process p50. That difference holds the
Python client (building nothing: its bodies are made once, but it sends, reads and parses the answer) and the
loopback transport as well as rnnkit's front. This script measures those two alone, with *null* servers on the
same stacks rnnkit uses and the same client (`serve_overhead.make_callers`): a raw ASGI app under uvicorn with
httptools and uvloop that reads the whole body and answers a fixed KServe v2 reply, and a grpcio server (thread
pool, as rnnkit's) whose ``ModelInfer`` answers a fixed reply. In one run, interleaved, it prints per protocol at
concurrency 1: the null server's p50 (the transport floor), rnnkit's p50 (batching off), the model's in-process
p50, and rnnkit's own share = rnnkit - model - transport floor.

An *ideal* server on the same stacks runs beside them: it decodes (orjson, ``np.frombuffer``), runs the same ONNX
session where the request arrived (on the event loop; in the gRPC handler's thread) and answers the real output,
with no routing, validation, limits, metrics or thread hand-off: ideal - model is the least any server on these
stacks adds, and rnnkit - ideal what rnnkit's own layers cost beyond it.

``--handoff`` adds two REST servers that tell what the event loop -> worker thread hand-off costs: the ideal server
handing its work to a thread pool (``run_in_executor``), and ``rnnkit serve --rest_inline_ms 0`` (every request
in a worker thread, as before ``--rest_inline_ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serve_overhead as so  # noqa: E402

PROTOCOLS = ("kserve_binary", "kserve_json", "kserve_grpc")


def serve_null(rest_port: int, grpc_port: int, model_file: str = "", hop: str = "") -> None:
    """The null servers (run as a child: `python bench/transport_floor.py --serve_null REST GRPC [MODEL]`).

    With `MODEL` (an .onnx file) they are the *ideal* servers instead: each request is decoded (orjson for JSON,
    ``np.frombuffer`` for binary and raw gRPC contents), run by the ONNX session right where it arrived (on the
    event loop, in the gRPC handler's thread) and answered with the real output; no routing, no validation, no
    limits, no metrics, no batcher, no thread hand-off. What is left over the null server is the model plus the
    least decode and encode any server must do. With `hop` ("hop") the REST work runs in a thread pool instead
    (``run_in_executor`` under ``asyncio.wait_for``, as rnnkit's front did for every request): the hand-off's cost.
    """
    from concurrent import futures

    import grpc
    import numpy as np
    import orjson
    import uvicorn
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    session = so.ort_session(model_file) if model_file else None
    pool = futures.ThreadPoolExecutor(4) if hop else None

    def ideal_rest(body: bytes, header_length: int) -> bytes:
        assert session is not None
        if header_length:
            header = orjson.loads(body[:header_length])
            shape = header["inputs"][0]["shape"]
            x = np.frombuffer(body, "<f4", offset=header_length).reshape(shape)
        else:
            tensor = orjson.loads(body)["inputs"][0]
            x = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
        y = session.run(None, {so.INPUT: x})[0]
        return orjson.dumps(
            {
                "model_name": so.MODEL,
                "model_version": "1",
                "outputs": [{"name": so.OUTPUT, "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    head = json.dumps(
        {
            "model_name": so.MODEL,
            "model_version": "1",
            "outputs": [{"name": so.OUTPUT, "datatype": "FP32", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]}],
        }
    ).encode()

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        more, parts = True, []
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        answer = head
        if session is not None and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"inference-header-content-length", b"0")
            if pool is None:
                answer = ideal_rest(b"".join(parts), int(length))
            else:
                job = asyncio.get_running_loop().run_in_executor(pool, ideal_rest, b"".join(parts), int(length))
                answer = await asyncio.wait_for(job, 30)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    reply = service_pb2.ModelInferResponse(model_name=so.MODEL, model_version="1")
    reply.outputs.add(name=so.OUTPUT, datatype="FP32", shape=[1, 4])
    reply.raw_output_contents.append(np.zeros(4, np.float32).tobytes())

    class Null(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 (the proto's name)
            if session is None:
                return reply
            x = np.frombuffer(request.raw_input_contents[0], "<f4").reshape(tuple(request.inputs[0].shape))
            y = session.run(None, {so.INPUT: x})[0]
            answer = service_pb2.ModelInferResponse(model_name=so.MODEL, model_version="1")
            answer.outputs.add(name=so.OUTPUT, datatype="FP32", shape=list(y.shape))
            answer.raw_output_contents.append(y.tobytes())
            return answer

    limit = 64 * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(8),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Null(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    server.start()
    uvicorn.run(app, host="127.0.0.1", port=rest_port, log_level="error", http="httptools", loop="uvloop")


def p50(job: so.Job, seconds: float) -> list[float]:
    callers, close = so.make_callers(job, 1)
    try:
        return so.time_calls(callers[0], seconds)
    finally:
        close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per cell over all rounds (6)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payload", default="100x64", help="STEPSx64 (100x64)")
    parser.add_argument(
        "--handoff",
        action="store_true",
        help="also the ideal server with a thread hand-off, and rnnkit with --rest_inline_ms 0 (REST rows only)",
    )
    parser.add_argument("--serve_null", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_null:
        serve_null(int(args.serve_null[0]), int(args.serve_null[1]), *args.serve_null[2:])
        return 0
    steps, share = so.parse_payload(args.payload), args.seconds / args.rounds
    children: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        model_dir = so.export(scratch)
        model_file = so.onnx_file(model_dir)
        session = so.ort_session(model_file)
        ports: dict[str, tuple[int, int]] = {}
        nulls = [("null", []), ("ideal", [model_file])] + ([("ideal+hop", [model_file, "hop"])] if args.handoff else [])
        for who, extra in nulls:
            ports[who] = (so.free_port(), so.free_port())
            children[who] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve_null", *map(str, ports[who]), *extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(children[who].wait, 10)
            stack.callback(children[who].terminate)
        ours = {"rnnkit": stack.enter_context(so.rnnkit_servers(model_dir, ["off"], scratch))["off"]}
        if args.handoff:
            threads = so.rnnkit_servers(model_dir, ["off"], scratch, ["--rest_inline_ms", "0"], tag="-threads")
            ours["rnnkit threads"] = stack.enter_context(threads)["off"]
        for who, child in children.items():
            so.wait_ready(child, "127.0.0.1", ports[who][0], (ports[who][1],), os.devnull, ready_line=None)
        for who, server in ours.items():
            ports[who] = (server.rest, server.kserve_grpc)
        cells: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            cells.setdefault(("model", ""), []).extend(so.in_process(session, steps, share)[0])
            for protocol in PROTOCOLS:
                for who, (rest, grpc_port) in ports.items():
                    if who in ("ideal+hop", "rnnkit threads") and protocol in so.GRPC_PROTOCOLS:
                        continue  # the hand-off variants differ on REST only
                    job = so.Job(protocol, steps, "127.0.0.1", rest, grpc_port, 1)
                    cells.setdefault((who, protocol), []).extend(p50(job, share))
    model = statistics.median(cells[("model", "")])
    print(
        f"\n{args.payload}, concurrency 1, p50 ms; model in process {model:.3f} ms ({args.rounds} rounds, "
        f"{args.seconds:g} s per cell)"
    )
    print(
        f"{'protocol':14} {'null':>7} {'ideal':>7} {'rnnkit':>7} {'overhead':>9} {'ideal ovh':>9} "
        f"{'rnnkit own':>10} {'over ideal':>10}"
    )
    for protocol in PROTOCOLS:
        floor = statistics.median(cells[("null", protocol)])
        ideal = statistics.median(cells[("ideal", protocol)])
        mine = statistics.median(cells[("rnnkit", protocol)])
        print(
            f"{protocol:14} {floor:7.3f} {ideal:7.3f} {mine:7.3f} {mine - model:9.3f} {ideal - model:9.3f} "
            f"{mine - model - floor:10.3f} {mine - ideal:10.3f}"
        )
    print(
        "overhead = rnnkit - model (serve_overhead's column); ideal ovh = the ideal server - model; "
        "rnnkit own = overhead - the null server's p50 (client + loopback transport on the same stacks); "
        "over ideal = rnnkit - the ideal server"
    )
    if args.handoff:
        print(
            f"\nthe thread hand-off, REST, p50 ms over the model\n{'protocol':14} {'ideal':>7} {'ideal+hop':>9} "
            f"{'rnnkit':>7} {'rnnkit threads':>14}"
        )
        for protocol in PROTOCOLS:
            if protocol in so.GRPC_PROTOCOLS:
                continue
            row = [
                statistics.median(cells[(who, protocol)]) - model
                for who in ("ideal", "ideal+hop", "rnnkit", "rnnkit threads")
            ]
            print(f"{protocol:14} {row[0]:7.3f} {row[1]:9.3f} {row[2]:7.3f} {row[3]:14.3f}")
        print("ideal+hop: the ideal server with run_in_executor; rnnkit threads: rnnkit serve --rest_inline_ms 0")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
