"""The OpenAPI 3.1 description of the REST port, written once as data (no I/O, no server needed).

:func:`openapi_document` returns the document as a ``dict`` ready for ``json.dumps``:

- with no models (``openapi_document()``), the generic description of every route: TF Serving REST v1
  (``:predict``; ``:classify`` and ``:regress``, which are always refused with TF Serving's texts; model
  status and metadata, with ``/versions/N`` and ``/labels/L``), KServe v2 / Open Inference Protocol
  (server metadata, liveness, readiness, model metadata and readiness, ``infer`` with Triton's sequence
  parameters and the binary tensor extension), the Prometheus metrics path and the discovery routes
  (``/``, ``/docs`` and its assets, ``/openapi.json``). This is what a documentation site renders;
- with the loaded models (:class:`ModelEntry`, what ``GET /openapi.json`` passes), the same routes
  with ``model_name`` restricted to the served names, plus one ``:predict`` and one ``infer`` operation
  per model and per served version (tagged with the model's name) whose request schemas spell out the
  signature: input names, dtypes (as JSON types with their ranges) and shapes (fixed dimensions as
  constants, dynamic ones as any size), with a request example that the model answers.

Every error response is the server's real envelope, ``{"error": "..."}``, under the HTTP status the
server maps each code to (:data:`rnnkit_serving.errors.HTTP_STATUS`), including the connection-level
refusals of the REST port (408, 431, 503: :mod:`rnnkit_serving.fronts.rest.connections`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np

from rnnkit_serving.codecs.kserve.rest import HEADER_LENGTH, SERVER_EXTENSIONS
from rnnkit_serving.codecs.kserve.sequence import SEQUENCE_HEADER
from rnnkit_serving.codecs.kserve.tensors import DATATYPES, KNOWN_DATATYPES
from rnnkit_serving.core import defaults
from rnnkit_serving.core.identifiers import MAX_SEQUENCE_ID, MAX_VERSION
from rnnkit_serving.core.metrics import REQUEST_COUNT, REQUEST_LATENCY
from rnnkit_serving.core.signature import DATA_TYPES, DEFAULT_SIGNATURE, Signature, TensorSpec

__all__ = ["DOCS_ASSETS", "METRICS_PATH", "ModelEntry", "VersionEntry", "openapi_document"]

OPENAPI_VERSION = "3.1.0"
METRICS_PATH = "/monitoring/prometheus/metrics"
# the files /docs loads, served by the server itself from the swagger-ui-py package (plus rnnkit's starter)
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "rnnkit-docs.js", "favicon-32x32.png")
JSON = "application/json"
BINARY = "application/octet-stream"
HTML = "text/html"
METRICS_TYPE = "text/plain"

TAG_TFS = "TF Serving REST v1"
TAG_KSERVE = "KServe v2 (Open Inference Protocol)"
TAG_HEALTH = "Health"
TAG_MONITORING = "Monitoring"
TAG_DISCOVERY = "Discovery"


@dataclass(frozen=True)
class VersionEntry:
    """One served version of a model: its number, signatures by name, and whether it streams."""

    version: int
    signatures: Mapping[str, Signature]
    streaming: bool = False


@dataclass(frozen=True)
class ModelEntry:
    """A served model name and its served versions, newest first (the first answers unversioned paths)."""

    name: str
    versions: tuple[VersionEntry, ...] = ()


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


# ------------------------------------------------------------------------------------ errors

# (status, response component, when the server answers it)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request does not fit the model"),
    404: ("NotFound", "NOT_FOUND: no such model, version or path"),
    408: ("RequestTimeout", "the request body stopped arriving for --body_timeout_seconds (the connection closes)"),
    413: ("PayloadTooLarge", "the body is larger than --max_request_bytes"),
    429: ("TooManyRequests", "RESOURCE_EXHAUSTED: e.g. --max_sessions live sequences"),
    431: ("HeadersTooLarge", "the request line and headers exceed --max_header_bytes (the connection closes)"),
    500: ("InternalError", "an internal error (a bug: the message names the exception)"),
    501: ("NotImplemented", "UNIMPLEMENTED: a float16 input over TF Serving JSON (TF Serving's answer)"),
    503: (
        "Unavailable",
        "UNAVAILABLE: the version was closed, the batch queue is full or closed, or the port holds "
        "--max_connections connections (connections beyond serve health and readiness only)",
    ),
    504: ("GatewayTimeout", "DEADLINE_EXCEEDED: the request took longer than --rest_api_timeout_in_ms"),
}
_ERROR_EXAMPLES: dict[int, str] = {
    400: "input 'x': datatype FP64, the model expects FP32",
    404: "Servable not found for request: Latest(missing)",
    408: "the request body stopped arriving for 30 s before its declared Content-Length (limit --body_timeout_seconds)",
    413: "Request body is larger than the server limit of 16777216 bytes (--max_request_bytes)",
    429: "the server holds 1000 live sequences (--max_sessions); end sequences or wait for idle ones to expire",
    431: "the request line and headers exceed 32768 bytes (--max_header_bytes)",
    500: "Internal error: ValueError: ...",
    501: "Conversion of JSON Value: [1.0] to type: half",
    503: "model 'half' version 2 is closed",
    504: "Request timed out after 30000 ms (--rest_api_timeout_in_ms)",
}
_CONNECTION = (408, 431, 503)  # what the connection guard may answer on any path
_MODEL_ERRORS = (400, 404, 500, 503, 504)  # any request that reaches a model's version
_BODY_ERRORS = (413,)


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ref("responses", _ERRORS[code][0]) for code in sorted({*codes, *_CONNECTION})}


def _error_components() -> dict[str, Any]:
    return {
        name: {
            "description": f"{status}: {when}. The body is the server's error envelope.",
            "content": {JSON: {"schema": _ref("schemas", "Error"), "example": {"error": _ERROR_EXAMPLES[status]}}},
        }
        for status, (name, when) in _ERRORS.items()
    }


# ----------------------------------------------------------------------------------- schemas

_STRING_MAP = {"type": "object", "additionalProperties": True}


def _schemas() -> dict[str, Any]:
    tensor_metadata = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": list(KNOWN_DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1: any size"},
        },
    }
    sequence_parameters = {
        "sequence_id": {
            "description": (
                "Triton's correlation id: the request is one chunk of this sequence; the server keeps the RNN "
                f"state between chunks. A uint64 (not 0) or a string of at most --max_sequence_id_length "
                f"({defaults.MAX_SEQUENCE_ID_LENGTH}) UTF-8 bytes. The {SEQUENCE_HEADER} header may carry it instead."
            ),
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE_ID},
                {"type": "string"},
            ],
        },
        "sequence_start": {"type": "boolean", "description": "this chunk starts (or restarts) the sequence"},
        "sequence_end": {"type": "boolean", "description": "this chunk ends the sequence (its state is dropped)"},
        "binary_data_output": {
            "type": "boolean",
            "description": "binary tensor extension: answer every output as raw bytes after the JSON header",
        },
    }
    data = {
        "type": "array",
        "description": "the values in row-major order, flat (or nested as the shape)",
        "items": {"type": ["number", "integer", "boolean", "string", "array"]},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "what was wrong, expected and received"}},
            "additionalProperties": False,
        },
        "TfsModelVersionStatus": {
            "type": "object",
            "required": ["version", "state", "status"],
            "properties": {
                "version": {"type": "string", "pattern": "^[0-9]+$"},
                "state": {"type": "string", "enum": ["LOADING", "AVAILABLE", "END"]},
                "status": {
                    "type": "object",
                    "required": ["error_code", "error_message"],
                    "properties": {
                        "error_code": {"type": "string", "description": "OK, or why the version is END"},
                        "error_message": {"type": "string"},
                    },
                },
            },
        },
        "TfsModelStatus": {
            "type": "object",
            "required": ["model_version_status"],
            "properties": {
                "model_version_status": {"type": "array", "items": _ref("schemas", "TfsModelVersionStatus")}
            },
        },
        "TfsModelMetadata": {
            "type": "object",
            "required": ["model_spec", "metadata"],
            "properties": {
                "model_spec": {
                    "type": "object",
                    "required": ["name", "signature_name", "version"],
                    "properties": {
                        "name": {"type": "string"},
                        "signature_name": {"type": "string"},
                        "version": {"type": "string"},
                    },
                },
                "metadata": {
                    "type": "object",
                    "required": ["signature_def"],
                    "properties": {"signature_def": _STRING_MAP},
                    "description": "TF Serving's SignatureDefMap (tensor names, DT_* dtypes, shapes with -1)",
                },
                "rnnkit": {
                    "type": "object",
                    "description": "the runtime: backend, variant, and per signature its file, device and providers",
                    "properties": {
                        "backend": {"type": "string"},
                        "variant": {"type": "string"},
                        "signatures": _STRING_MAP,
                    },
                },
            },
        },
        "TfsPredictRequest": {
            "type": "object",
            "description": (
                "Row form (`instances`: a list of rows, each a tensor or an object of named tensors) or columnar "
                'form (`inputs`: a tensor or an object of named tensors). Strings may be given as {"b64": ...}.'
            ),
            "properties": {
                "signature_name": {"type": "string", "default": DEFAULT_SIGNATURE},
                "instances": {"type": "array", "minItems": 1},
                "inputs": {},
            },
            "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
        },
        "TfsPredictResponse": {
            "type": "object",
            "description": "`predictions` for the row form, `outputs` for the columnar form",
            "properties": {"predictions": {"type": "array"}, "outputs": {}},
            "oneOf": [{"required": ["predictions"]}, {"required": ["outputs"]}],
        },
        "KServeServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"const": "rnnkit"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}, "examples": [list(SERVER_EXTENSIONS)]},
            },
        },
        "KServeLive": {
            "type": "object",
            "required": ["live"],
            "properties": {"live": {"type": "boolean"}},
        },
        "KServeReady": {
            "type": "object",
            "required": ["ready"],
            "properties": {"ready": {"type": "boolean"}},
        },
        "KServeModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
        "KServeTensorMetadata": tensor_metadata,
        "KServeModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string", "examples": ["onnxruntime_onnx", "tensorflow_savedmodel"]},
                "inputs": {"type": "array", "items": _ref("schemas", "KServeTensorMetadata")},
                "outputs": {"type": "array", "items": _ref("schemas", "KServeTensorMetadata")},
            },
        },
        "KServeRequestParameters": {
            "type": "object",
            "properties": sequence_parameters,
            "additionalProperties": True,
        },
        "KServeRequestInput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": list(KNOWN_DATATYPES)},
                "data": data,
                "parameters": _ref("schemas", "KServeInputParameters"),
            },
            "description": "`data`, or (binary tensor extension) `parameters.binary_data_size` raw bytes",
        },
        "KServeInputParameters": {
            "type": "object",
            "properties": {
                "binary_data_size": {
                    "type": "integer",
                    "minimum": 0,
                    "description": f"the input's raw bytes follow the JSON header ({HEADER_LENGTH} bytes)",
                }
            },
            "additionalProperties": True,
        },
        "KServeRequestOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "properties": {"binary_data": {"type": "boolean"}},
                    "additionalProperties": True,
                },
            },
        },
        "KServeInferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": _ref("schemas", "KServeRequestParameters"),
                "inputs": {"type": "array", "minItems": 1, "items": _ref("schemas", "KServeRequestInput")},
                "outputs": {"type": "array", "items": _ref("schemas", "KServeRequestOutput")},
            },
        },
        "KServeResponseOutput": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string", "enum": list(KNOWN_DATATYPES)},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "data": {"type": "array"},
                "parameters": {
                    "type": "object",
                    "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                },
            },
        },
        "KServeInferResponse": {
            "type": "object",
            "required": ["model_name", "model_version", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "outputs": {"type": "array", "items": _ref("schemas", "KServeResponseOutput")},
            },
        },
    }


# --------------------------------------------------------------------------------- parameters


def _model_name_parameter(names: Sequence[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if names:
        schema = {"type": "string", "enum": list(names)}
    return {
        "name": "model_name",
        "in": "path",
        "required": True,
        "description": "a served model's name" + (f": one of {', '.join(names)}" if names else ""),
        "schema": schema,
    }


def _parameters() -> dict[str, Any]:
    return {
        "version": {
            "name": "version",
            "in": "path",
            "required": True,
            "description": "a version number (ASCII digits, int64)",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
        },
        "model_version": {
            "name": "model_version",
            "in": "path",
            "required": True,
            "description": "a version number (ASCII digits, int64)",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
        },
        "label": {
            "name": "label",
            "in": "path",
            "required": True,
            "description": "a version label of --model_config_file (`version_labels`)",
            "schema": {"type": "string", "minLength": 1},
        },
        "header_length": {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": (
                "binary tensor extension: the body is this many bytes of JSON (the request) followed by the raw "
                "bytes of each input whose `parameters.binary_data_size` says how many, in the order of `inputs`"
            ),
            "schema": {"type": "integer", "minimum": 0},
        },
        "sequence_header": {
            "name": SEQUENCE_HEADER,
            "in": "header",
            "required": False,
            "description": (
                "the sequence id, for load balancers that route a sequence's chunks by it (digits: a uint64 id, "
                "else a string id); stands in for the `sequence_id` parameter, and must agree with it when both "
                "are given"
            ),
            "schema": {"type": "string", "minLength": 1},
        },
    }


# ------------------------------------------------------------------------------ operations


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Any],
    parameters: Sequence[Any] = (),
    description: str = "",
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = responses
    return operation


def _ok(description: str, schema: str, media: str = JSON, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {media: {"schema": _ref("schemas", schema)}}}
    if headers:
        response["headers"] = headers
    return response


def _versioned(model: dict[str, Any], p: Mapping[str, Any], which: str) -> list[tuple[str, str, list[Any], str]]:
    """(path suffix, id suffix, parameters, what it names) for the newest, /versions/N and /labels/L forms."""
    forms = [("", "", [model], "the newest served version")]
    forms.append(("/versions/{version}", "_version", [model, p["version"]], "version N"))
    if which == "tfs":
        forms.append(("/labels/{label}", "_label", [model, p["label"]], "the version labelled L"))
    return forms


def _tfs_paths(model: dict[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    body = {"required": True, "content": {JSON: {"schema": _ref("schemas", "TfsPredictRequest")}}}
    for suffix, id_suffix, parameters, names in _versioned(model, p, "tfs"):
        base = "/v1/models/{model_name}" + suffix
        status_note = (
            "TF Serving's quirk, kept: a label on the status path lists every version."
            if id_suffix == "_label"
            else "Versions newest first: AVAILABLE, LOADING, or END with the error that stopped them."
        )
        paths[base] = {
            "get": _operation(
                f"tfs_model_status{id_suffix}",
                "Model status (every version: TF Serving ignores the label here)"
                if id_suffix == "_label"
                else f"Model status ({names})",
                TAG_TFS,
                {"200": _ok("the versions' states", "TfsModelStatus"), **_errors(400, 404, 500)},
                parameters,
                status_note,
            )
        }
        paths[base + "/metadata"] = {
            "get": _operation(
                f"tfs_model_metadata{id_suffix}",
                f"Model metadata ({names})",
                TAG_TFS,
                {"200": _ok("the SignatureDefMap and the runtime", "TfsModelMetadata"), **_errors(*_MODEL_ERRORS)},
                parameters,
            )
        }
        paths[base + ":predict"] = {
            "post": _operation(
                f"tfs_predict{id_suffix}",
                f"Predict ({names})",
                TAG_TFS,
                {"200": _ok("the outputs", "TfsPredictResponse"), **_errors(*_MODEL_ERRORS, *_BODY_ERRORS, 501)},
                parameters,
                "TF Serving's `:predict`, row or columnar form. Paths route case-insensitively, as TF Serving's.",
                body,
            )
        }
        for verb in ("classify", "regress"):
            kind = "classification" if verb == "classify" else "regression"
            paths[base + f":{verb}"] = {
                "post": _operation(
                    f"tfs_{verb}{id_suffix}",
                    f"{verb.capitalize()} (always refused: use :predict)",
                    TAG_TFS,
                    _errors(*_MODEL_ERRORS, *_BODY_ERRORS),
                    parameters,
                    f"rnnkit models take tensors, not tf.Example: the answer is TF Serving's 400, `Expected one input "
                    f"Tensor.` for a signature of several inputs, else `No {kind} inputs found in SignatureDef: "
                    "rnnkit models take tensors, not tf.Example; use :predict`.",
                    body,
                )
            }
    return paths


def _infer_body(schema: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    json_media: dict[str, Any] = {"schema": schema}
    if examples:
        json_media["examples"] = examples
    return {
        "required": True,
        "content": {
            JSON: json_media,
            BINARY: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        f"binary tensor extension: with the {HEADER_LENGTH} header, that many bytes of the JSON "
                        "request, then the raw little-endian row-major bytes of each input that declares "
                        "`parameters.binary_data_size` (BYTES: each element as a 4-byte length and its bytes)"
                    ),
                }
            },
        },
    }


def _infer_responses() -> dict[str, Any]:
    header = {
        HEADER_LENGTH: {
            "description": "binary answers only: the length of the JSON header before the outputs' raw bytes",
            "schema": {"type": "integer", "minimum": 0},
        }
    }
    ok = {
        "description": (
            "the outputs; as the binary tensor extension (JSON header, then raw bytes) when outputs were asked "
            "with `binary_data` or `binary_data_output`"
        ),
        "headers": header,
        "content": {
            JSON: {"schema": _ref("schemas", "KServeInferResponse")},
            BINARY: {"schema": {"type": "string", "format": "binary"}},
        },
    }
    return {"200": ok, **_errors(*_MODEL_ERRORS, *_BODY_ERRORS, 429)}


_INFER_DESCRIPTION = (
    "One prediction, or with Triton's sequence parameters (`sequence_id`, `sequence_start`, `sequence_end` in "
    f"`parameters`, or the `{SEQUENCE_HEADER}` header) one chunk of a streamed sequence: the server keeps the RNN "
    "state between chunks, and a sequence stays on the version it started on. A request with "
    f"`{HEADER_LENGTH}` is the binary tensor extension."
)


def _kserve_paths(model: dict[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2": {
            "get": _operation(
                "kserve_server_metadata",
                "Server metadata",
                TAG_KSERVE,
                {"200": _ok("name, version and extensions", "KServeServerMetadata"), **_errors()},
            )
        },
        "/v2/health/live": {
            "get": _operation(
                "kserve_server_live", "Liveness", TAG_HEALTH, {"200": _ok("always true", "KServeLive"), **_errors()}
            )
        },
        "/v2/health/ready": {
            "get": _operation(
                "kserve_server_ready",
                "Readiness: any version of any model serves",
                TAG_HEALTH,
                {
                    "200": _ok("ready", "KServeReady"),
                    "400": {
                        "description": 'not ready: no version serves (`{"ready": false}`)',
                        "content": {JSON: {"schema": _ref("schemas", "KServeReady")}},
                    },
                    **_errors(),
                },
            )
        },
    }
    versions = [("", "", [model]), ("/versions/{model_version}", "_version", [model, p["model_version"]])]
    for suffix, id_suffix, parameters in versions:
        base = "/v2/models/{model_name}" + suffix
        paths[base] = {
            "get": _operation(
                f"kserve_model_metadata{id_suffix}",
                "Model metadata" + (" (version N)" if id_suffix else ""),
                TAG_KSERVE,
                {"200": _ok("inputs, outputs, versions, platform", "KServeModelMetadata"), **_errors(*_MODEL_ERRORS)},
                parameters,
            )
        }
        paths[base + "/ready"] = {
            "get": _operation(
                f"kserve_model_ready{id_suffix}",
                "Model readiness" + (" (version N)" if id_suffix else ""),
                TAG_HEALTH,
                {
                    "200": _ok("the version serves", "KServeModelReady"),
                    "400": {
                        "description": "not ready (no such model or version: `ready` false), or a malformed version",
                        "content": {
                            JSON: {"schema": {"oneOf": [_ref("schemas", "KServeModelReady"), _ref("schemas", "Error")]}}
                        },
                    },
                    **_errors(500),
                },
                parameters,
            )
        }
        paths[base + "/infer"] = {
            "post": _operation(
                f"kserve_infer{id_suffix}",
                "Inference" + (" (version N)" if id_suffix else ""),
                TAG_KSERVE,
                _infer_responses(),
                [*parameters, p["header_length"], p["sequence_header"]],
                _INFER_DESCRIPTION,
                _infer_body(_ref("schemas", "KServeInferRequest")),
            )
        }
    return paths


def _discovery_paths() -> dict[str, Any]:
    def page(operation_id: str, summary: str, media: str, description: str) -> dict[str, Any]:
        content = {media: {"schema": {"type": "string"} if media != JSON else {"type": "object"}}}
        get = _operation(
            operation_id, summary, TAG_DISCOVERY, {"200": {"description": description, "content": content}}
        )
        head = _operation(
            operation_id + "_head", summary + " (headers only)", TAG_DISCOVERY, {"200": {"description": description}}
        )
        return {"get": get, "head": head}

    asset = {
        "name": "asset",
        "in": "path",
        "required": True,
        "description": "a file of the page (Swagger UI's, shipped in the swagger-ui-py package)",
        "schema": {"type": "string", "enum": list(DOCS_ASSETS)},
    }
    assets = _operation(
        "docs_asset",
        "A file of the /docs page",
        TAG_DISCOVERY,
        {
            "200": {
                "description": "the file",
                "content": {
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "404": {
                "description": "not a file of the page: TF Serving's 404 page, as for any unknown path",
                "content": {HTML: {"schema": {"type": "string"}}},
            },
            **_errors(),
        },
        [asset],
    )
    return {
        "/": page(
            "landing_page",
            "The landing page",
            HTML,
            "Plain HTML: version, flags, models with their versions, states, runtime and traffic; links. Read only.",
        ),
        "/docs": page("docs_page", "This API, interactive (Swagger UI)", HTML, "an HTML page served with its assets"),
        "/docs/{asset}": {"get": assets},
        "/openapi.json": page("openapi_document", "This document", JSON, "OpenAPI 3.1, with the served models"),
    }


def _metrics_path() -> dict[str, Any]:
    return {
        METRICS_PATH: {
            "get": _operation(
                "prometheus_metrics",
                "Prometheus metrics",
                TAG_MONITORING,
                {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {METRICS_TYPE: {"schema": {"type": "string"}}},
                    },
                    **_errors(),
                },
                description=(
                    f"TF Serving's names: `{REQUEST_COUNT}{{model_name,status}}`, `{REQUEST_LATENCY}` (microseconds), "
                    "plus rnnkit's batch sizes, live sessions and loaded versions."
                ),
            )
        }
    }


# ------------------------------------------------------------------------- per-model schemas


def _leaf(dtype: str, tfs: bool) -> dict[str, Any]:
    if dtype.startswith(("float", "bfloat")):
        return {"type": "number"}
    if dtype == "bool":
        return {"type": "boolean"}
    if dtype == "str":
        if tfs:
            return {"oneOf": [{"type": "string"}, {"type": "object", "required": ["b64"], "properties": {"b64": {}}}]}
        return {"type": "string"}
    info = np.iinfo(dtype)
    return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}


def _nested(dims: Sequence[int | None], leaf: dict[str, Any]) -> dict[str, Any]:
    schema = leaf
    for dim in reversed(dims):
        schema = {"type": "array", "items": schema}
        if dim is not None:
            schema["minItems"] = schema["maxItems"] = dim
    return schema


def _example_value(dtype: str) -> Any:
    if dtype == "bool":
        return True
    if dtype == "str":
        return "a"
    return 1 if not dtype.startswith("float") else 0.5


def _example_shape(spec: TensorSpec) -> list[int]:
    return [1 if index == 0 or dim is None else dim for index, dim in enumerate(spec.shape)]


def _example_nested(shape: Sequence[int], value: Any) -> Any:
    if not shape:
        return value
    return [_example_nested(shape[1:], value) for _ in range(shape[0])]


def _shape_text(spec: TensorSpec) -> str:
    return spec.shape_text()


def _spec_line(spec: TensorSpec) -> str:
    return f"`{spec.name}`: {spec.dtype} ({DATA_TYPES[spec.dtype][0]}, {DATATYPES[spec.dtype]}) {_shape_text(spec)}"


def _signature_text(signature: Signature) -> str:
    ins = "; ".join(_spec_line(s) for s in signature.inputs)
    outs = "; ".join(_spec_line(s) for s in signature.outputs)
    return f"- signature `{signature.name}`: inputs {ins}; outputs {outs}"


def _tfs_branch(signature: Signature) -> dict[str, Any]:
    """A ``:predict`` body for one signature: row or columnar form, each input's dtype and shape."""
    specs = signature.inputs
    rows = {s.name: _nested(s.shape[1:], _leaf(s.dtype, True)) for s in specs}
    columns = {s.name: _nested(s.shape, _leaf(s.dtype, True)) for s in specs}
    if len(specs) == 1:
        row_item: dict[str, Any] = rows[specs[0].name]
        column: dict[str, Any] = {"anyOf": [columns[specs[0].name], _named(columns)]}
    else:
        row_item = _named(rows)
        column = _named(columns)
    name_schema: dict[str, Any] = {"const": signature.name}
    if signature.name == DEFAULT_SIGNATURE:
        name_schema = {"enum": [DEFAULT_SIGNATURE, ""]}
    branch: dict[str, Any] = {
        "type": "object",
        "title": f"signature {signature.name}",
        "properties": {
            "signature_name": name_schema,
            "instances": {"type": "array", "minItems": 1, "items": row_item},
            "inputs": column,
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
    }
    if signature.name != DEFAULT_SIGNATURE:
        branch["required"] = ["signature_name"]
    return branch


def _named(tensors: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(tensors), "properties": dict(tensors), "additionalProperties": False}


def _tfs_example(signature: Signature) -> dict[str, Any]:
    specs = signature.inputs
    rows = {s.name: _example_nested(_example_shape(s)[1:], _example_value(s.dtype)) for s in specs}
    row = rows[specs[0].name] if len(specs) == 1 else rows
    body: dict[str, Any] = {"instances": [row]}
    if signature.name != DEFAULT_SIGNATURE:
        body = {"signature_name": signature.name, **body}
    return body


def _kserve_input(spec: TensorSpec) -> dict[str, Any]:
    dims = [{"type": "integer", "minimum": 0} if d is None else {"const": d} for d in spec.shape]
    return {
        "type": "object",
        "title": spec.name,
        "description": _spec_line(spec),
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"const": spec.name},
            "datatype": {"const": DATATYPES[spec.dtype]},
            "shape": {"type": "array", "prefixItems": dims, "items": False, "minItems": len(dims)},
            "data": {
                "type": "array",
                "items": {"anyOf": [_leaf(spec.dtype, False), {"type": "array"}]},
                "description": "row-major values, flat (or nested as the shape)",
            },
            "parameters": _ref("schemas", "KServeInputParameters"),
        },
    }


