"""Served c1 overhead of two revisions of rnnkit side by side: an older commit against the working tree.

    .venv/bin/python bench/serve_ab.py --base REV [--rounds 8] [--seconds 1.5] [--protocols kserve_binary,kserve_json]

Hold the shared lock when other suites may run: ``flock /tmp/rnnkit-test.lock .venv/bin/python bench/serve_ab.py ...``.

Run-to-run noise on a small VM (±0.1-0.3 ms at concurrency 1) is larger than most single changes to the front, so
one run of `bench/serve_overhead.py` per revision cannot tell them apart. This script serves the same export from
both revisions at once (``rnnkit serve``, batching off; the base one from a temporary ``git worktree`` of `REV`,
imported ahead of the installed checkout) and alternates between them in short cells: each round measures the
model in process, then every protocol on the base server and on the working tree's, so both see the same state of
the machine. It prints per protocol the median overhead (p50 - that round's in-process p50) of each revision and the
median of the per-round differences (base - new: > 0 means the working tree is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serve_overhead as so  # noqa: E402
import transport_floor as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# import name -> folder in a checkout (pyproject's package-dir)
PACKAGES = {"rnnkit": "rnnkit", "rnnkit_cli": "rnnkit_cli", "rnnkit_export": "export", "rnnkit_serving": "serving"}


@contextlib.contextmanager
def base_checkout(rev: str, scratch: str):  # type: ignore[no-untyped-def]
    """A worktree of `rev` and a folder whose entries import its packages (put it first on PYTHONPATH)."""
    tree = os.path.join(scratch, "base")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", tree, rev], check=True)
    try:
        path = os.path.join(scratch, "import")
        os.makedirs(path)
        for name, folder in PACKAGES.items():
            os.symlink(os.path.join(tree, folder), os.path.join(path, name))
        yield path
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=False)


def serve(model_dir: str, cwd: str, env: dict[str, str], log: str) -> so.Server:
    rest, tfs_grpc, kserve_grpc = so.free_port(), so.free_port(), so.free_port()
    flags = ["--model_base_path", model_dir, "--model_name", so.MODEL, "--host", "127.0.0.1", "--port", str(tfs_grpc)]
    flags += ["--rest_api_port", str(rest), "--grpc_inference_port", str(kserve_grpc)]
    flags += ["--file_system_poll_wait_seconds", "0"]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rnnkit_cli", "serve", *flags], cwd=cwd, env=env, stdout=sink, stderr=sink
        )
    so.wait_ready(proc, "127.0.0.1", rest, (tfs_grpc, kserve_grpc), log)
    return so.Server(log, proc, rest, tfs_grpc, kserve_grpc, log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the older revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per cell and round (1.5)")
    parser.add_argument("--protocols", default="kserve_binary,kserve_json", help=f"of {','.join(so.PROTOCOLS)}")
    parser.add_argument("--payload", default="100x64", help="STEPSx64 (100x64)")
    args = parser.parse_args()
    protocols = args.protocols.split(",")
    unknown = [p for p in protocols if p not in so.PROTOCOLS]
    if unknown:
        parser.error(f"unknown protocols {unknown}; expected some of {list(so.PROTOCOLS)}")
    steps = so.parse_payload(args.payload)
    os.makedirs(so.OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        model_dir = so.export(scratch)
        session = so.ort_session(so.onnx_file(model_dir))
        imports = stack.enter_context(base_checkout(args.base, scratch))
        servers: dict[str, so.Server] = {}
        for who, cwd, env in (
            ("base", scratch, {**os.environ, "PYTHONPATH": imports}),  # not from ROOT: '' would import the tree
            ("new", ROOT, dict(os.environ)),
        ):
            server = serve(model_dir, cwd, env, os.path.join(so.OUT, f"serve_ab-{who}.log"))
            stack.callback(server.proc.wait, 30)
            stack.callback(server.proc.terminate)
            servers[who] = server
        cells: dict[tuple[str, str], list[float]] = {}
        for round_index in range(args.rounds):
            floor = statistics.median(so.in_process(session, steps, args.seconds)[0])
            # which revision goes first alternates: the second of two back-to-back cells may run warmer or colder
            order = list(servers.items())[:: -1 if round_index % 2 else 1]
            for protocol in protocols:
                for who, server in order:
                    job = so.Job(protocol, steps, "127.0.0.1", server.rest, server.port_for(protocol), 1)
                    cells.setdefault((protocol, who), []).append(statistics.median(tf.p50(job, args.seconds)) - floor)
    print(f"\n{args.payload}, concurrency 1, p50 over the model in process, ms ({args.rounds} rounds); base {args.base}")
    print(f"{'protocol':14} {'base':>7} {'new':>7} {'base - new':>11}  per round (base - new)")
    for protocol in protocols:
        base, new = cells[(protocol, "base")], cells[(protocol, "new")]
        paired = [b - n for b, n in zip(base, new)]
        print(
            f"{protocol:14} {statistics.median(base):7.3f} {statistics.median(new):7.3f} "
            f"{statistics.median(paired):+11.3f}  {' '.join(f'{d:+.3f}' for d in paired)}"
        )
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
