"""The edges around the decoders, attacked (issue 21): the JSON depth guard on crafted strings,
client-chosen numbers and ids, version directories with odd names, a base path that cannot be read,
one served name for every key, failed sequence starts, readiness in the metrics.

Each test fails on the code before the fix (the defect's row in the reliability table, docs/operations/reliability.md)."""

import errno
import json
import os
import random
import warnings

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rnnkit_serving import FakeBackend, Predictor, RestOptions, Signature, TensorSpec, app
from rnnkit_serving.codecs import json_depth
from rnnkit_serving.codecs.kserve import grpc as kserve_grpc_codec
from rnnkit_serving.codecs.kserve import rest as kserve_codec
from rnnkit_serving.codecs.kserve.sequence import header_sequence_id, sequence_id
from rnnkit_serving.config.model_config import ModelConfig, VersionPolicy
from rnnkit_serving.core.identifiers import ascii_uint, parse_version
from rnnkit_serving.core.repository_format import MANIFEST
from rnnkit_serving.errors import Code, ServingError
from rnnkit_serving.registry import ModelRegistry
from rnnkit_serving.runtime import predictor as predictor_module
from rnnkit_serving.runtime.predictor import RepositoryUnreadableError, version_dirs
from rnnkit_serving.scheduling.session_store import SessionOptions, SessionStore

X = TensorSpec("x", "float32", (None, None, 1))
Y = TensorSpec("y", "float32", (None, None, 1))
H_IN, H_OUT = TensorSpec("h_in", "float32", (None, 1)), TensorSpec("h_out", "float32", (None, 1))
DEFAULT = Signature("serving_default", (X,), (Y,))
STEP = Signature("step", (X, H_IN), (Y, H_OUT))


def running_sum(inputs):
    """y_t = state + x_1 + ... + x_t: a recurrence checkable by hand."""
    y = inputs["h_in"][:, None, :] + np.cumsum(inputs["x"], axis=1)
    return {"y": y, "h_out": y[:, -1, :]}


def clf(version: int, scale: float = 1.0) -> Predictor:
    """A version of the export named 'clf' (the manifest's name), whatever it is served as."""
    backends = {
        "serving_default": FakeBackend(DEFAULT, lambda inputs: {"y": np.cumsum(inputs["x"], axis=1) * scale}),
        "step": FakeBackend(STEP, running_sum),
    }
    return Predictor("clf", version, backends)


def version_tree(base, versions, extra=()) -> str:
    for name in [str(v) for v in versions] + list(extra):
        os.makedirs(os.path.join(base, name), exist_ok=True)
        with open(os.path.join(base, name, MANIFEST), "w") as handle:
            handle.write("{}")
    return str(base)