def _kserve_schema(signature: Signature) -> dict[str, Any]:
    inputs = [_kserve_input(s) for s in signature.inputs]
    item = inputs[0] if len(inputs) == 1 else {"oneOf": inputs}
    outputs = [s.name for s in signature.outputs]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": _ref("schemas", "KServeRequestParameters"),
            "inputs": {"type": "array", "minItems": 1, "maxItems": len(inputs), "items": item},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"enum": outputs},
                        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                    },
                },
            },
        },
    }


def _kserve_examples(signature: Signature, streaming: bool) -> dict[str, Any]:
    inputs = []
    for spec in signature.inputs:
        shape = _example_shape(spec)
        count = 1
        for dim in shape:
            count *= dim
        inputs.append(
            {
                "name": spec.name,
                "shape": shape,
                "datatype": DATATYPES[spec.dtype],
                "data": [_example_value(spec.dtype)] * count,
            }
        )
    examples: dict[str, Any] = {"predict": {"summary": "one prediction", "value": {"inputs": inputs}}}
    if streaming:
        chunk = {"parameters": {"sequence_id": 42, "sequence_start": True, "sequence_end": True}, "inputs": inputs}
        examples["sequence"] = {
            "summary": "one chunk of sequence 42 (starts and ends it: send sequence_end on the last chunk only)",
            "value": chunk,
        }
    return examples


