"""The landing page (GET /) and the /docs route, in-process: what the page shows, that it escapes every
model-controlled string, that it only reads (GET and HEAD; no form, no script), the assets /docs loads
all come from the server, and unknown paths keep TF Serving's 404 page. The browser test
(tests/test_browser.py) renders the same pages in Chromium."""

import os
import re
import sys
import warnings

import httpx
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_repo  # noqa: E402

from rnnkit_serving import FakeBackend, Predictor, Signature, TensorSpec  # noqa: E402
from rnnkit_serving.config.batching_config import BatchingParameters  # noqa: E402
from rnnkit_serving.config.model_config import ModelConfig  # noqa: E402
from rnnkit_serving.config.tls import SSLConfig  # noqa: E402
from rnnkit_serving.core.metrics import Metrics, nearest_rank  # noqa: E402
from rnnkit_serving.core.server_info import ServerInfo  # noqa: E402
from rnnkit_serving.core.status import END, VersionStatus  # noqa: E402
from rnnkit_serving.errors import Code  # noqa: E402
from rnnkit_serving.fronts.rest.discovery import DOCS_HTML, DOCS_SCRIPT, docs_asset  # noqa: E402
from rnnkit_serving.fronts.rest.landing import ModelSummary, Page, VersionSummary, render_landing  # noqa: E402
from rnnkit_serving.fronts.rest.openapi import DOCS_ASSETS  # noqa: E402
from rnnkit_serving.registry import ModelRegistry  # noqa: E402
from rnnkit_serving.server.model_server import ServerOptions, load_registry, server_info  # noqa: E402

HOSTILE = '<script>alert("x")</script>'
NOT_FOUND_HTML = "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"


def client_for(registry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        from rnnkit_serving import app

        return TestClient(app(registry))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("landing"))
    tiny_repo.publish(tiny_repo.write_half, os.path.join(base, "half"), 1)
    tiny_repo.publish(tiny_repo.write_counter, os.path.join(base, "counter"), 1)
    tiny_repo.publish(tiny_repo.write_counter, os.path.join(base, "counter"), 2, corrupt=True)
    return base


@pytest.fixture(scope="module")
def client(repo):
    configs = [
        ModelConfig("half", os.path.join(repo, "half")),
        ModelConfig("counter", os.path.join(repo, "counter")),
        ModelConfig("empty", os.path.join(repo, "nothing-here")),
    ]
    registry = load_registry(configs)
    with client_for(registry) as c:
        yield c
    registry.close()


