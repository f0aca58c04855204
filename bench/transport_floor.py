"""How much of rnnkit's served latency is the client and the loopback transport, which any server pays.

    .venv/bin/python bench/transport_floor.py [--seconds 6] [--rounds 3] [--payload 100x64]

Hold the shared lock when other suites may run: ``flock /tmp/rnnkit-test.lock .venv/bin/python bench/transport_floor.py``.

`bench/serve_overhead.py` reports overhead = served c1 p50 - the model's in-process p50. That difference holds the
Python client (building nothing: its bodies are made once, but it sends, reads and parses the answer) and the
loopback transport as well as rnnkit's front. This script measures those two alone, with *null* servers on the
same stacks rnnkit uses and the same client (`serve_overhead.make_callers`): a raw ASGI app under uvicorn with
httptools and uvloop that reads the whole body and answers a fixed KServe v2 reply, and a grpcio server (thread
pool, as rnnkit's) whose ``ModelInfer`` answers a fixed reply. In one run, interleaved, it prints per protocol at
concurrency 1: the null server's p50 (the transport floor), rnnkit's p50 (batching off), the model's in-process
p50, and rnnkit's own share = rnnkit - model - transport floor.
"""

from __future__ import annotations

import argparse
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


def serve_null(rest_port: int, grpc_port: int) -> None:
    """The null servers (run as a child: `python bench/transport_floor.py --serve_null REST GRPC`)."""
    from concurrent import futures

    import grpc
    import numpy as np
    import uvicorn
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    head = json.dumps(
        {"model_name": so.MODEL, "model_version": "1",
         "outputs": [{"name": so.OUTPUT, "datatype": "FP32", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]}]}
    ).encode()

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(head)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": head})

    reply = service_pb2.ModelInferResponse(model_name=so.MODEL, model_version="1")
    reply.outputs.add(name=so.OUTPUT, datatype="FP32", shape=[1, 4])
    reply.raw_output_contents.append(np.zeros(4, np.float32).tobytes())

    class Null(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 (the proto's name)
            return reply

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
    parser.add_argument("--serve_null", nargs=2, type=int, metavar=("REST", "GRPC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_null:
        serve_null(*args.serve_null)
        return 0
    steps, share = so.parse_payload(args.payload), args.seconds / args.rounds
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = so.export(scratch)
        session = so.ort_session(so.onnx_file(model_dir))
        null_rest, null_grpc = so.free_port(), so.free_port()
        null = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve_null", str(null_rest),
                                 str(null_grpc)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with so.rnnkit_servers(model_dir, ["off"], scratch) as servers:
                so.wait_ready(null, "127.0.0.1", null_rest, (null_grpc,), os.devnull, ready_line=None)
                server = servers["off"]
                cells: dict[tuple[str, str], list[float]] = {}
                for _ in range(args.rounds):
                    cells.setdefault(("model", ""), []).extend(so.in_process(session, steps, share)[0])
                    for protocol in PROTOCOLS:
                        for who, rest, grpc_port in (
                            ("null", null_rest, null_grpc),
                            ("rnnkit", server.rest, server.port_for(protocol)),
                        ):
                            job = so.Job(protocol, steps, "127.0.0.1", rest, grpc_port, 1)
                            cells.setdefault((who, protocol), []).extend(p50(job, share))
        finally:
            null.terminate()
            null.wait(10)
    model = statistics.median(cells[("model", "")])
    print(f"\n{args.payload}, concurrency 1, p50 ms; model in process {model:.3f} ms ({args.rounds} rounds, "
          f"{args.seconds:g} s per cell)")
    print(f"{'protocol':14} {'null server':>11} {'rnnkit':>8} {'overhead':>9} {'rnnkit own':>11}")
    for protocol in PROTOCOLS:
        floor = statistics.median(cells[("null", protocol)])
        ours = statistics.median(cells[("rnnkit", protocol)])
        print(f"{protocol:14} {floor:11.3f} {ours:8.3f} {ours - model:9.3f} {ours - model - floor:11.3f}")
    print("overhead = rnnkit - model (serve_overhead's column); rnnkit own = overhead - the null server's p50 "
          "(client + loopback transport on the same stacks)")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
