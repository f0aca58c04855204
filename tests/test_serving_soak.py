"""A tiny run of bench/soak.py (1500 requests, ~30 % malformed, a version published every 0.2 s):
no good request fails, every malformed row answers a 4xx / client-error gRPC code with a message,
no 5xx, and the server's RSS stays within 1.2 x start + 50 MiB. The rows that need the
request limits (element budget, non-finite inputs, JSON depth, batch/length defaults) are held to
that only when the server has them (`--max_request_elements`); until then the huge-declared-shape
row is not sent (undefended it allocates ~4.5 GiB), the others are reported but not asserted."""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

from rnnkit_serving.server import cli

pytestmark = pytest.mark.slow  # a child server, an export and a few hundred requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIMIT_ROWS = {  # answered as malformed only once the request limits are in the server
    "grpc_huge_declared_shape",
    "rest_nan_inputs",
    "grpc_nan_inputs",
    "rest_infinity_inputs",
    "rest_json_depth_50000",
    "kserve_json_depth_50000",
    "rest_oversize_batch_1025",
    "rest_oversize_length_9000",
    "grpc_oversize_batch_1025",
    "grpc_oversize_length_9000",
}


def has_request_limits() -> bool:
    return "--max_request_elements" in cli.configure_parser(argparse.ArgumentParser()).format_help()


def test_a_tiny_soak_meets_its_targets(tmp_path):
    limits = has_request_limits()
    out = tmp_path / "soak.json"
    command = [sys.executable, "bench/soak.py", "--requests", "1500", "--seconds", "300"]
    command += ["--publish_every", "0.2", "--clients", "6", "--json", str(out)]
    if not limits:
        command += ["--skip_rows", "grpc_huge_declared_shape"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = done.stdout[-6000:]
    assert result["requests"] == 1500 and 300 <= result["malformed"] <= 600, summary
    assert result["failed_good"] == 0, summary
    assert result["reloads_published"] >= 1 and len(result["versions_answering"]) >= 2, summary
    assert result["server_exit"] == 0, summary
    assert result["rss_ok"], summary
    for name, row in result["rows"].items():
        assert row["outcomes"], (name, summary)  # every row was sent
        if name in LIMIT_ROWS and not limits:
            continue
        assert row["defended"], (name, row)
        assert not any(code.startswith("5") for code in row["outcomes"]), (name, row)
    if limits:
        assert result["targets_met"] and done.returncode == 0, summary
        assert result["5xx"] == 0, summary
