"""1 vs N server worker processes (``rnnkit serve --server_workers N``) on one host, with where the CPU went.

    flock /tmp/rnnkit-test.lock .venv/bin/python bench/server_workers.py [--workers 1,2] [--batching off]
        [--protocols kserve_json,kserve_binary,kserve_grpc] [--payload 100x64] [--concurrency 32]
        [--seconds 6] [--rounds 3] [--client_procs 2] [--model_dir DIR] [--haproxy 2]

The model, payloads, servers and load generator are ``bench/serve_overhead.py``'s (an LSTM(256) export, one
sequence of STEPS x 64 float32 per request; ``--client_procs`` processes of threads with one keep-alive connection
per thread for REST and one gRPC channel per client process). One server per worker count stays up for the whole
run and the cells are interleaved over ``--rounds`` rounds. Beside req/s and p50, each cell reports the CPU time the
server's processes (the supervisor and its workers) and the client processes used, in cores (CPU seconds per wall
second), the server's CPU milliseconds per request, and how busy the host's CPUs were (``/proc/stat``): when the
host is saturated, more workers cannot add throughput, whatever the server does.

``--haproxy N`` adds the other design: N single-process replicas behind the shipped HAProxy configuration
(``bench/scale_out.py``, ``deploy/haproxy``), REST cells only (its gRPC frontend serves TF Serving's API); its
server cores count the replicas and HAProxy.

Note that with ``SO_REUSEPORT`` the kernel spreads *connections*: a gRPC channel is one connection and stays on one
worker, so the gRPC cells' two channels (one per client process) may land on the same worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import serve_overhead as so  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as listing:
                todo += [int(child) for child in listing.read().split()]
        except OSError:
            pass
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        except OSError:
            pass
    return total


def host_ticks() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@contextlib.contextmanager
def balanced(replicas: int, model_dir: str, scratch: str) -> Iterator[tuple[Any, list[int]] | None]:
    """`replicas` single-process servers behind HAProxy (bench/scale_out.py's), or None when 0."""
    if not replicas:
        yield None
        return
    import scale_out

    started = [scale_out.Replica(f"r{i}", model_dir, scratch) for i in range(replicas)]
    proxy = scale_out.HAProxy(scratch, [r.backend for r in started])
    try:
        for replica in started:
            replica.start()
        proxy.start()
        yield proxy, [r.process.process.pid for r in started] + [proxy.process.pid]
    finally:
        proxy.stop()
        for replica in started:
            replica.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--batching", default="off", help="off or on (default off)")
    parser.add_argument("--protocols", default="kserve_json,kserve_binary,kserve_grpc")
    parser.add_argument("--payload", default="100x64", help="STEPSx64 (default 100x64)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per cell over all rounds (default 6)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client_procs", type=int, default=2)
    parser.add_argument("--model_dir", default=None, help="an existing export (skips the export)")
    parser.add_argument("--server_args", default="", help="more `rnnkit serve` flags")
    parser.add_argument("--haproxy", type=int, default=0, help="also N replicas behind HAProxy (REST cells)")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    protocols = args.protocols.split(",")
    steps = so.parse_payload(args.payload)
    scratch = tempfile.mkdtemp(prefix="server-workers-")
    model_dir = args.model_dir or so.export(scratch)
    modes = [f"{args.batching} w{count}" for count in counts]
    if args.haproxy:
        modes.append(f"{args.batching} haproxy{args.haproxy}")
    cells = [
        (mode, protocol)
        for mode in modes
        for protocol in protocols
        if "haproxy" not in mode or protocol not in so.GRPC_PROTOCOLS
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {cell: [] for cell in cells}
    order = random.Random(0)
    pool = so.ClientPool(max(1, args.client_procs))
    client_pids = [proc.pid for proc in pool.procs]
    began = time.perf_counter()
    try:
        with (
            so.rnnkit_servers(
                model_dir, [m for m in modes if "haproxy" not in m], scratch, args.server_args.split()
            ) as servers,
            balanced(args.haproxy, model_dir, scratch) as balancer,
        ):
            for _ in range(args.rounds):
                shuffled = list(cells)
                order.shuffle(shuffled)
                for mode, protocol in shuffled:
                    if "haproxy" in mode:
                        assert balancer is not None
                        proxy, pids = balancer
                        job = so.Job(protocol, steps, "127.0.0.1", proxy.rest_port, proxy.grpc_port, 1)
                        tree = [pid for pid in pids for pid in process_tree(pid)]
                    else:
                        server = servers[mode]
                        job = so.Job(protocol, steps, "127.0.0.1", server.rest, server.port_for(protocol), 1)
                        tree = process_tree(server.proc.pid)
                    server_before, client_before = cpu_seconds(tree), cpu_seconds(client_pids)
                    busy_before, all_before = host_ticks()
                    wall = time.monotonic()
                    run = pool.run(job, args.concurrency, args.seconds / args.rounds)
                    wall = time.monotonic() - wall
                    busy_after, all_after = host_ticks()
                    run["server_cores"] = (cpu_seconds(tree) - server_before) / wall
                    run["client_cores"] = (cpu_seconds(client_pids) - client_before) / wall
                    run["host_busy"] = (busy_after - busy_before) / max(1, all_after - all_before)
                    run["wall"] = wall
                    runs[(mode, protocol)].append(run)
    finally:
        pool.close()
    cpus = len(os.sched_getaffinity(0))
    print(
        f"\n{args.payload} LSTM(256), c{args.concurrency}, batching {args.batching}, {args.rounds} rounds x "
        f"{args.seconds / args.rounds:g} s per cell, {cpus} CPUs, {args.client_procs} client processes "
        f"({time.perf_counter() - began:.0f} s)"
    )
    print(
        f"{'server':>9} {'protocol':<14} {'req/s':>7} {'p50 ms':>7} {'server cores':>12} {'server ms/req':>13} "
        f"{'client cores':>12} {'host busy':>9}  errors"
    )
    summary = []
    for protocol in protocols:
        for mode in modes:
            if (mode, protocol) not in runs:
                continue
            cell = runs[(mode, protocol)]
            seconds = sum(r["seconds"] for r in cell)
            completed = sum(r["completed"] for r in cell)
            req_s = completed / seconds
            latencies = sorted(v for r in cell for v in r["latencies_ms"])
            server_cores = statistics.mean(r["server_cores"] for r in cell)
            client_cores = statistics.mean(r["client_cores"] for r in cell)
            busy = statistics.mean(r["host_busy"] for r in cell)
            errors = sum(r["errors"] for r in cell)
            row = {
                "workers": mode.split(" ", 1)[1],
                "protocol": protocol,
                "req_s": req_s,
                "p50_ms": statistics.median(latencies) if latencies else float("nan"),
                "server_cores": server_cores,
                "server_ms_per_request": 1e3 * server_cores / req_s if req_s else float("nan"),
                "client_cores": client_cores,
                "host_busy": busy,
                "errors": errors,
                "per_round_req_s": [r["completed"] / r["seconds"] for r in cell],
            }
            summary.append(row)
            print(
                f"{row['workers']:>9} {protocol:<14} {req_s:7.0f} {row['p50_ms']:7.2f} {server_cores:12.2f} "
                f"{row['server_ms_per_request']:13.2f} {client_cores:12.2f} {busy:8.0%}  {errors or ''}"
                + (f" {next(r['first_error'] for r in cell if r['first_error'])}" if errors else "")
            )
    os.makedirs(so.OUT, exist_ok=True)
    out_path = os.path.join(so.OUT, f"server_workers-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out_path, "w") as handle:
        json.dump({"argv": sys.argv[1:], "cpus": cpus, "cells": summary}, handle, indent=1)
    print(f"wrote {os.path.relpath(out_path, so.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
