"""`rnnkit serve` replicas behind a real HAProxy on 127.0.0.1 (bench/scale_out.py, short run).

Two replicas, a few hundred requests (TF Serving REST, KServe v2, gRPC through HTTP/2, and
streaming sessions routed by consistent hashing on their sequence id), one replica SIGKILLed
under load and started again. Every answer is checked against one in-process `rnnkit_serving.Predictor`.
Needs `haproxy` (`make test` installs it with apt when run as root); skipped without it.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("scale_out", os.path.join(ROOT, "bench", "scale_out.py"))
scale_out = importlib.util.module_from_spec(_spec)
sys.modules["scale_out"] = scale_out
_spec.loader.exec_module(scale_out)

EXAMPLE = os.path.join(ROOT, "deploy", "haproxy", "haproxy.cfg")
needs_haproxy = pytest.mark.skipif(scale_out.haproxy_binary() is None, reason=scale_out.INSTALL_HINT)


def test_shipped_example_is_the_config_the_bench_writes():
    with open(EXAMPLE) as shipped:
        assert shipped.read() == scale_out.example_config(), (
            "deploy/haproxy/haproxy.cfg is stale: python bench/scale_out.py --write_example deploy/haproxy/haproxy.cfg"
        )
    text = scale_out.example_config()
    lines = [line.strip() for line in text.splitlines()]
    # the routing rules the README documents
    assert "use_backend sequences if { req.hdr(x-rnnkit-sequence-id) -m found }" in lines
    assert "balance hdr(x-rnnkit-sequence-id)" in lines and "hash-type consistent" in lines
    assert "balance leastconn" in lines and "retry-on conn-failure empty-response 503" in lines
    assert "option httpchk GET /v2/health/ready" in lines
    sequences = text.split("\nbackend sequences\n")[1].split("\nfrontend grpc\n")[0]
    assert "retry-on conn-failure\n" in sequences and "empty-response" not in sequences  # a chunk is never sent twice
    assert "bind *:8500 proto h2" in lines
    assert sum(line.startswith("server r") and "proto h2" in line for line in lines) == 3


@needs_haproxy
def test_shipped_example_passes_haproxy_check():
    check = subprocess.run([scale_out.haproxy_binary(), "-c", "-f", EXAMPLE], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if scale_out.haproxy_binary() is None:
        pytest.skip(scale_out.INSTALL_HINT)
    workdir = str(tmp_path_factory.mktemp("scale-out"))
    model_dir = scale_out.build_model(os.path.join(workdir, "models"), units=16)
    work = scale_out.workload(model_dir, chunks=4)
    replicas = [scale_out.Replica(f"r{i}", model_dir, workdir) for i in range(2)]
    balancer = scale_out.HAProxy(workdir, [r.backend for r in replicas])
    try:
        for replica in replicas:
            replica.start()
        balancer.start()
        yield replicas, balancer, work
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.slow
def test_sequences_stick_and_unknown_sequence_is_a_clear_error(cluster):
    replicas, balancer, work = cluster
    client = scale_out.RestClient(balancer.rest_port)
    x = work.sequences[0]
    chunks = np.split(x, 4, axis=1)
    try:
        # a chunk of a sequence nobody started: the owner's pinned 400, not a fresh state
        status, body, replica = client.post(
            "/v2/models/rnn/infer",
            scale_out.v2_body(chunks[1], {"sequence_id": "never-started"}),
            {scale_out.SEQUENCE_HEADER: "never-started"},
        )
        assert status == 400 and replica in ("r0", "r1")
        assert json.loads(body) == {
            "error": "unknown sequence 'never-started' of model 'rnn': it is unknown or expired on this server (never "
            "started, ended, idle longer than 60 s, or started on a replica that has gone away); start it again with "
            "sequence_start"
        }
        # 40 sequences: all chunks of each reach one replica, both replicas hold some, outputs exact
        owners = {}
        for n in range(40):
            sid = f"stick-{n}"
            outputs, seen = [], set()
            for i, chunk in enumerate(chunks):
                params = {"sequence_id": sid, "sequence_start": i == 0, "sequence_end": i == 3}
                status, body, replica = client.post(
                    "/v2/models/rnn/infer", scale_out.v2_body(chunk, params), {scale_out.SEQUENCE_HEADER: sid}
                )
                assert status == 200, body
                outputs.append(scale_out.v2_answer(body))
                seen.add(replica)
            assert len(seen) == 1, (sid, seen)
            owners[sid] = seen.pop()
            np.testing.assert_allclose(np.concatenate(outputs, axis=1), work.sequence_answers[0], atol=1e-5, rtol=0)
        assert set(owners.values()) == {"r0", "r1"}
        # the same id is routed to the same replica again (consistent hash, no balancer state needed)
        status, _, replica = client.post(
            "/v2/models/rnn/infer",
            scale_out.v2_body(chunks[0], {"sequence_id": "stick-7", "sequence_start": True, "sequence_end": True}),
            {scale_out.SEQUENCE_HEADER: "stick-7"},
        )
        assert status == 200 and replica == owners["stick-7"]
    finally:
        client.close()


@pytest.mark.slow
def test_replica_killed_under_load_and_restarted(cluster):
    replicas, balancer, work = cluster
    out = scale_out.kill_run(
        replicas,
        balancer,
        work,
        requests=360,
        stateless_workers=2,
        session_workers=2,
        sessions_per_worker=8,
        say=lambda line: None,
    )
    load = out.pop("_load")
    summary = json.dumps(out, indent=1, default=str)
    # stateless: none failed after the balancer's retries, every answer equal to the single-process one
    assert out["stateless_failed"] == 0 and out["stateless_wrong"] == 0, summary
    assert set(out["stateless_by_kind"]) == {"v1", "v2", "grpc"} and min(out["stateless_by_kind"].values()) > 20
    # sessions: never a wrong answer, never an unexpected error, every completed attempt on one replica
    assert out["sessions_wrong"] == 0 and out["sessions_failed"] == [] and out["sticky_violations"] == [], summary
    assert out["max_session_error"] <= 1e-5
    # sessions on the surviving replica continued without any error
    assert out["survivor_sessions"] > 20 and out["survivor_sessions_with_errors"] == 0, summary
    # sessions whose state died with the killed replica: a clear error, then a restart that succeeds
    assert out["killed_sessions"] >= 1, summary
    assert set(out["killed_first_error"]) <= {"unknown_sequence", "lost_in_flight"}, summary
    assert out["killed_completed_after_restart"] + out["killed_unfinished"] == out["killed_sessions"], summary
    unknown = [e for s in load.sessions for e in s.events if e[2] == "400"]
    assert unknown and all(e[3] in ("r0", "r1") for e in unknown)  # answered by a replica, not the balancer
    # the restarted replica passed its readiness check and took traffic again
    assert out["requests_on_rejoined_replica"] >= 20, summary
