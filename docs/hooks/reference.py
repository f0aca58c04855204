"""mkdocs hook: the reference pages generated at build time from the code.

A page asks for a generated part with a marker line, replaced before Markdown is rendered:

- ``<!-- generated: cli -->``: every flag of ``rnnkit``'s subcommands (``rnnkit_cli.build_parser``), of
  ``python -m rnnkit_serving`` (``rnnkit_serving.server.cli.build_parser``) and of ``rnnkit export``
  (``rnnkit_export.cli.build_parser``), read from the argparse parsers themselves;
- ``<!-- generated: rest-api -->``: the REST API from the server's OpenAPI document
  (``rnnkit_serving.fronts.rest.openapi.openapi_document()``, a dict);
- ``<!-- generated: grpc-api -->``: the gRPC services the server implements, from the generated protos;
- ``<!-- generated: serving-api -->``: a mkdocstrings block for each name ``rnnkit_serving`` exports.

The renderers are plain functions of their input (a parser, a dict, a descriptor) so ``tests/test_docs.py``
calls them without building the site. Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.reference")

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


def import_paths() -> None:
    """Import this checkout's code, as installed: rnnkit and rnnkit_cli from the root, rnnkit_serving and
    rnnkit_export through import-named links in .typecheck/ (`make docs` and `make typecheck` make them; made here
    too when missing, so a plain `mkdocs build` works and mkdocstrings finds them at the same place)."""
    links = ROOT / ".typecheck"
    for name, folder in (("rnnkit_export", "export"), ("rnnkit_serving", "serving")):
        link = links / name
        if not link.exists():
            links.mkdir(exist_ok=True)
            if link.is_symlink():  # a dangling link
                link.unlink()
            link.symlink_to(Path("..") / folder)
    for path in (str(ROOT), str(links)):  # this checkout first, before any other installed copy
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up lines, when rnnkit imports it


import_paths()


# ------------------------------------------------------------------------------------------ text helpers
def cell(text: str) -> str:
    """`text` made safe for one Markdown table cell (one line; pipes and angle brackets escaped)."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def code(text: str) -> str:
    """`text` as a code span inside a table cell."""
    text = " ".join(str(text).split())
    ticks = "``" if "`" in text else "`"
    pad = " " if ticks == "``" else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ------------------------------------------------------------------------------------------ CLI flags
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off"  # a switch: not given unless asked for
    if action.default is None or action.default == argparse.SUPPRESS:
        return "–"
    return code(action.default)


def _usage(action: argparse.Action) -> str:
    names = ", ".join(action.option_strings) if action.option_strings else (action.metavar or action.dest)
    if action.nargs == 0:
        return str(names)
    if action.choices:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    elif action.option_strings:
        value = str(action.metavar or action.dest.upper())
    else:
        return str(names)
    return f"{names} {value}"


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag (and positional) of `parser`, without -h/--help; what the reference must list."""
    names = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names.extend(action.option_strings or [str(action.metavar or action.dest)])
    return names


def render_parser(parser: argparse.ArgumentParser, heading: str = "##") -> str:
    """A Markdown section per argument group of `parser`: flag, default, help."""
    out = []
    if parser.description:
        out += [cell(parser.description), ""]
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS
        ]
        if not actions:
            continue
        title = {"positional arguments": "Arguments", "options": "Options", "optional arguments": "Options"}.get(
            group.title or "", group.title or "Options"
        )
        out += [f"{heading}# {title}", "", "| flag | default | meaning |", "|---|---|---|"]
        out += [f"| {code(_usage(a))} | {_default(a)} | {cell(a.help or '')} |" for a in actions]
        out.append("")
    return "\n".join(out)


def cli_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command, parser) for every command the reference documents."""
    import_paths()
    rnnkit_cli = importlib.import_module("rnnkit_cli")
    serving_cli = importlib.import_module("rnnkit_serving.server.cli")
    export_cli = importlib.import_module("rnnkit_export.cli")
    commands = _subparsers(rnnkit_cli.build_parser())
    parsers = [(f"rnnkit {name}", parser) for name, parser in commands.items() if name not in ("serve", "export")]
    parsers.append(("rnnkit export", export_cli.build_parser()))
    parsers.append(("rnnkit serve (python -m rnnkit_serving)", serving_cli.build_parser()))
    return parsers


