"""deploy/: the Kubernetes manifests validate against Kubernetes' schemas (kubernetes-validate,
offline, strict: unknown fields are errors); the KServe objects against KServe's own CRD schemas
(tests/fixtures/kserve, extracted from kserve/kserve's config/crd/full, made strict the same way);
every container command line parses with `rnnkit serve`'s own parser and names the ports its
manifest declares; every probe and metrics path answers 200 on a live server (gRPC probes:
SERVING from grpc.health.v1); the Dockerfile's extras install no TensorFlow or Keras.

Nothing here starts a cluster or builds an image (neither is possible on the test machine)."""

import copy
import gzip
import json
import pathlib
import shlex

import grpc
import httpx
import jsonschema
import pytest
import serving_repo
import tomllib
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

import rnnkit_cli
from rnnkit_serving import start_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "kserve"
KUBERNETES_VERSION = "1.30.0"


def documents():
    """(file name, object) for every YAML document under deploy/."""
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found.append((str(path.relative_to(DEPLOY)), doc))
    return found


def objects(kind):
    return [doc for _, doc in documents() if doc["kind"] == kind]


def test_every_manifest_parses_and_is_known():
    kinds = sorted((name, doc["kind"]) for name, doc in documents())
    assert kinds == [
        ("kserve/inferenceservice.yaml", "InferenceService"),
        ("kserve/inferenceservice.yaml", "InferenceService"),
        ("kserve/servingruntime.yaml", "ServingRuntime"),
        ("kubernetes/istio-sticky-sessions.yaml", "DestinationRule"),
        ("kubernetes/rnnkit-serve.yaml", "Deployment"),
        ("kubernetes/rnnkit-serve.yaml", "HorizontalPodAutoscaler"),
        ("kubernetes/rnnkit-serve.yaml", "Service"),
    ]


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler"])
def test_kubernetes_objects_validate_strictly(kind):
    import kubernetes_validate

    (doc,) = objects(kind)
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(doc)
    broken["spec"]["bogusField"] = 1  # the validator rejects what a typo would produce
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def strict(schema):
    """A CRD's structural schema with unknown fields refused (the API server would prune them silently)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def kserve_schema(kind, version):
    with gzip.open(FIXTURES / f"{kind}-{version}.schema.json.gz") as handle:
        fixture = json.load(handle)
    assert fixture["kind"] == kind and fixture["group"] == "serving.kserve.io"
    return strict(fixture["openAPIV3Schema"])


@pytest.mark.parametrize("kind, version", [("ServingRuntime", "v1alpha1"), ("InferenceService", "v1beta1")])
def test_kserve_objects_validate_against_kserves_crd_schemas(kind, version):
    schema = kserve_schema(kind, version)
    docs = objects(kind)
    assert docs
    for doc in docs:
        assert doc["apiVersion"] == f"serving.kserve.io/{version}"
        jsonschema.validate(doc, schema)
        broken = copy.deepcopy(doc)
        broken["spec"]["bogusField"] = 1
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_kserve_runtime_speaks_the_three_protocols_with_prometheus_annotations():
    (runtime,) = objects("ServingRuntime")
    assert runtime["spec"]["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    annotations = runtime["spec"]["annotations"]
    assert annotations == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": METRICS}
    protocols = sorted(isvc["spec"]["predictor"]["model"]["protocolVersion"] for isvc in objects("InferenceService"))
    assert protocols == ["grpc-v2", "v2"]
    for isvc in objects("InferenceService"):
        assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]


# ------------------------------------------------------------------- container command lines

METRICS = "/monitoring/prometheus/metrics"


def dockerfile_command():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    entrypoint = [json.loads(line.split(None, 1)[1]) for line in lines if line.startswith("ENTRYPOINT ")]
    cmd = [json.loads(line.split(None, 1)[1]) for line in lines if line.startswith("CMD ")]
    assert len(entrypoint) == 1 and len(cmd) == 1
    return entrypoint[0] + cmd[0]


def containers():
    """(where, command line, container) for each container that runs the image."""
    image_entrypoint = dockerfile_command()[:2]
    found = []
    for deployment in objects("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            found.append(("Deployment", container.get("command", image_entrypoint) + container["args"], container))
    for runtime in objects("ServingRuntime"):
        for container in runtime["spec"]["containers"]:
            found.append(("ServingRuntime", container["command"] + container["args"], container))
    return found


def parse_serve(argv):
    assert argv[:2] == ["rnnkit", "serve"], argv
    return rnnkit_cli.build_parser("serve").parse_args(argv[1:])


def test_container_command_lines_parse_with_rnnkit_serves_parser():
    docker = parse_serve(dockerfile_command())
    assert (docker.host, docker.rest_api_port, docker.port, docker.grpc_inference_port) == ("0.0.0.0", 8080, 0, 9000)
    assert docker.model_config_file == "/models/models.config"
    assert 'VOLUME ["/models"]' in (DEPLOY / "Dockerfile").read_text()
    for where, argv, container in containers():
        args = parse_serve(argv)
        assert args.host == "0.0.0.0" and args.port == 0, where  # no TF Serving gRPC: the image has no TensorFlow
        assert (args.rest_api_port, args.grpc_inference_port) == (8080, 9000), where
        declared = {p["containerPort"] for p in container.get("ports", ())}
        assert declared <= {args.rest_api_port, args.grpc_inference_port}, where
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            spec = container.get(probe)
            if spec is None:
                continue
            port = spec["httpGet"]["port"] if "httpGet" in spec else spec["grpc"]["port"]
            named = {p["name"]: p["containerPort"] for p in container.get("ports", ())}
            assert named.get(port, port) == (args.rest_api_port if "httpGet" in spec else args.grpc_inference_port)
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    # the repository is mounted read-only where the command line reads it
    (deployment,) = objects("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert parse_serve(container.get("command", ["rnnkit", "serve"]) + container["args"]).model_config_file.startswith(
        "/models/"
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert "USER 1000:1000" in (DEPLOY / "Dockerfile").read_text()


def test_a_typo_in_a_command_line_would_be_caught():
    with pytest.raises(SystemExit):
        parse_serve(["rnnkit", "serve", "--grpc_inferance_port=9000"])
    assert shlex.split("--a=1") == ["--a=1"]  # args are passed as single words, no shell


# -------------------------------------------------------------------- probes on a live server


def probes():
    """(kind, path or port) of every probe and metrics endpoint the manifests point at."""
    found = set()
    for _, _, container in containers():
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            spec = container.get(probe)
            if spec is not None:
                found.add(("http", spec["httpGet"]["path"]) if "httpGet" in spec else ("grpc", ""))
    for isvc in objects("InferenceService"):
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in isvc["spec"]["predictor"]["model"]:
                found.add(("grpc", ""))
    found.add(("http", objects("Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]))
    found.add(("http", objects("ServingRuntime")[0]["spec"]["annotations"]["prometheus.kserve.io/path"]))
    return sorted(found)


def test_every_probe_path_answers_200_on_a_live_server():
    assert probes() == [("grpc", ""), ("http", METRICS), ("http", "/v2/health/live"), ("http", "/v2/health/ready")]
    repo = serving_repo.shared_repository()
    server = start_server(f"{repo}/lstm", "lstm", grpc_inference_port=None)
    try:
        for kind, path in probes():
            if kind == "http":
                assert httpx.get(server.rest_url + path, timeout=30).status_code == 200, path
            else:  # Kubernetes' grpc probe asks grpc.health.v1 for the service ""
                with grpc.insecure_channel(server.grpc_inference_target) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


# ------------------------------------------------------------------------------- the image


def expand(extras, table, seen=None):
    """Requirement names of `extras`, following `rnnkit[...]` references."""
    seen = set() if seen is None else seen
    names = set()
    for extra in extras:
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in table[extra]:
            name = requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
            if name == "rnnkit":
                names |= expand(requirement.split("[")[1].split("]")[0].split(","), table, seen)
            else:
                names.add(name.lower())
    return names


def test_the_image_installs_no_tensorflow():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert '[serve,grpc]"' in dockerfile  # the extras the image installs
    names = expand(["serve", "grpc"], project["optional-dependencies"]) | {
        r.split(">")[0].strip().lower() for r in project["dependencies"]
    }
    assert names == {
        "numpy",
        "onnxruntime",
        "starlette",
        "uvicorn",
        "httptools",
        "uvloop",
        "prometheus-client",
        "orjson",
        "pysimdjson",  # KServe JSON float data into arrays without a Python float per value
        "swagger-ui-py",  # /docs: Swagger UI's files, served by the server itself (no CDN)
        "grpcio",
        "grpcio-health-checking",
        "tritonclient",
    }
    # and `make test` still installs everything through the dev extra
    everything = expand(["dev"], project["optional-dependencies"])
    assert {"tensorflow", "keras", "tensorflow-serving-api", "tf2onnx", "kubernetes-validate"} <= everything
    assert project["scripts"] == {"rnnkit": "rnnkit_cli:main"}
