"""The documentation site's generated references and the README's shape, without building the site.

`make test` builds the site (`make docs`: `mkdocs build --strict`); these tests call the build hook's renderers
(docs/hooks/reference.py) directly: every flag of every parser is on the CLI page, every served gRPC method and
every REST path of an OpenAPI document is rendered, the limits table shows the defaults of serving/core/defaults.py,
and the README stays short and points into the site.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _hook() -> ModuleType:
    """The build hook's module. Loading it puts this checkout first on sys.path (what a site build wants); the
    test process keeps its own sys.path (rnnkit is installed here), so other tests import as before."""
    spec = importlib.util.spec_from_file_location("rnnkit_docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    module.import_paths = lambda: None  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    return _hook()


def _markers(page: str) -> list[str]:
    return re.findall(r"^<!-- generated: ([a-z-]+) -->$", (ROOT / "docs" / page).read_text(), re.MULTILINE)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_reference_lists_every_flag_of_every_parser(hook: ModuleType) -> None:
    assert _markers("reference/cli.md") == ["cli"]
    parsers = hook.cli_parsers()
    commands = [name for name, _ in parsers]
    for command in ("rnnkit demo", "rnnkit train", "rnnkit diagnose", "rnnkit bench", "rnnkit export"):
        assert command in commands
    assert any(c.startswith("rnnkit serve") for c in commands)
    page = hook.render_cli(parsers)
    for command, parser in parsers:
        section = page.split(f"## `{command}`", 1)[1].split("\n## `", 1)[0]
        names = hook.option_names(parser)
        assert names, command
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        for name in names:
            assert any(re.search(rf"`{re.escape(name)}[ `,]", row) for row in rows), f"{command}: {name} not listed"


def test_cli_reference_covers_the_three_parsers_the_code_builds(hook: ModuleType) -> None:
    from rnnkit_export.cli import build_parser as export_parser
    from rnnkit_serving.server.cli import build_parser as serve_parser

    page = hook.render_cli(hook.cli_parsers())
    for parser in (export_parser(), serve_parser()):
        for name in hook.option_names(parser):
            assert f"`{name} " in page or f"`{name}`" in page, name
    # a serve flag with its default from serving/core/defaults.py, and a choice list
    from rnnkit_serving.core import defaults

    assert re.search(rf"`--max_batch_size MAX_BATCH_SIZE` \| `{defaults.MAX_BATCH_SIZE}` \|", page)
    assert "`--streaming {auto,off,required}` | `auto` |" in page


def test_cli_flag_rows_keep_table_cells_intact(hook: ModuleType) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="x", description="a | b")
    parser.add_argument("--mode", choices=("a", "b"), default="a", help="one | other <tag>")
    parser.add_argument("--on", action="store_true", help="switch")
    parser.add_argument("path", help="a file")
    text = hook.render_parser(parser)
    assert "| `--mode {a,b}` | `a` | one \\| other &lt;tag&gt; |" in text
    assert "| `--on` | off | switch |" in text
    assert "| `path` | required | a file |" in text
    assert hook.option_names(parser) == ["--mode", "--on", "path"]


def test_pipes_in_code_spans_of_table_rows_lose_their_backslash_only_there(hook: ModuleType) -> None:
    page = "\n".join(
        [
            "| `a\\|b` | x \\| y |",  # GitHub's escaped pipe inside a code span of a table row
            "`c\\|d` outside a table",
            "```",
            "| `e\\|f` | in a fence |",
            "```",
        ]
    )
    assert hook.unescape_code_pipes(page).splitlines() == [
        "| `a|b` | x \\| y |",
        "`c\\|d` outside a table",
        "```",
        "| `e\\|f` | in a fence |",
        "```",
    ]


# ------------------------------------------------------------------------------------------ REST
SAMPLE_OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "rnnkit", "version": "0.1.0"},
    "paths": {
        "/v1/models/{name}:predict": {
            "parameters": [{"$ref": "#/components/parameters/Name"}],
            "post": {
                "summary": "TF Serving predict",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
                },
                "responses": {
                    "200": {
                        "description": "the predictions",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}},
                    },
                    "400": {"$ref": "#/components/responses/Error"},
                },
            },
        },
        "/v2/health/live": {
            "get": {
                "parameters": [{"name": "verbose", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {
                    "200": {
                        "description": "live",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"live": {"type": "boolean", "description": "always true"}},
                                    "required": ["live"],
                                }
                            }
                        },
                    }
                },
            }
        },
    },
    "components": {
        "parameters": {
            "Name": {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[a-z]+$"},
                "description": "model",
            }
        },
        "responses": {
            "Error": {
                "description": "an error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        },
        "schemas": {
            "PredictRequest": {
                "type": "object",
                "properties": {
                    "instances": {"type": "array", "items": {}},
                    "signature_name": {"type": "string", "default": "serving_default"},
                    "inputs": {"oneOf": [{"type": "array"}, {"type": "object", "additionalProperties": {}}]},
                },
            },
            "PredictResponse": {"type": "object", "properties": {"predictions": {"type": ["array", "object"]}}},
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
        },
    },
}


def test_rest_reference_renders_paths_parameters_bodies_and_schemas(hook: ModuleType) -> None:
    text = hook.render_openapi(SAMPLE_OPENAPI)
    assert "## `POST /v1/models/{name}:predict`" in text
    assert "## `GET /v2/health/live`" in text
    assert (
        '| `name` | path | string | yes | model pattern `"^[a-z]+$"` |' in text
    )  # a path-level $ref parameter, resolved
    assert "| `verbose` | query | boolean |  |  |" in text
    assert "Request body (required):" in text
    assert "- `application/json`: [PredictRequest](#schema-predictrequest)" in text
    assert "- **200** the predictions" in text
    assert "- **400** an error" in text and "[Error](#schema-error)" in text  # a $ref response, resolved
    assert "| `live` | boolean | yes | always true |" in text  # an inline response schema's properties
    assert "### PredictRequest {#schema-predictrequest}" in text
    assert "| `instances` | array of any |  |  |" in text
    assert '| `signature_name` | string |  | default `"serving_default"` |' in text
    assert "| `inputs` | array or object of any |  |  |" in text
    assert "| `predictions` | array or object |  |  |" in text


def test_rest_reference_covers_the_servers_openapi_document_when_present(hook: ModuleType) -> None:
    assert _markers("reference/rest-api.md") == ["rest-api"]
    document = hook.openapi_document()
    if document is None:
        pytest.skip("rnnkit_serving.fronts.rest.openapi is not in this checkout yet")
    text = hook.render_openapi(document)
    for path, item in document["paths"].items():
        for method in hook.METHODS:
            if method in item:
                assert f"## `{method.upper()} {path}`" in text
    for name in document.get("components", {}).get("schemas", {}):
        assert f"### {name} {{#schema-" in text


# ------------------------------------------------------------------------------------------ gRPC
def test_grpc_reference_lists_every_method_and_marks_what_is_served(hook: ModuleType) -> None:
    assert _markers("reference/grpc-api.md") == ["grpc-api"]
    services = hook.grpc_services()
    text = hook.render_grpc(services)
    served = {
        "tensorflow.serving.PredictionService": {"Predict", "GetModelMetadata"},
        "tensorflow.serving.ModelService": {"GetModelStatus"},
        "inference.GRPCInferenceService": {
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "ModelStreamInfer",
        },
        "grpc.health.v1.Health": {"Check", "Watch"},
    }
    assert {s.full_name for s, _ in services} == set(served)
    for service, servicer in services:
        section = text.split(f"## `{service.full_name}`", 1)[1].split("\n## `", 1)[0]
        for method in service.methods:
            row = next(line for line in section.splitlines() if line.startswith(f"| `{method.name}` |"))
            expected = method.name in served[service.full_name]
            assert hook.implemented(servicer, method.name) is expected, (service.full_name, method.name)
            assert row.endswith("| yes |") is expected, row
    assert "| `ModelStreamInfer` | `ModelInferRequest` → `ModelStreamInferResponse` | client/server | yes |" in text
    assert "| `Classify` | `ClassificationRequest` → `ClassificationResponse` | – | no (`UNIMPLEMENTED`) |" in text
    assert "| `raw_input_contents` | 7 | `repeated bytes` |  |" in text


# ------------------------------------------------------------------------------------------ limits, API
def test_limits_table_lists_every_limit_flag_with_the_servers_default(hook: ModuleType) -> None:
    from rnnkit_serving.core import defaults
    from rnnkit_serving.server.cli import build_parser

    assert _markers("reference/limits.md") == ["limits"]
    parser = build_parser()
    table = hook.render_limits(parser, hook.limit_constants())
    limit_flags = [
        o
        for a in parser._actions
        for o in a.option_strings
        if re.match(r"--(max_|grpc_max_)|--.*(_timeout_in_ms|_seconds)$|--.*_workers$", o)
        and o != "--file_system_poll_wait_seconds"
    ]
    assert len(limit_flags) >= 15
    for flag in limit_flags:
        assert f"`{flag}`" in table, flag
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert f"| {defaults.MAX_BATCH_SIZE} |" in rows["batch size"]
    assert f"| {defaults.MAX_SEQUENCE_LENGTH} |" in rows["time steps"]
    assert "| 16 MiB |" in rows["request body / gRPC message"] and defaults.MAX_REQUEST_BYTES == 16 << 20
    assert "8 388 608 (8 Mi;" in rows["elements of all inputs of one request"]
    assert f"| {defaults.MAX_SESSIONS}, idle {defaults.SESSION_IDLE_SECONDS:g} s |" in rows["live streaming sessions"]
    assert (
        f"{defaults.MAX_CONNECTIONS} REST (+{defaults.HEALTH_RESERVE_CONNECTIONS} that"
        in rows["open connections per port"]
    )


def test_limits_table_refuses_a_flag_the_server_does_not_have(hook: ModuleType) -> None:
    import argparse

    with pytest.raises(ValueError, match=r"names \['--max_request_bytes'\], which `rnnkit serve` does not have"):
        hook.render_limits(argparse.ArgumentParser(), hook.limit_constants())


def test_serving_api_page_documents_every_exported_name(hook: ModuleType) -> None:
    import rnnkit_serving

    assert _markers("reference/python-api.md") == ["serving-api"]
    text = hook.render_serving_api(hook.serving_exports())
    for name in rnnkit_serving.__all__:
        assert re.search(rf"^::: rnnkit_serving\.[a-z_.]+\.{name}$", text, re.MULTILINE), name


# ------------------------------------------------------------------------------------------ README, pages
def test_readme_is_short_keeps_the_two_commands_and_links_into_the_site() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) < 250, len(lines)
    # CI (.ci/run) runs `make test`, the command the README gives
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert any(line.startswith("make demo    # ") for line in lines)
    assert any(line.startswith("make test    # ") for line in lines)
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(set(links)) >= 10
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
    nav = (ROOT / "mkdocs.yml").read_text()
    for link in set(links):
        assert link.removeprefix("docs/") in nav, f"{link} is not in mkdocs.yml's nav"
    assert "docs/getting-started.md" in links and "docs/reference/cli.md" in links


def test_every_figure_is_on_a_page() -> None:
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))
    figures = sorted((ROOT / "docs" / "figures").glob("*.png"))
    assert figures
    for figure in figures:
        assert f"figures/{figure.name})" in pages, f"{figure.name} is linked from no page"