def text_of(html: str) -> str:
    """The page's visible text, roughly (tags dropped, entities kept as written)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", html, flags=re.S)))


def test_the_page_shows_models_versions_states_and_runtime(client):
    body = {"inputs": [{"name": "x", "shape": [1, 3, 1], "datatype": "FP32", "data": [1, 2, 3]}]}
    for _ in range(3):
        assert client.post("/v2/models/half/infer", json=body).status_code == 200
    assert client.post("/v2/models/half/infer", json={"inputs": []}).status_code == 400
    chunk = {**body, "parameters": {"sequence_id": "s-1", "sequence_start": True}}
    assert client.post("/v2/models/half/infer", json=chunk).status_code == 200
    reply = client.get("/")
    assert reply.status_code == 200 and reply.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in reply.headers["content-security-policy"]  # default-src 'none': no script runs
    assert reply.headers["content-security-policy"].startswith("default-src 'none'")
    html = reply.text
    text = text_of(html)
    sections = {
        name: text_of(s) for name, s in re.findall(r'<section class="model"><h3>(.*?)</h3>(.*?)</section>', html)
    }
    assert list(sections) == ["counter", "empty", "half"]
    half = sections["half"]
    assert "open sessions 1" in half  # the sequence started above
    assert "requests 5 (INVALID_ARGUMENT 1, OK 4)" in half
    assert re.search(r"latency p50 [0-9.]+ ms, p90 [0-9.]+ ms, p99 [0-9.]+ ms \(last 4 successful requests", half)
    assert "1 AVAILABLE onnx, fp32 cpu CPUExecutionProvider yes" in half
    assert "serving_default : x float32 [-1, -1, 1] &rarr; y float32 [-1, -1, 1]" in half
    counter = sections["counter"]
    assert "2 END FAILED_PRECONDITION: ONNX Runtime cannot load" in counter  # the broken version and its error
    assert "1 AVAILABLE onnx, fp32" in counter and "requests none yet" in counter
    assert "no (model &#x27;counter&#x27; version 1 cannot stream (no sessions): a bidirectional layer" in counter
    assert "Could not find any versions of model empty" in sections["empty"]
    for href in ("docs", "openapi.json", "v2", "v2/health/ready", "monitoring/prometheus/metrics", "v1/models/half"):
        assert f'href="{href}"' in html, href
    assert "<form" not in html and "<script" not in html and "<button" not in html and "<input" not in html
    assert "max request body 16777216 bytes --max_request_bytes" in text


def test_every_model_controlled_string_is_escaped():
    signature = Signature(
        "serving_default", (TensorSpec(HOSTILE, "float32", (None, 2)),), (TensorSpec("y", "float32", (None,)),)
    )
    predictor = Predictor(HOSTILE, 3, {"serving_default": FakeBackend(signature)})
    with client_for(ModelRegistry.of([predictor])) as client:
        html = client.get("/").text
    assert "<script>" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert 'href="v1/models/%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E/metadata"' in html
    page = Page(
        ServerInfo("1<b>"),
        [
            ModelSummary(
                "m",
                (
                    VersionSummary(
                        VersionStatus(
                            2, END, "UNKNOWN", f"cannot load '/models/{HOSTILE}/2': <img src=x onerror=alert(1)>"
                        )
                    ),
                ),
            )
        ],
    )
    html = render_landing(page)
    assert "<img" not in html and "<script>" not in html and "<b>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "1&lt;b&gt;" in html


def test_head_works_and_the_page_cannot_be_used_to_change_anything(client):
    head = client.head("/")
    assert (
        head.status_code == 200 and head.headers["content-type"] == "text/html; charset=utf-8" and head.content == b""
    )
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/docs", "/openapi.json", "/docs/swagger-ui.css"):
            reply = client.request(method, path, content=b"{}")
            assert reply.status_code == 405 and reply.headers["allow"] == "GET, HEAD", (method, path)
            assert reply.json() == {"error": f"{path} answers GET and HEAD only; received {method}"}


def test_unknown_paths_keep_tf_servings_404_page(client):
    for path in (
        "/index.html",
        "/doc",
        "/docs/",
        "/docs/swagger-editor.js",
        "/docs/%2e%2e%2fopenapi.json",
        "/v3",
        "/openapi.yaml",
    ):
        reply = client.get(path)
        assert (reply.status_code, reply.headers["content-type"], reply.text) == (
            404,
            "text/html; charset=utf-8",
            NOT_FOUND_HTML,
        ), path


def test_docs_page_and_its_assets_come_from_the_server(client):
    reply = client.get("/docs")
    assert reply.status_code == 200 and reply.text == DOCS_HTML
    policy = reply.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "http" not in policy
    sources = re.findall(r'(?:src|href)="([^"]+)"', DOCS_HTML)
    assert sources == [
        "docs/swagger-ui.css",
        "docs/favicon-32x32.png",
        "openapi.json",
        "./",
        "docs/swagger-ui-bundle.js",
        "docs/rnnkit-docs.js",
    ]
    assert all("//" not in s and not s.startswith("/") for s in sources)  # relative: this server, any path prefix
    assert 'url: "openapi.json"' in DOCS_SCRIPT and "validatorUrl: null" in DOCS_SCRIPT
    for name in DOCS_ASSETS:
        asset = client.get(f"/docs/{name}")
        assert asset.status_code == 200 and asset.content == docs_asset(name), name
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
    assert re.search(rb'version:"5\.\d+\.\d+"|"5\.\d+\.\d+"', bundle.content)  # Swagger UI 5 (renders OpenAPI 3.1)
    assert client.get("/docs/swagger-ui.css").headers["content-type"] == "text/css; charset=utf-8"


def test_server_info_reports_the_flags_that_matter():
    info = server_info(ServerOptions(rest_api_port=8601, port=0, grpc_inference_port=8701), version="9.9")
    assert info.version == "9.9"
    assert info.value("REST (TF Serving v1, KServe v2)") == "http://127.0.0.1:8601"
    assert info.value("gRPC (TF Serving)") == "off" and info.value("gRPC (KServe v2)") == "127.0.0.1:8701"
    assert info.value("TLS") == "off" and info.value("dynamic batching") == "off"
    assert info.value("max request body") == f"{16 << 20} bytes" and info.value("max batch size") == "1024"
    assert info.value("max header bytes") == "32768 bytes" and info.value("max connections per port") == "512"
    assert info.value("REST request timeout") == "30000 ms" and info.value("body timeout") == "30 s"
    ssl = SSLConfig("key", "cert", client_verify=True)
    batching = BatchingParameters(max_batch_size=32, batch_timeout_micros=500, num_batch_threads=2)
    info = server_info(ServerOptions(rest_api_port=8601, port=8600, ssl=ssl, batching=batching), version="1")
    assert info.value("REST (TF Serving v1, KServe v2)") == "https://127.0.0.1:8601"
    assert info.value("TLS") == "on, client certificates required"
    assert info.value("dynamic batching") == "on" and info.value("max_batch_size") == "32"
    assert info.value("batch_timeout_micros") == "500"
    flags = {s.flag for s in info.settings}
    assert {
        "--rest_api_port",
        "--ssl_config_file",
        "--enable_batching",
        "--max_request_bytes",
        "--max_header_bytes",
    } <= flags


def test_recent_latency_percentiles_are_nearest_rank_over_a_bounded_window():
    rng = np.random.default_rng(3)
    values = rng.exponential(1000.0, 1500)
    metrics = Metrics()
    for value in values:
        metrics.record("m", "predict", "REST", Code.OK, float(value))
    metrics.record("m", "predict", "REST", Code.NOT_FOUND, 1.0)
    traffic = metrics.traffic()["m"]
    assert traffic.counts == {"NOT_FOUND": 1, "OK": 1500} and traffic.total == 1501
    assert traffic.window == 1000  # the last 1000 successful requests
    recent = values[-1000:]
    for p in (50, 90, 99):
        assert traffic.percentiles_us[p] == np.percentile(recent, p, method="inverted_cdf")
    assert nearest_rank([5.0], 99) == 5.0 and nearest_rank([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_the_live_servers_page_shows_its_own_flags(tmp_path):
    from rnnkit_serving.server.model_server import start_server

    tiny_repo.publish(tiny_repo.write_half, str(tmp_path / "half"), 1)
    server = start_server(str(tmp_path / "half"), "half", poll_seconds=0, batching=BatchingParameters(max_batch_size=8))
    try:
        text = text_of(httpx.get(server.rest_url + "/").text)
        port = server.options.rest_api_port
        assert f"REST (TF Serving v1, KServe v2) http://127.0.0.1:{port} --rest_api_port" in text
        assert "gRPC (TF Serving) off --port" in text and "TLS off --ssl_config_file" in text
        assert "dynamic batching on --enable_batching" in text and "max_batch_size 8" in text
        assert "repository poll off" in text
    finally:
        server.stop()


def test_the_document_is_built_off_the_event_loop_and_kept_until_the_served_versions_change(tmp_path, monkeypatch):
    """An attacker asking for /openapi.json in a loop: with 20 models it takes ~19 ms to build and write, which
    on the event loop every other connection would wait for. It is built in a worker thread, and only again
    when the served (model, versions) change or it is OPENAPI_MAX_AGE_S old."""
    import threading

    from rnnkit_serving.fronts.rest import discovery

    builders = []
    real = discovery.openapi_document

    def spy(*args, **kwargs):
        builders.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(discovery, "openapi_document", spy)
    base = str(tmp_path)
    tiny_repo.publish(tiny_repo.write_half, os.path.join(base, "half"), 1)
    registry = load_registry([ModelConfig("half", os.path.join(base, "half"))])
    try:
        with client_for(registry) as client:
            routes = client.app.state.front.discovery
            first = [client.get("/openapi.json").json() for _ in range(5)]
            assert routes.openapi_builds == 1 and all(doc == first[0] for doc in first)
            assert builders and all(name.startswith("rnnkit-rest") for name in builders)  # a worker, not the loop
            assert "/v2/models/half/versions/2/infer" not in first[0]["paths"]
            tiny_repo.publish(tiny_repo.write_half, os.path.join(base, "half"), 2)
            registry.poll()
            assert 2 in registry.versions("half")
            assert "/v2/models/half/versions/2/infer" in client.get("/openapi.json").json()["paths"]
            assert routes.openapi_builds == 2
            monkeypatch.setattr(discovery, "OPENAPI_MAX_AGE_S", 0.0)
            client.get("/openapi.json")
            assert routes.openapi_builds == 3  # the backstop age
    finally:
        registry.close()
