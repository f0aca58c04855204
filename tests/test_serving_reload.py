"""Versions and hot reload: the version policy (newest N, all, specific), a new version appearing
under load (no failed request, answers switch), a broken version reported in status while the
old one serves (not an ONNX file; truncated model.onnx/step.onnx; a missing file; rnnkit.json not
JSON, not a manifest, another format, naming a tensor the graph lacks), a good version after a broken
one, a numbered directory without rnnkit.json ignored until it has one, version removal after
in-flight requests, and polling over a real socket."""

import os
import shutil
import threading
import warnings

import httpx
import numpy as np
import pytest
import serving_repo

from rnnkit_serving.config.model_config import ModelConfig, VersionPolicy, parse_model_config
from rnnkit_serving.server.model_server import load_registry, start_server

BODY = {"instances": [[[1.0]]]}
V1, V2 = [[[2.5]]], [[[3.5]]]  # 0.5 x + 2 and 0.5 x + 3 at x = 1


@pytest.fixture(scope="module")
def staged():
    return os.path.join(serving_repo.shared_repository(), "staging", "half")


@pytest.fixture
def model_dir(staged, tmp_path):
    path = str(tmp_path / "half")
    serving_repo.publish(os.path.join(staged, "1"), path, 1)
    return path


def client_for(registry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        from rnnkit_serving import app

        return TestClient(app(registry))


def states(client):
    return [(s["version"], s["state"]) for s in client.get("/v1/models/half").json()["model_version_status"]]


# ------------------------------------------------------------------------------------ policy


def test_version_policy_from_the_config_file(staged, model_dir):
    serving_repo.publish(os.path.join(staged, "2"), model_dir, 2)
    os.makedirs(os.path.join(model_dir, ".rnnkit-tmp-5-x"))  # staging and non-integer dirs are ignored
    os.makedirs(os.path.join(model_dir, "notes"))
    text = f"""model_config_list {{
      config {{ name: "a" base_path: "{model_dir}" }}
      config {{ name: "b" base_path: "{model_dir}" model_version_policy {{ latest {{ num_versions: 2 }} }} }}
      config {{ name: "c" base_path: "{model_dir}" model_version_policy {{ all {{}} }} }}
      config {{ name: "d" base_path: "{model_dir}" model_version_policy {{ specific {{ versions: 1 }} }} }}
    }}"""
    configs = parse_model_config(text)
    assert configs[1].version_policy == VersionPolicy("latest", 2) and configs[0].version_policy is None
    registry = load_registry(configs)
    try:
        assert [registry.versions(n) for n in "abcd"] == [[2], [2, 1], [2, 1], [1]]
    finally:
        registry.close()
    registry = load_registry(configs[:1], policy=VersionPolicy("latest", 2))  # --num_versions 2
    try:
        assert registry.versions("a") == [2, 1]
    finally:
        registry.close()


# ------------------------------------------------------------------------------ hot reload


def test_a_new_version_under_load_switches_answers_without_failures(staged, model_dir):
    registry = load_registry([ModelConfig("half", model_dir)])
    old = registry.resolve("half")
    answers, failures = [], []
    stop = threading.Event()
    with client_for(registry) as client:
        assert client.post("/v1/models/half:predict", json=BODY).json()["predictions"] == V1

        def hammer():
            for _ in range(5000):  # bounded
                if stop.is_set():
                    return
                reply = client.post("/v1/models/half:predict", json=BODY)
                if reply.status_code != 200:
                    failures.append(reply.text)
                else:
                    answers.append(reply.json()["predictions"])

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        for _ in range(500):  # bounded: some answers from version 1 first
            if len(answers) >= 10:
                break
            stop.wait(0.01)
        serving_repo.publish(os.path.join(staged, "2"), model_dir, 2)
        registry.poll()
        seen = len(answers)
        for _ in range(1000):  # bounded: answers from version 2 after the swap
            if len(answers) >= seen + 10:
                break
            stop.wait(0.01)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not failures, failures[:3]
        assert answers[0] == V1 and answers[-1] == V2
        assert set(map(str, answers)) == {str(V1), str(V2)}
        assert states(client) == [("2", "AVAILABLE"), ("1", "END")]
    assert old._closed  # version 1 was unloaded once its requests were done
    registry.close()


def test_a_broken_version_is_reported_and_the_previous_one_keeps_serving(staged, model_dir):
    serving_repo.publish(os.path.join(staged, "2"), model_dir, 2)
    registry = load_registry([ModelConfig("half", model_dir)])
    with client_for(registry) as client:
        broken = os.path.join(model_dir, ".rnnkit-tmp-3")
        shutil.copytree(os.path.join(staged, "2"), broken)
        with open(os.path.join(broken, "model.onnx"), "wb") as handle:
            handle.write(b"not an onnx file")
        os.rename(broken, os.path.join(model_dir, "3"))
        registry.poll()
        status = client.get("/v1/models/half").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("3", "END"), ("2", "AVAILABLE")]
        assert status[0]["status"]["error_code"] == "FAILED_PRECONDITION"
        assert "ONNX Runtime cannot load" in status[0]["status"]["error_message"]
        assert client.post("/v1/models/half:predict", json=BODY).json()["predictions"] == V2
        registry.poll()  # a failed version is not retried on every poll
        assert client.post("/v1/models/half:predict", json=BODY).json()["predictions"] == V2
    registry.close()