def render_cli(parsers: Iterable[tuple[str, argparse.ArgumentParser]]) -> str:
    out = []
    for command, parser in parsers:
        out += [f"## `{command}` {{#{slug(command.split(' (')[0])}}}", "", render_parser(parser, "##")]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ REST (OpenAPI)
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def schema_type(schema: Mapping[str, Any] | bool | None) -> str:
    """A short Markdown type expression for `schema` (component references become links)."""
    if schema is None or schema is True or schema == {}:
        return "any"
    if schema is False:
        return "nothing"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        if schema["$ref"].startswith("#/components/schemas/"):  # rendered under "Schemas" on the same page
            return f"[{name}](#schema-{slug(name)})"
        return code(name)
    for key, word in (("oneOf", " or "), ("anyOf", " or "), ("allOf", " and ")):
        if key in schema:
            return word.join(schema_type(s) for s in schema[key])
    if "const" in schema:
        return code(_json(schema["const"]))
    if "enum" in schema:
        return " \\| ".join(code(_json(v)) for v in schema["enum"])
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    parts = []
    for k in kinds:
        if k == "array":
            parts.append(f"array of {schema_type(schema['items'])}" if "items" in schema else "array")
        elif k == "object" and "additionalProperties" in schema and not schema.get("properties"):
            parts.append(f"object of {schema_type(schema['additionalProperties'])}")
        else:
            parts.append(str(k))
    if not parts:
        parts.append("object" if "properties" in schema else "any")
    text = " or ".join(parts)
    if "format" in schema:
        text += f" ({schema['format']})"
    return text


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _constraints(schema: Mapping[str, Any]) -> str:
    words = []
    for key in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "default",
    ):
        if key in schema:
            words.append(f"{key} {code(_json(schema[key]))}")
    return "; ".join(words)


def render_properties(schema: Mapping[str, Any]) -> list[str]:
    """A property table for an object schema (empty when it has no properties)."""
    properties = schema.get("properties") or {}
    if not properties:
        return []
    required = set(schema.get("required", ()))
    out = ["| property | type | required | description |", "|---|---|---|---|"]
    for name, prop in properties.items():
        prop = prop if isinstance(prop, Mapping) else {}
        note = " ".join(x for x in (cell(prop.get("description", "")), _constraints(prop)) if x)
        out.append(f"| {code(name)} | {schema_type(prop)} | {'yes' if name in required else ''} | {note} |")
    return out


def _body(content: Mapping[str, Any]) -> list[str]:
    out = []
    for media, entry in content.items():
        schema = (entry or {}).get("schema")
        out.append(f"- `{media}`: {schema_type(schema) if schema is not None else 'any'}")
        if isinstance(schema, Mapping) and "$ref" not in schema and schema.get("properties"):
            out += ["", *[f"    {line}" for line in render_properties(schema)], ""]
    return out


def render_openapi(document: Mapping[str, Any]) -> str:
    """The REST reference: each path and method with its parameters, request body and responses, then the
    component schemas. `document` is an OpenAPI 3.x document as a dict."""
    info = document.get("info", {})
    out = [
        f"OpenAPI {document.get('openapi', '?')} document *{cell(info.get('title', ''))}*, "
        f"version {cell(info.get('version', ''))}.",
        "",
    ]
    if info.get("description"):
        out += [info["description"].strip(), ""]
    for path, item in document.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [f"**{cell(op['summary'])}**", ""]
            if op.get("description"):
                out += [op["description"].strip(), ""]
            parameters = [*shared, *op.get("parameters", [])]
            if parameters:
                out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
                for p in parameters:
                    p = _resolve(document, p)
                    schema = p.get("schema")
                    limits = _constraints(schema) if isinstance(schema, Mapping) else ""
                    note = " ".join(x for x in (cell(p.get("description", "")), limits) if x)
                    out.append(
                        f"| {code(p.get('name', ''))} | {p.get('in', '')} | {schema_type(schema)} | "
                        f"{'yes' if p.get('required') else ''} | {note} |"
                    )
                out.append("")
            if "requestBody" in op:
                body = _resolve(document, op["requestBody"])
                out += ["Request body" + (" (required)" if body.get("required") else "") + ":", ""]
                out += [*_body(body.get("content", {})), ""]
            if op.get("responses"):
                out += ["Responses:", ""]
                for status, response in op["responses"].items():
                    response = _resolve(document, response)
                    out.append(f"- **{status}** {cell(response.get('description', ''))}")
                    out += [f"    {line}" for line in _body(response.get("content", {}))]
                out.append("")
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            out += [f"### {name} {{#schema-{slug(name)}}}", ""]
            if isinstance(schema, Mapping) and schema.get("description"):
                out += [schema["description"].strip(), ""]
            table = render_properties(schema) if isinstance(schema, Mapping) else []
            out += [*(table or [f"Type: {schema_type(schema)}"]), ""]
    return "\n".join(out)