def client_for(registry, options=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        return TestClient(app(registry, options or RestOptions()))


def counts(client) -> dict:
    text = client.get("/monitoring/prometheus/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("request_count_total") or sample.name.endswith("request_count"):
                found[(sample.labels["model_name"], sample.labels["status"])] = sample.value
    return found


# ------------------------------------------------------------------ D1: the JSON depth guard


def reference_depth(value) -> int:
    if isinstance(value, list):
        return 1 + max([reference_depth(v) for v in value] or [0])
    if isinstance(value, dict):
        return 1 + max([reference_depth(v) for v in value.values()] or [0])
    return 0


def random_json(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth > 7 or roll < 0.3:
        return rng.choice(['a\\"[', "]\\\\", '\\\\\\"{{', "x{", "]]", 1, 2.5, None, True, "ü[é"])
    if roll < 0.65:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}[\\": random_json(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_the_depth_guard_is_exact_on_valid_json_with_escaped_quotes_and_brackets_in_strings():
    rng = random.Random(0)
    for _ in range(3000):
        value = random_json(rng)
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        assert json_depth.json_depth(body) == reference_depth(value), body


def test_the_crafted_body_of_escaped_quotes_is_refused_in_one_linear_pass():
    """D1: '[' * 101 + '"' + '\\"' * N made the old regular expression backtrack (quadratic: 140 KB
    froze the server for 49 s). 8 MB of it is now one scan; the quadratic guard would not finish."""
    crafted = b"[" * 101 + b'"' + b'\\"' * (4 << 20)
    assert json_depth.exceeds_depth(crafted)
    unclosed = b"[" * 50 + b'"' + b'\\"' * (4 << 20)
    assert not json_depth.exceeds_depth(unclosed)  # every bracket after the open quote is in a string
    assert json_depth.json_depth(b'[[["\\\\"]]]') == 3  # an escaped backslash does not escape the quote


# ----------------------------------------------------------- D7, D9: numbers clients choose


@pytest.mark.parametrize("text", ["²", "٣", "1.0", "-1", "0x10", " 1", "1" * 5000, str(1 << 63), ""])
def test_a_version_is_ascii_digits_within_int64_else_a_400(text):
    with pytest.raises(ServingError, match="model version must be an integer; received") as caught:
        parse_version(text)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert len(str(caught.value)) < 200  # a 5000-digit version is quoted by its prefix and length


def test_numbers_in_paths_headers_and_grpc_fields_never_reach_int(tmp_path):
    registry = ModelRegistry.of([clf(1)])
    with client_for(registry) as client:
        for path in ("/v1/models/clf/versions/²", "/v1/models/clf/versions/" + "9" * 5000, "/v2/models/clf/versions/²"):
            reply = client.get(path)
            assert reply.status_code in (400, 404), (path, reply.status_code, reply.text)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP32", "data": [1]}]})
        reply = client.post("/v2/models/clf/infer", content=body, headers={kserve_codec.HEADER_LENGTH: "²".encode()})
        assert reply.status_code == 400 and "must be a non-negative integer" in reply.json()["error"]
    registry.close()
    with pytest.raises(ServingError, match="model version must be an integer"):
        kserve_grpc_codec.model_version("²")
    assert header_sequence_id("²") == "²"  # not digits: a string id, never int("²")
    assert header_sequence_id("42") == 42 and header_sequence_id(str(1 << 64)) == str(1 << 64)
    assert ascii_uint("18446744073709551615", (1 << 64) - 1) == (1 << 64) - 1


def test_a_version_directory_with_an_odd_name_is_ignored_not_fatal(tmp_path):
    """D9: a directory named '²' beside good versions raised on every poll, so nothing new loaded."""
    base = version_tree(tmp_path / "m", [1, 2], extra=["²", "٣", "0x3", "-4", ".rnnkit-tmp-5"])
    assert sorted(version_dirs(base)) == [1, 2]


# --------------------------------------------------- D4: a base path that cannot be read


def test_an_unreadable_base_path_keeps_what_serves_and_says_why(tmp_path, monkeypatch):
    """D4: os.listdir failing with EMFILE made version_dirs() return {}, and every version was retired."""
    base = version_tree(tmp_path / "m", [1])
    registry = ModelRegistry.load([ModelConfig("m", base)], loader=lambda path: clf(int(os.path.basename(path))))
    assert registry.versions("m") == [1]

    def exhausted(path):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(predictor_module.os, "listdir", exhausted)
    with pytest.raises(RepositoryUnreadableError, match="Too many open files"):
        version_dirs(base)
    registry.poll()
    assert registry.versions("m") == [1]  # still serving
    (status,) = registry.status("m")
    assert status.state == "AVAILABLE" and status.error_code == "UNAVAILABLE"
    assert "base path became unreadable" in status.error_message and "Too many open files" in status.error_message
    monkeypatch.undo()
    registry.poll()
    assert registry.status("m")[0].error_code == "OK"
    os.rename(os.path.join(base, "1"), os.path.join(base, ".gone"))
    registry.poll()  # a version that is really gone is still retired
    assert registry.versions("m") == []
    registry.close()


# ------------------------------------------------------------ D8: one key, the served name


def test_two_entries_serving_one_export_are_two_models_everywhere(tmp_path):
    """D8: replies said the manifest's name and sessions were keyed by it: starting id 42 on 'b'
    ended id 42 on 'a'."""
    base = version_tree(tmp_path / "clf", [1])
    configs = [ModelConfig("a", base, {}, VersionPolicy("latest", 1)), ModelConfig("b", base)]
    registry = ModelRegistry.load(configs, loader=lambda path: clf(1))
    with client_for(registry) as client:

        def chunk(model, start=False, end=False, value=1.0):
            body = {
                "parameters": {"sequence_id": 42, "sequence_start": start, "sequence_end": end},
                "inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP32", "data": [value]}],
            }
            return client.post(f"/v2/models/{model}/infer", json=body)

        assert chunk("a", start=True, value=1.0).json()["model_name"] == "a"
        assert chunk("b", start=True, value=10.0).json()["model_name"] == "b"
        reply = chunk("a", value=2.0).json()  # a's state (1), not b's (10)
        assert reply["model_name"] == "a" and reply["outputs"][0]["data"] == [3.0]
        assert chunk("b", end=True, value=5.0).json()["outputs"][0]["data"] == [15.0]
        assert chunk("a", value=1.0).json()["outputs"][0]["data"] == [4.0]  # ending b left a alone
        meta = client.get("/v1/models/b/metadata").json()
        assert meta["model_spec"]["name"] == "b"
        assert client.get("/v2/models/b").json()["name"] == "b"
        seen = counts(client)
        assert seen[("a", "OK")] == 3 and seen[("b", "OK")] == 4  # b: two chunks, two metadata reads
    registry.close()


# ----------------------------------------------- D5, D10: sequence ids and failed starts


def test_sequence_ids_are_bounded_on_every_front():
    """D5: a 15 MiB string id was kept as a session key (1.5 GiB for 100 sessions)."""
    store = SessionStore(SessionOptions(max_sequence_id_length=16))
    version = clf(1)
    x = {"x": np.ones((1, 1, 1), np.float32)}
    with pytest.raises(
        ServingError, match=r"sequence id is 17 bytes long; the limit is 16 \(--max_sequence_id_length\)"
    ):
        store.step(version, "é" * 8 + "a", x, start=True)
    assert store.live() == {}
    store.step(version, "é" * 8, x, start=True)  # 16 bytes
    with pytest.raises(ServingError, match="unsigned 64-bit integer"):
        store.step(version, 1 << 64, x, start=True)
    with pytest.raises(ServingError, match="unsigned 64-bit integer or a string; received an integer of 71 bits"):
        sequence_id({"sequence_id": 1 << 70, "sequence_start": True})
    assert sequence_id({"sequence_id": (1 << 64) - 1}) == (1 << 64) - 1
    store.close()


def test_a_failed_sequence_start_keeps_no_session_and_no_slot():
    """D10: a start whose input failed validation kept its session: the next chunk without start
    was answered 200, and the slot counted against --max_sessions."""
    store = SessionStore(SessionOptions(max_sessions=1))
    version = clf(1)
    with pytest.raises(ServingError, match="input 'x'"):
        store.step(version, 7, {"x": np.ones((1, 1, 2), np.float32)}, start=True)
    assert store.live() == {}
    with pytest.raises(ServingError, match="unknown sequence 7"):
        store.step(version, 7, {"x": np.ones((1, 1, 1), np.float32)})
    good = store.step(version, 8, {"x": np.ones((1, 1, 1), np.float32)}, start=True)  # the one slot is free
    assert good["y"].tolist() == [[[1.0]]]
    store.close()


# --------------------------------------------------------------- D12: readiness in metrics


def test_a_not_ready_answer_is_not_counted_as_ok():
    """D12: GET /v2/models/unknown/ready answered 400 and counted status="OK"."""
    registry = ModelRegistry.of([clf(1)])
    with client_for(registry) as client:
        assert client.get("/v2/models/clf/ready").status_code == 200
        reply = client.get("/v2/models/nope/ready")
        assert reply.status_code == 400 and reply.json() == {"name": "nope", "ready": False}
        reply = client.get("/v2/models/clf/versions/9/ready")
        assert reply.status_code == 400
        seen = counts(client)
    assert seen[("clf", "OK")] == 1
    assert seen[("(unknown)", "NOT_FOUND")] == 1
    assert seen[("clf", "NOT_FOUND")] == 1
    assert ("(unknown)", "OK") not in seen
    registry.close()
