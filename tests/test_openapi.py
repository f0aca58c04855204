"""The OpenAPI 3.1 description of the REST port (/openapi.json) and the /docs page.

- the generic document (no server) and a live server's document both validate (openapi-spec-validator);
- every documented path is a route of the server (nothing documented answers TF Serving's 404 page) and
  the served models are filled in: names, versions, input names, dtypes and shapes;
- every request example of the document is answered 200 with a body that matches its response schema;
- schemathesis, from the live server's own /openapi.json, with bounded examples: no 5xx, and every
  status code, content type, header and body is the one the document gives.
"""

import json
import os
import subprocess
import sys
import urllib.parse
from xml.etree import ElementTree

import httpx
import pytest
from openapi_spec_validator import validate

sys.path.insert(0, os.path.dirname(__file__))
import tiny_repo  # noqa: E402

from rnnkit_serving.fronts.rest.openapi import DOCS_ASSETS, openapi_document  # noqa: E402
from rnnkit_serving.server.model_server import start_server  # noqa: E402


def write_repository(base: str) -> str:
    """half (versions 1 and 2, both served, labels stable/canary) and counter (version 1); the config file."""
    tiny_repo.publish(tiny_repo.write_half, os.path.join(base, "half"), 1, offset=2.0)
    tiny_repo.publish(tiny_repo.write_half, os.path.join(base, "half"), 2, offset=3.0)
    tiny_repo.publish(tiny_repo.write_counter, os.path.join(base, "counter"), 1)
    config = os.path.join(base, "models.config")
    with open(config, "w") as handle:
        handle.write(
            f"""model_config_list {{
  config {{ name: "half" base_path: "{base}/half" model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
  config {{ name: "counter" base_path: "{base}/counter" }}
}}"""
        )
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = write_repository(str(tmp_path_factory.mktemp("openapi-repo")))
    server = start_server(model_config_file=config, poll_seconds=0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def document(server):
    reply = httpx.get(server.rest_url + "/openapi.json")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    return reply.json()


# ------------------------------------------------------------------------------ the document


def test_generic_document_validates_and_names_every_route():
    doc = openapi_document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    for path in (
        "/v1/models/{model_name}",
        "/v1/models/{model_name}/versions/{version}",
        "/v1/models/{model_name}/labels/{label}",
        "/v1/models/{model_name}/metadata",
        "/v1/models/{model_name}/versions/{version}/metadata",
        "/v1/models/{model_name}/labels/{label}/metadata",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/versions/{model_version}",
        "/v2/models/{model_name}/versions/{model_version}/ready",
        "/monitoring/prometheus/metrics",
        "/",
        "/docs",
        "/docs/{asset}",
        "/openapi.json",
    ):
        assert "get" in paths[path], path
    for verb in ("predict", "classify", "regress"):
        for form in ("", "/versions/{version}", "/labels/{label}"):
            assert "post" in paths[f"/v1/models/{{model_name}}{form}:{verb}"]
    for form in ("", "/versions/{model_version}"):
        infer = paths[f"/v2/models/{{model_name}}{form}/infer"]["post"]
        assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
        headers = {p["name"] for p in infer["parameters"] if p["in"] == "header"}
        assert headers == {"Inference-Header-Content-Length", "x-rnnkit-sequence-id"}
        assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert {"head"} <= set(paths["/"]) and paths["/docs/{asset}"]["get"]["parameters"][0]["schema"]["enum"] == list(
        DOCS_ASSETS
    )
    parameters = doc["components"]["schemas"]["KServeRequestParameters"]["properties"]
    assert {"sequence_id", "sequence_start", "sequence_end", "binary_data_output"} <= set(parameters)
    # no model: model_name is any name, and no per-model operation
    model_name = paths["/v2/models/{model_name}"]["get"]["parameters"][0]
    assert model_name["schema"] == {"type": "string", "minLength": 1}
    assert not [p for p in paths if "{model_name}" not in p and p.startswith(("/v1/models/", "/v2/models/"))]


def test_errors_are_documented_with_the_real_envelope():
    doc = openapi_document()
    assert doc["components"]["schemas"]["Error"] == {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what was wrong, expected and received"}},
        "additionalProperties": False,
    }
    classify = doc["paths"]["/v1/models/{model_name}:classify"]["post"]
    assert not [code for code in classify["responses"] if code.startswith("2")]  # always refused
    assert "use :predict" in classify["description"]
    predict = doc["paths"]["/v1/models/{model_name}:predict"]["post"]["responses"]
    assert {"200", "400", "404", "408", "413", "431", "500", "501", "503", "504"} == set(predict)
    for name, response in doc["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name


def test_live_document_validates_and_describes_the_served_models(document):
    validate(document)
    paths = document["paths"]
    model_name = paths["/v2/models/{model_name}/infer"]["post"]["parameters"][0]
    assert model_name["schema"] == {"type": "string", "enum": ["counter", "half"]}
    # one :predict and one infer per model (newest) and per served version
    own = sorted(p for p in paths if "{model_name}" not in p and p.startswith(("/v1/models/", "/v2/models/")))
    assert own == [
        "/v1/models/counter/versions/1:predict",
        "/v1/models/counter:predict",
        "/v1/models/half/versions/1:predict",
        "/v1/models/half/versions/2:predict",
        "/v1/models/half:predict",
        "/v2/models/counter/infer",
        "/v2/models/counter/versions/1/infer",
        "/v2/models/half/infer",
        "/v2/models/half/versions/1/infer",
        "/v2/models/half/versions/2/infer",
    ]
    infer = paths["/v2/models/half/infer"]["post"]
    assert infer["tags"] == ["model half"] and "version 2 (the newest)" in infer["summary"]
    schema = infer["requestBody"]["content"]["application/json"]["schema"]
    x = schema["properties"]["inputs"]["items"]
    assert x["properties"]["name"] == {"const": "x"} and x["properties"]["datatype"] == {"const": "FP32"}
    shape = x["properties"]["shape"]
    assert shape["prefixItems"] == [{"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 0}, {"const": 1}]
    assert "`x`: float32 (DT_FLOAT, FP32) [-1, -1, 1]" in x["description"]
    assert set(infer["requestBody"]["content"]["application/json"]["examples"]) == {"predict", "sequence"}
    counter = paths["/v2/models/counter/infer"]["post"]
    ids = counter["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert ids["properties"]["datatype"] == {"const": "INT64"}
    assert ids["properties"]["data"]["items"]["anyOf"][0] == {
        "type": "integer",
        "minimum": -(2**63),
        "maximum": 2**63 - 1,
    }
    assert set(counter["requestBody"]["content"]["application/json"]["examples"]) == {"predict"}  # cannot stream
    assert "cannot stream" in counter["description"]
    # TF Serving: both signatures of half (serving_default, step), row and columnar forms
    predict = paths["/v1/models/half:predict"]["post"]["requestBody"]["content"]["application/json"]
    branches = {b["title"]: b for b in predict["schema"]["anyOf"]}
    assert set(branches) == {"signature serving_default", "signature step"}
    assert branches["signature step"]["required"] == ["signature_name"]
    step_row = branches["signature step"]["properties"]["instances"]["items"]
    assert step_row["required"] == ["x", "h_in"] and step_row["properties"]["h_in"] == {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 2,
        "maxItems": 2,
    }
    assert "version 2, version 1" not in document["info"]["description"]
    assert "- `half`: versions 2, 1\n- `counter`" not in document["info"]["description"]  # sorted by name
    assert "- `counter`: version 1\n- `half`: versions 2, 1" in document["info"]["description"]


def test_every_documented_path_is_a_route(server, document):
    """No documented path answers TF Serving's 404 page for unknown paths (the routes and the document agree)."""
    fill = {"model_name": "half", "version": "1", "model_version": "1", "label": "stable", "asset": "swagger-ui.css"}
    with httpx.Client(base_url=server.rest_url) as client:
        for path, item in document["paths"].items():
            concrete = path.format(**fill)
            for method in item:
                reply = client.request(method.upper(), concrete, content=b"{}" if method == "post" else None)
                assert not reply.headers["content-type"].startswith("text/html") or concrete in ("/", "/docs"), (
                    method,
                    concrete,
                    reply.status_code,
                )
                assert str(reply.status_code) in item[method]["responses"], (method, concrete, reply.status_code)


def test_every_request_example_is_answered(server, document):
    with httpx.Client(base_url=server.rest_url) as client:
        answered = 0
        for path, item in document["paths"].items():
            if "{" in path or "post" not in item:
                continue
            for name, example in item["post"]["requestBody"]["content"]["application/json"]["examples"].items():
                reply = client.post(path, json=example["value"])
                assert reply.status_code == 200, (path, name, reply.text)
                answered += 1
        # half: 3 operations (newest, 1, 2) x 2 examples (two signatures; a prediction and a sequence chunk);
        # counter: 2 operations (newest, 1) x 1 example; on both fronts
        assert answered == 2 * (3 * 2 + 2 * 1)
        reply = client.post("/v1/models/half/versions/1:predict", json={"instances": [[[1.0], [2.0]]]})
        assert reply.json() == {"predictions": [[[2.5], [3.0]]]}


def test_model_names_are_percent_encoded_in_paths(tmp_path):
    from rnnkit_serving.core.signature import Signature, TensorSpec
    from rnnkit_serving.fronts.rest.openapi import ModelEntry, VersionEntry

    signature = Signature(
        "serving_default", (TensorSpec("x", "float32", (None, 3)),), (TensorSpec("y", "bool", (None,)),)
    )
    name = "a b/{c}:<d>"
    doc = openapi_document([ModelEntry(name, (VersionEntry(7, {"serving_default": signature}),))])
    validate(doc)
    encoded = urllib.parse.quote(name, safe="")
    assert f"/v2/models/{encoded}/versions/7/infer" in doc["paths"]
    assert f"/v1/models/{encoded}:predict" in doc["paths"]
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) and "infer_a_b_c_d_v7" in ids
    assert json.loads(json.dumps(doc)) == doc


# ----------------------------------------------------------- what schemathesis found (fixed)


def test_a_signature_name_that_is_not_a_string_is_a_400_on_classify_and_regress(server):
    """Was a 500 ("unhashable type: 'dict'"); now :predict's answer."""
    for verb in ("classify", "regress"):
        reply = httpx.post(f"{server.rest_url}/v1/models/counter:{verb}", json={"signature_name": {}, "inputs": None})
        assert reply.status_code == 400 and reply.headers["content-type"] == "application/json"
        assert reply.json() == {"error": "'signature_name' key must be a string value. Received: {}"}
    reply = httpx.post(f"{server.rest_url}/v1/models/counter:predict", json={"signature_name": {}, "inputs": None})
    assert reply.json() == {"error": "'signature_name' key must be a string value. Received: {}"}


def test_a_path_with_an_encoded_newline_reaches_the_routes(server):
    """Starlette's route pattern stops at a newline: such paths got its text/plain 404 instead of the routes."""
    reply = httpx.get(server.rest_url + "/v2/models/a%0Ab")
    assert reply.status_code == 404 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {"error": "Servable not found for request: Latest(a\nb)"}
    reply = httpx.get(server.rest_url + "/v1/models/counter/labels/x%0Ay/metadata")
    assert reply.status_code == 400 and reply.json() == {"error": "Unrecognized servable version label: x\ny"}
    reply = httpx.get(server.rest_url + "/elsewhere%0A")  # unknown paths keep TF Serving's 404 page
    assert reply.status_code == 404 and reply.headers["content-type"].startswith("text/html")


# ------------------------------------------------------------------------------ schemathesis

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(server, tmp_path):
    """schemathesis's own runner (its pytest loader cannot take a fixture under pytest 9) against the live
    server's /openapi.json: every operation, through its examples, coverage (boundary and invalid values),
    fuzzing and stateful phases, with a fixed seed and a bounded number of examples per operation."""
    report = tmp_path / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        server.rest_url + "/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "10",
        "--workers",
        "1",
        "--seed",
        "23",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    # its cache (.schemathesis/) goes to the test's own directory, not the checkout
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    cases = ElementTree.parse(report).getroot().iter("testcase")
    results = {case.get("name"): [child.tag for child in case] for case in cases}
    operations = {f"{method.upper()} {path}" for path, item in document_of(server)["paths"].items() for method in item}
    # every operation of the document ran (schemathesis leaves out the one it read the document from)
    assert set(results) == (operations - {"GET /openapi.json"}) | {"Stateful tests"}
    assert not {name: tags for name, tags in results.items() if {"failure", "error"} & set(tags)}
    assert "generated" in run.stdout and ", 0 passed" not in run.stdout


def document_of(server):
    return httpx.get(server.rest_url + "/openapi.json").json()