def _resolve(document: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local `$ref` (`#/components/...`) of a parameter, body or response."""
    seen = 0
    while isinstance(node, Mapping) and "$ref" in node and seen < 16:
        target: Any = document
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node, seen = target, seen + 1
    return node


def openapi_document() -> Mapping[str, Any] | None:
    """The server's OpenAPI document, or None where this checkout has no OpenAPI module yet."""
    import_paths()
    try:
        module = importlib.import_module("rnnkit_serving.fronts.rest.openapi")
    except ModuleNotFoundError as error:
        if error.name not in ("rnnkit_serving.fronts.rest.openapi", "rnnkit_serving.fronts.rest", "rnnkit_serving"):
            raise
        return None
    document: Mapping[str, Any] = module.openapi_document()
    return document


def render_rest_api() -> str:
    document = openapi_document()
    if document is None:
        return (
            "!!! note\n    This build has no `rnnkit_serving.fronts.rest.openapi` module, so the generated REST "
            "reference is empty; the routes are described in [Serving](../guides/serving.md#endpoints) and "
            "[KServe v2](../guides/kserve-v2.md)."
        )
    return render_openapi(document)


# ------------------------------------------------------------------------------------------ gRPC
def grpc_services() -> list[tuple[Any, type]]:
    """(service descriptor, rnnkit's servicer class) for every gRPC service the server registers."""
    import_paths()
    from grpc_health.v1 import health, health_pb2

    kserve = importlib.import_module("rnnkit_serving.fronts.grpc.kserve")
    tfs = importlib.import_module("rnnkit_serving.fronts.grpc.tfs")
    from rnnkit_serving.codecs.kserve.grpc import protos as kserve_protos
    from rnnkit_serving.codecs.tfs.protos import import_proto_modules

    prediction, model = import_proto_modules(
        "tensorflow_serving.apis.prediction_service_pb2", "tensorflow_serving.apis.model_service_pb2"
    )
    return [
        (prediction.DESCRIPTOR.services_by_name["PredictionService"], tfs.PredictionServicer),
        (model.DESCRIPTOR.services_by_name["ModelService"], tfs.ModelServicer),
        (kserve_protos().pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], kserve.InferenceServicer),
        (health_pb2.DESCRIPTOR.services_by_name["Health"], health.HealthServicer),
    ]


def implemented(servicer: type, method: str) -> bool:
    """Whether `servicer` (or a class of ours or grpcio's above the generated base) defines `method`."""
    for klass in servicer.__mro__:
        if method in vars(klass):
            return not klass.__module__.endswith("_pb2_grpc")
    return False


def _field_type(field: Any) -> str:
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            return f"map<{_field_type(key)}, {_field_type(value)}>"
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    names = {v: k.removeprefix("TYPE_").lower() for k, v in vars(type(field)).items() if k.startswith("TYPE_")}
    return names.get(field.type, str(field.type))


def _repeated(field: Any) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6 (`label` is deprecated there)
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def render_message(message: Any) -> list[str]:
    out = [f"`{message.full_name}`", "", "| field | number | type | notes |", "|---|---|---|---|"]
    for field in message.fields:
        kind = _field_type(field)
        repeated = _repeated(field) and not kind.startswith("map<")
        notes = []
        if field.containing_oneof is not None:
            notes.append(f"oneof `{field.containing_oneof.name}`")
        out.append(
            f"| `{field.name}` | {field.number} | {code(('repeated ' if repeated else '') + kind)} | "
            f"{', '.join(notes)} |"
        )
    if not message.fields:
        out.append("| (no fields) | | | |")
    return out