def _truncate(path):
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


# corrupt published versions: what is done to a copy of version 2 before it is renamed to 3, and the error
CORRUPTIONS = {
    "truncated model.onnx": (lambda d: _truncate(os.path.join(d, "model.onnx")), "ONNX Runtime cannot load"),
    "truncated step.onnx": (lambda d: _truncate(os.path.join(d, "step.onnx")), "ONNX Runtime cannot load"),
    "missing model.onnx": (
        lambda d: os.remove(os.path.join(d, "model.onnx")),
        "/3/model.onnx' does not exist",
    ),
    "missing step.onnx": (lambda d: os.remove(os.path.join(d, "step.onnx")), "/3/step.onnx' does not exist"),
    "rnnkit.json not JSON": (lambda d: _truncate(os.path.join(d, "rnnkit.json")), "/3/rnnkit.json': "),
    "rnnkit.json not a manifest": (
        lambda d: _write(os.path.join(d, "rnnkit.json"), '{"format": 1, "outputs": []}'),
        "/3/rnnkit.json' is not a valid rnnkit manifest: 'inputs'",
    ),
    "rnnkit.json of another format": (
        lambda d: _write(os.path.join(d, "rnnkit.json"), '{"format": 2}'),
        "unsupported manifest format 2 (this server reads format 1)",
    ),
    "rnnkit.json naming a tensor the graph lacks": (
        lambda d: _write(
            os.path.join(d, "rnnkit.json"),
            open(os.path.join(d, "rnnkit.json")).read().replace('"name": "x"', '"name": "frames"'),
        ),
        "lacks the tensors ['frames'] named by the manifest",
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_version_is_reported_in_status_while_the_previous_one_serves(staged, model_dir, corruption):
    corrupt, message = CORRUPTIONS[corruption]
    serving_repo.publish(os.path.join(staged, "2"), model_dir, 2)
    registry = load_registry([ModelConfig("half", model_dir)])
    with client_for(registry) as client:
        broken = os.path.join(model_dir, ".rnnkit-tmp-3")
        shutil.copytree(os.path.join(staged, "2"), broken)
        corrupt(broken)
        os.rename(broken, os.path.join(model_dir, "3"))
        registry.poll()
        status = client.get("/v1/models/half").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("3", "END"), ("2", "AVAILABLE")]
        assert status[0]["status"]["error_code"] == "FAILED_PRECONDITION"
        assert message in status[0]["status"]["error_message"], status[0]["status"]["error_message"]
        assert client.post("/v1/models/half:predict", json=BODY).json()["predictions"] == V2
        assert client.post("/v1/models/half/versions/3:predict", json=BODY).status_code == 404
        serving_repo.publish(os.path.join(staged, "1"), model_dir, 4)  # a good version after the broken one
        registry.poll()
        assert client.post("/v1/models/half:predict", json=BODY).json()["predictions"] == V1
        assert states(client) == [("4", "AVAILABLE"), ("3", "END"), ("2", "END")]
    registry.close()


def test_a_numbered_directory_without_its_manifest_is_not_a_version_until_it_has_one(staged, model_dir):
    serving_repo.publish(os.path.join(staged, "2"), model_dir, 2)
    registry = load_registry([ModelConfig("half", model_dir)])
    with client_for(registry) as client:
        incomplete = os.path.join(model_dir, "3")  # e.g. a copy still in progress
        shutil.copytree(os.path.join(staged, "1"), incomplete, ignore=shutil.ignore_patterns("rnnkit.json"))
        registry.poll()
        assert states(client) == [("2", "AVAILABLE")]
        assert client.post("/v1/models/half:predict", json=BODY).json()["predictions"] == V2
        shutil.copy(os.path.join(staged, "1", "rnnkit.json"), incomplete)
        registry.poll()
        assert states(client) == [("3", "AVAILABLE"), ("2", "END")]
        assert client.post("/v1/models/half:predict", json=BODY).json()["predictions"] == V1
    registry.close()


def test_removing_a_version_unloads_it_after_its_requests_finish(staged, model_dir):
    serving_repo.publish(os.path.join(staged, "2"), model_dir, 2)
    registry = load_registry([ModelConfig("half", model_dir)], policy=VersionPolicy("all"))
    with registry.lease("half") as in_flight:  # a request still running on version 2
        assert in_flight.version == 2
        shutil.rmtree(os.path.join(model_dir, "2"))
        registry.poll()
        assert registry.versions("half") == [1]  # new requests go to version 1 ...
        assert registry.resolve("half").version == 1
        assert not in_flight._closed  # ... while the running one finishes on version 2
        np.testing.assert_allclose(in_flight.predict({"x": [[[1.0]]]})["y"], V2)
    assert in_flight._closed
    assert [(s.version, s.state) for s in registry.status("half")] == [(2, "END"), (1, "AVAILABLE")]
    assert registry.loaded_versions() == {"half": 1}
    registry.close()


def test_no_versions_yet_then_one_appears(staged, tmp_path):
    empty = str(tmp_path / "later")
    os.makedirs(empty)
    registry = load_registry([ModelConfig("half", empty)])
    assert not registry.available()
    serving_repo.publish(os.path.join(staged, "1"), empty, 1)
    registry.poll()
    assert registry.available() and registry.versions("half") == [1]
    registry.close()


@pytest.mark.slow  # a real server, its polling thread and sockets
def test_polling_server_picks_up_a_new_version_over_http(staged, model_dir):
    server = start_server(model_dir, "half", poll_seconds=0.05)
    try:
        url = server.rest_url + "/v1/models/half:predict"
        assert httpx.post(url, json=BODY, timeout=30).json()["predictions"] == V1
        serving_repo.publish(os.path.join(staged, "2"), model_dir, 2)
        answer = None
        for _ in range(600):  # bounded: the poller loads version 2
            answer = httpx.post(url, json=BODY, timeout=30).json()["predictions"]
            if answer == V2:
                break
            threading.Event().wait(0.05)
        assert answer == V2
        metrics = httpx.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=30).text
        assert ':rnnkit:serving:loaded_versions{model_name="half"} 1.0' in metrics
        ready = httpx.get(server.rest_url + "/v2/models/half/versions/2/ready", timeout=30)
        assert ready.json() == {"name": "half", "ready": True}
    finally:
        server.stop()
