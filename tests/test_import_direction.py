"""The dependency rule of ARCHITECTURE.md, on the source text and in a live process."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    # package: top-level modules it must never import (anywhere in its files)
    "rnnkit": {"export", "serving", "tf2onnx", "onnx", "onnxruntime"},
    "serving": {"rnnkit", "export", "keras"},
}
# serving may use tensorflow only lazily (inside functions), never at module level.
MODULE_LEVEL_FORBIDDEN = {"serving": {"tensorflow"}}


def imports(path: pathlib.Path):
    """Yield (top-level module name, is_module_level) for each import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], id(node) in module_level
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], id(node) in module_level


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_source_imports_follow_the_rule(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found for {package}"
    bad = []
    for path in files:
        for name, at_top in imports(path):
            if name in FORBIDDEN[package] or (at_top and name in MODULE_LEVEL_FORBIDDEN.get(package, set())):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def loaded_after(statement: str) -> set:
    code = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_serving_loads_no_keras_tensorflow_or_rnnkit():
    loaded = loaded_after("import serving")
    assert not loaded & {"keras", "tensorflow", "rnnkit", "export"}


def test_importing_rnnkit_layers_loads_no_onnx_or_serving():
    loaded = loaded_after("import rnnkit.layers")
    assert "keras" in loaded  # the check itself works
    assert not loaded & {"onnx", "onnxruntime", "tf2onnx", "export", "serving"}


# ------------------------------------------------------------------------------ serving layers

# serving/ in layers, lowest first. A module may import modules of its own layer or of lower
# ones, never of a higher one, and nothing may form a cycle. Every serving module is listed here
# (a new module must be placed before it can be imported), so the order is declared once:
SERVING_LAYERS = (
    # what a request failed with, and how it reads on the wire
    ("errors",),
    # plain data and the files that describe it: names, shapes, manifest (signature), version
    # states, metrics, array helpers, config files and their text format, TF Serving's proto loader, TLS
    ("signature", "status", "metrics", "arrays", "text_format", "model_config", "batching_config", "tfs_protos", "tls"),
    # codecs: wire formats <-> arrays, pure functions (TF Serving JSON and gRPC, KServe v2)
    ("tfs_json", "rest_codec", "grpc_codec", "kserve_codec"),
    # backends: the interface and the runtimes behind it (ONNX Runtime, TensorFlow, the fake)
    ("backend", "onnx_backend", "tf_backend"),
    # one loaded version and its public step graph (the sessions' view of it)
    ("streaming", "predictor"),
    # what runs requests on versions: dynamic batching, server-side streaming sessions
    ("batching", "session_store"),
    # which versions serve: load, lease, reload, retire
    ("registry",),
    # the one request path: resolve -> validate -> limits -> schedule -> timeout -> metrics
    ("dispatch",),
    # fronts: wire <-> dispatch (REST TF Serving and KServe, gRPC)
    ("rest_http", "rest_inline", "rest_tfs", "rest_kserve", "rest", "grpc_guard", "grpc_server"),
    # running it: server, child process, command line, demo, the package's lazy names
    ("process", "server", "cli", "demo", "__main__", "__init__"),
)
SERVING_LAYER = {module: index for index, layer in enumerate(SERVING_LAYERS) for module in layer}


def serving_imports(path: pathlib.Path):
    """Yield the serving modules a file imports: module level, in functions, under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "serving":
                    yield parts[1] if len(parts) > 1 else "__init__"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "serving":
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1]
            else:  # `from serving import rest_codec` names modules; `from serving import X` the package
                for alias in node.names:
                    yield alias.name if (ROOT / "serving" / f"{alias.name}.py").exists() else "__init__"
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path.name}: relative import; use `from serving.x import ...`")


def serving_graph() -> dict:
    return {path.stem: set(serving_imports(path)) - {path.stem} for path in sorted((ROOT / "serving").glob("*.py"))}


def test_every_serving_module_has_a_layer():
    modules = set(serving_graph())
    assert modules - set(SERVING_LAYER) == set(), "place new serving modules in SERVING_LAYERS"
    assert set(SERVING_LAYER) - modules == set(), "SERVING_LAYERS names modules that do not exist"


def test_serving_imports_only_its_own_or_lower_layers():
    bad = [
        f"serving/{module}.py (layer {SERVING_LAYER[module]}) imports serving.{target} (layer {SERVING_LAYER[target]})"
        for module, targets in serving_graph().items()
        for target in sorted(targets)
        if SERVING_LAYER.get(target, -1) > SERVING_LAYER.get(module, -1)
    ]
    assert not bad, bad


def test_serving_has_no_import_cycle():
    graph = serving_graph()
    done: set = set()

    def visit(module: str, path: tuple) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join((*path[path.index(module) :], module)))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checks above read function-level and TYPE_CHECKING imports too."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from serving.registry import Lease\n"
        "def f():\n    from serving import dispatch\n    import serving.rest\n"
    )
    assert sorted(serving_imports(source)) == ["dispatch", "registry", "rest"]


# ------------------------------------------------------ rnnkit reaches export/serving by name only

# rnnkit may load the other boxes only through importlib, by module names listed in one place:
# the dicts of rnnkit/cli.py (COMMAND_MODULES: subcommands; DEMO_MODULES: the demo's steps).
BOX_NAME_TABLES = ("COMMAND_MODULES", "DEMO_MODULES")
OTHER_BOXES = ("export", "serving")


def _names_other_box(value: object) -> bool:
    return isinstance(value, str) and any(value == box or value.startswith(box + ".") for box in OTHER_BOXES)


def test_rnnkit_names_export_and_serving_modules_only_in_the_cli_table():
    bad = []
    for path in sorted((ROOT / "rnnkit").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        allowed: set = set()
        if path == ROOT / "rnnkit" / "cli.py":
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in BOX_NAME_TABLES for t in node.targets
                ):
                    allowed |= {id(v) for v in ast.walk(node.value)}
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):  # importlib.import_module("serving.x") / __import__("export")
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                literal = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
                if name in ("import_module", "__import__") and _names_other_box(literal):
                    bad.append(f"{where} imports {literal!r} by a literal name")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "." in node.value
                and _names_other_box(node.value)
                and id(node) not in allowed
            ):
                bad.append(f"{where} names the module {node.value!r} outside rnnkit/cli.py's tables")
    assert not bad, bad