def render_grpc(services: Iterable[tuple[Any, Callable[..., Any] | type]]) -> str:
    out = []
    for service, servicer in services:
        out += [f"## `{service.full_name}`", "", f"Proto file `{service.file.name}`.", ""]
        out += ["| method | request → response | streaming | served |", "|---|---|---|---|"]
        for method in service.methods:
            streaming = "/".join(
                s for s, on in (("client", method.client_streaming), ("server", method.server_streaming)) if on
            )
            served = "yes" if implemented(servicer, method.name) else "no (`UNIMPLEMENTED`)"  # type: ignore[arg-type]
            out.append(
                f"| `{method.name}` | `{method.input_type.name}` → `{method.output_type.name}` | "
                f"{streaming or '–'} | {served} |"
            )
        out.append("")
        for method in service.methods:
            if not implemented(servicer, method.name):  # type: ignore[arg-type]
                continue
            out += [f"### `{service.name}/{method.name}`", ""]
            out += ["Request ", *render_message(method.input_type), ""]
            out += ["Response ", *render_message(method.output_type), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ limits
def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,}".replace(",", " ")


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _ms(value: int) -> str:
    return f"{value / 1000:g} s"


# (what is bounded, flags, default as text from the parser's defaults and the constants, what a client gets beyond it)
LimitRow = tuple[str, tuple[str, ...], Callable[[Callable[[str], Any], Mapping[str, Any]], str], str]
LIMITS: list[LimitRow] = [
    (
        "request body / gRPC message",
        ("--max_request_bytes",),
        lambda d, c: _size(d("max_request_bytes")),
        "REST 413; gRPC `RESOURCE_EXHAUSTED`",
    ),
    (
        "elements of all inputs of one request",
        ("--max_request_elements",),
        lambda d, c: (
            f"{d('max_request_elements'):,} ({_size(d('max_request_elements')).replace(' MiB', ' Mi')}; ≥ what a "
            f"{_size(d('max_request_bytes'))} JSON body can carry)".replace(",", " ")
        ),
        "400 / `INVALID_ARGUMENT`, from the *declared* shape, before any array exists",
    ),
    ("axes of one input", (), lambda d, c: str(c["MAX_RANK"]), "400 / `INVALID_ARGUMENT`"),
    (
        "batch size",
        ("--max_batch_size",),
        lambda d, c: str(d("max_batch_size")),
        "400 / `INVALID_ARGUMENT` naming the input and the limit",
    ),
    (
        "time steps",
        ("--max_sequence_length",),
        lambda d, c: str(d("max_sequence_length")),
        "400 / `INVALID_ARGUMENT` naming the input and the limit",
    ),
    (
        "JSON nesting depth (TF Serving REST and KServe bodies)",
        (),
        lambda d, c: f"{c['MAX_JSON_DEPTH']} (Triton's)",
        "400 `nesting depth exceeds 100`, measured on the bytes before parsing, linear in the body",
    ),
    ("REST request time", ("--rest_api_timeout_in_ms",), lambda d, c: _ms(d("rest_api_timeout_in_ms")), "504"),
    (
        "gRPC `Predict` / `ModelInfer` time",
        ("--grpc_timeout_in_ms",),
        lambda d, c: f"{_ms(d('grpc_timeout_in_ms'))}, or the client's deadline if sooner",
        "`DEADLINE_EXCEEDED`",
    ),
    (
        "concurrent gRPC calls",
        ("--grpc_max_concurrent_rpcs",),
        lambda d, c: f"{d('grpc_max_concurrent_rpcs')} (× {_size(d('max_request_bytes'))}: ≤ ~1 GiB of requests held)",
        "`RESOURCE_EXHAUSTED` (`Concurrent RPC limit exceeded!`)",
    ),
    (
        "request threads",
        ("--rest_workers", "--grpc_workers"),
        lambda d, c: f"{d('rest_workers')} REST, {d('grpc_workers')} gRPC",
        "requests wait for a thread, within their timeout; each open `ModelStreamInfer` stream holds a gRPC thread. "
        "gRPC calls also have a thread each while they wait for their message and their job (as many as "
        "`--grpc_max_concurrent_rpcs`); `--grpc_workers` bounds the jobs that run at once",
    ),
    (
        "server processes",
        ("--server_workers",),
        lambda d, c: f"{d('server_workers')}",
        "`auto` = the usable CPUs; each worker holds its own models and applies every per-process limit here on "
        "its own (connections, threads, sessions)",
    ),
    (
        "live streaming sessions",
        ("--max_sessions", "--session_idle_seconds"),
        lambda d, c: f"{d('max_sessions')}, idle {_seconds(d('session_idle_seconds'))}",
        "429 / `RESOURCE_EXHAUSTED` for a new `sequence_start`; an idle session is dropped (its next chunk: "
        "400 / `FAILED_PRECONDITION` unknown sequence)",
    ),
    (
        "string `sequence_id`",
        ("--max_sequence_id_length",),
        lambda d, c: f"{d('max_sequence_id_length')} UTF-8 bytes; integer ids are uint64 (1 … 2⁶⁴−1)",
        "400 / `INVALID_ARGUMENT` naming the length and the flag",
    ),
    (
        "batch queue",
        (),
        lambda d, c: "`max_enqueued_batches × max_batch_size` rows (batching parameters file)",
        "503 / `UNAVAILABLE`",
    ),
    (
        "request line + headers (REST; trailers of a chunked body count with them), metadata block (gRPC)",
        ("--max_header_bytes",),
        lambda d, c: _size(d("max_header_bytes")),
        "REST 431 `the request line and headers exceed 32768 bytes (--max_header_bytes)`, connection closed (closed "
        "without an answer when an earlier pipelined request's answer is still owed); gRPC: grpcio refuses the call",
    ),
    (
        "time to send a request's headers (from connecting or the last answer); gRPC handshake",
        ("--header_timeout_seconds",),
        lambda d, c: _seconds(d("header_timeout_seconds")),
        "connection closed (idle connections and slowloris alike; no answer is owed)",
    ),
    (
        "pause while a declared body arrives (a Content-Length longer than the body)",
        ("--body_timeout_seconds",),
        lambda d, c: _seconds(d("body_timeout_seconds")),
        "408 naming the flag, connection closed. After an early answer (a 413) the rest of the body is read and "
        "dropped for one pause at most; a rest still arriving then closes the connection",
    ),
    (
        "the whole body: one pause's grace plus its bytes over this rate",
        ("--min_body_rate",),
        lambda d, c: f"{d('min_body_rate'):g} bytes a second",
        "408 naming the rate, the bytes and seconds, and the flag; connection closed",
    ),
    (
        "open connections per port",
        ("--max_connections",),
        lambda d, c: (
            f"{d('max_connections')} REST (+{c['HEALTH_RESERVE_CONNECTIONS']} that serve only health and "
            f"readiness), {d('max_connections')} per gRPC port"
        ),
        "REST: a new connection evicts the oldest one that owes nothing (idle, slowloris), else the request whose "
        "body has arrived the slowest, once it has had one `--body_timeout_seconds` of grace (408 saying why); when "
        "every slot has a request in flight, 503 on the reserve, then closed at once; gRPC: new connections refused "
        "(`grpc.max_allowed_incoming_connections`)",
    ),
    (
        "idle gRPC connection (no call)",
        ("--idle_connection_seconds",),
        lambda d, c: _seconds(d("idle_connection_seconds")),
        "closed by the server (`grpc.max_connection_idle_ms`); clients reconnect. REST keep-alive after an answer: "
        "5 s (uvicorn's)",
    ),
    (
        "open KServe `ModelStreamInfer` streams per port",
        ("--grpc_max_streams",),
        lambda d, c: f"{d('grpc_max_streams')}, and always fewer than `--grpc_workers`",
        "`RESOURCE_EXHAUSTED` naming the flag; unary calls and health always find a thread",
    ),
    (
        "a stream without a request",
        ("--grpc_stream_idle_seconds",),
        lambda d, c: _seconds(d("grpc_stream_idle_seconds")),
        "the stream is cancelled (`CANCELLED`)",
    ),
    (
        "a unary gRPC call's request message, from the call's arrival (grpcio gives a call a thread when its "
        "headers arrive; a 16 MiB message needs ~280 KB/s at the default)",
        ("--grpc_message_timeout_seconds",),
        lambda d, c: _seconds(d("grpc_message_timeout_seconds")),
        "the call is cancelled (`CANCELLED`)",
    ),
    (
        "a version (path, `model_version`, directory name)",
        (),
        lambda d, c: "ASCII digits, ≤ 2⁶³−1",
        "400 `model version must be an integer; received '²'`; a directory with another name is ignored",
    ),
    (
        "drain on SIGTERM / SIGINT / SIGHUP",
        ("--drain_seconds",),
        lambda d, c: _seconds(d("drain_seconds")),
        "both fronts stop accepting at once (REST: connection refused; gRPC `UNAVAILABLE`), requests in flight finish, "
        "exit 0",
    ),
]