_SAFE = re.compile(r"[^A-Za-z0-9_]+")


def _model_paths(models: Sequence[ModelEntry], p: Mapping[str, Any], taken: set[str]) -> dict[str, Any]:
    """One ``:predict`` and one ``infer`` per served model (the newest version) and per served version."""

    def unique(base: str) -> str:
        candidate, index = base, 2
        while candidate in taken:
            candidate, index = f"{base}_{index}", index + 1
        taken.add(candidate)
        return candidate

    paths: dict[str, Any] = {}
    for model in models:
        if not model.versions:
            continue
        encoded = quote(model.name, safe="")
        stem = _SAFE.sub("_", model.name).strip("_") or "model"
        tag = f"model {model.name}"
        targets: list[tuple[str, VersionEntry, str]] = [("", model.versions[0], "newest")]
        targets += [(f"/versions/{entry.version}", entry, str(entry.version)) for entry in model.versions]
        for suffix, entry, label in targets:
            signatures = [entry.signatures[n] for n in sorted(entry.signatures, key=lambda n: n != DEFAULT_SIGNATURE)]
            text = "\n".join(_signature_text(s) for s in signatures)
            which = f"version {entry.version}" + (" (the newest)" if label == "newest" else "")
            tfs_body = {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {"anyOf": [_tfs_branch(s) for s in signatures]},
                        "examples": {
                            s.name: {"summary": f"signature {s.name}", "value": _tfs_example(s)} for s in signatures
                        },
                    }
                },
            }
            paths[f"/v1/models/{encoded}{suffix}:predict"] = {
                "post": _operation(
                    unique(f"predict_{stem}_{'latest' if label == 'newest' else 'v' + label}"),
                    f"{model.name}: predict, {which}",
                    tag,
                    {"200": _ok("the outputs", "TfsPredictResponse"), **_errors(*_MODEL_ERRORS, *_BODY_ERRORS, 501)},
                    description=f"`{model.name}` {which}.\n\n{text}",
                    body=tfs_body,
                )
            }
            default = entry.signatures.get(DEFAULT_SIGNATURE) or signatures[0]
            streams = "streams (sequence parameters accepted)" if entry.streaming else "cannot stream"
            paths[f"/v2/models/{encoded}{suffix}/infer"] = {
                "post": _operation(
                    unique(f"infer_{stem}_{'latest' if label == 'newest' else 'v' + label}"),
                    f"{model.name}: infer, {which}",
                    tag,
                    _infer_responses(),
                    [p["header_length"], p["sequence_header"]],
                    f"`{model.name}` {which}, {streams}.\n\n{_signature_text(default)}\n\n{_INFER_DESCRIPTION}",
                    _infer_body(_kserve_schema(default), _kserve_examples(default, entry.streaming)),
                )
            }
    return paths