def limit_constants() -> dict[str, Any]:
    import_paths()
    from rnnkit_serving.codecs.json_depth import MAX_JSON_DEPTH
    from rnnkit_serving.core import defaults
    from rnnkit_serving.core.identifiers import MAX_VERSION
    from rnnkit_serving.core.signature import MAX_RANK

    assert MAX_VERSION == (1 << 63) - 1, "the limits table says 2⁶³−1"
    assert MAX_JSON_DEPTH == 100, "the limits table quotes 'nesting depth exceeds 100'"
    return {
        "MAX_RANK": MAX_RANK,
        "MAX_JSON_DEPTH": MAX_JSON_DEPTH,
        "HEALTH_RESERVE_CONNECTIONS": defaults.HEALTH_RESERVE_CONNECTIONS,
    }


def render_limits(parser: argparse.ArgumentParser, constants: Mapping[str, Any]) -> str:
    """The limits table: defaults read from `rnnkit serve`'s parser (which reads serving/core/defaults.py)."""
    flags = {o: a for a in parser._actions for o in a.option_strings}

    def default(dest: str) -> Any:
        return parser.get_default(dest)

    out = ["| limit | default | flag | beyond it |", "|---|---|---|---|"]
    for what, names, text, beyond in LIMITS:
        missing = [n for n in names if n not in flags]
        if missing:
            raise ValueError(f"the limits table names {missing}, which `rnnkit serve` does not have")
        shown = ", ".join(f"`{n}`" for n in names) or "–"
        out.append(f"| {what} | {text(default, constants)} | {shown} | {beyond} |")
    return "\n".join(out)


def render_limits_page() -> str:
    import_paths()
    serving_cli = importlib.import_module("rnnkit_serving.server.cli")
    return render_limits(serving_cli.build_parser(), limit_constants())


# ------------------------------------------------------------------------------------------ Python API
def serving_exports() -> dict[str, str]:
    """Public name -> defining module, as ``rnnkit_serving`` loads them on first use."""
    import_paths()
    package = importlib.import_module("rnnkit_serving")
    return dict(sorted(package._EXPORTS.items()))


def render_serving_api(exports: Mapping[str, str]) -> str:
    out = []
    for name, module in exports.items():
        out += [
            f"::: {module}.{name}",
            "    options:",
            "      heading_level: 3",
            "      show_root_full_path: false",
            "",
        ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ mkdocs events
GENERATORS: dict[str, Callable[[], str]] = {
    "cli": lambda: render_cli(cli_parsers()),
    "rest-api": render_rest_api,
    "grpc-api": lambda: render_grpc(grpc_services()),
    "serving-api": lambda: render_serving_api(serving_exports()),
    "limits": render_limits_page,
}
_cache: dict[str, str] = {}


def on_config(config: Any) -> Any:
    import_paths()
    _cache.clear()
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated part {name!r}; known: {sorted(GENERATORS)}")
        if name not in _cache:
            _cache[name] = GENERATORS[name]()
        return _cache[name]

    return unescape_code_pipes(MARKER.sub(replace, markdown))


CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def unescape_code_pipes(markdown: str) -> str:
    """`a\\|b` inside a code span of a table row -> `a|b`: GitHub needs the backslash there, Python-Markdown's
    tables keep a pipe inside backticks in its cell and would print the backslash."""
    out, fence = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        elif not fence and line.lstrip().startswith("|") and "\\|" in line:
            line = CODE_SPAN.sub(lambda m: m.group(1) + m.group(2).replace("\\|", "|") + m.group(1), line)
        out.append(line)
    return "\n".join(out)