# ---------------------------------------------------------------------------------- document


def openapi_document(
    models: Sequence[ModelEntry] = (),
    *,
    server_version: str = "",
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the REST port, as a dict (``json.dumps`` it).

    `models`: the served models (``()``: the generic document, valid for any server, as a documentation
    site renders it); `server_version`: the ``info.version`` (default: the installed rnnkit's);
    `max_request_bytes`: the body limit the description quotes (``--max_request_bytes``).
    """
    if not server_version:
        from rnnkit_serving.core.package import package_version

        server_version = package_version()
    names = [m.name for m in models]
    p = _parameters()
    model = _model_name_parameter(names)
    paths: dict[str, Any] = {}
    paths.update(_discovery_paths())
    paths.update(_tfs_paths(model, p))
    paths.update(_kserve_paths(model, p))
    paths.update(_metrics_path())
    taken = {op["operationId"] for item in paths.values() for op in item.values()}
    paths.update(_model_paths(models, p, taken))
    served = (
        "\n".join(
            f"- `{m.name}`: "
            + (
                f"version{'s' if len(m.versions) > 1 else ''} {', '.join(str(v.version) for v in m.versions)}"
                if m.versions
                else "no version serving"
            )
            for m in models
        )
        if models
        else "No model is described here: `GET /openapi.json` on a running server fills in its models."
    )
    description = (
        "rnnkit's REST port: TF Serving's REST API v1 and KServe v2 (Open Inference Protocol), with Triton's "
        "sequence parameters for streamed RNN state and the binary tensor extension.\n\n"
        f"Request bodies are at most --max_request_bytes ({max_request_bytes} bytes). Errors are "
        '`{"error": "..."}` with TF Serving\'s HTTP status for each code.\n\n'
        f"Served models:\n\n{served}"
    )
    tags = [
        {"name": TAG_TFS, "description": "TensorFlow Serving's REST API (paths route case-insensitively)"},
        {"name": TAG_KSERVE, "description": "KServe v2 / Open Inference Protocol REST"},
        {"name": TAG_HEALTH, "description": "liveness and readiness"},
        {"name": TAG_MONITORING, "description": "Prometheus metrics"},
        {"name": TAG_DISCOVERY, "description": "this description, its interactive page and the landing page"},
    ]
    tags += [{"name": f"model {m.name}", "description": f"`{m.name}`'s own operations"} for m in models if m.versions]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "rnnkit model server",
            "version": server_version,
            "description": description,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": tags,
        "paths": paths,
        "components": {"schemas": _schemas(), "responses": _error_components()},
    }
