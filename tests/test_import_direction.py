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
    # the console script's launcher: the standard library; every box by name through its tables
    "rnnkit_cli": {"export", "serving", "keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "numpy"},
}
# serving may use tensorflow only lazily (inside functions), never at module level; the launcher
# imports the rnnkit package (and with it Keras) only inside the command that needs it.
MODULE_LEVEL_FORBIDDEN = {"serving": {"tensorflow"}, "rnnkit_cli": {"rnnkit"}}


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


def test_importing_rnnkit_registers_the_layers_and_loads_no_onnx_or_serving():
    """`import keras, rnnkit` is enough for keras.saving to find rnnkit's classes."""
    code = (
        "import keras, rnnkit; "
        "print(keras.saving.get_registered_object('rnnkit>StackedRNN') is rnnkit.layers.StackedRNN, "
        "keras.saving.get_registered_object('rnnkit>Adam') is not None)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]
    assert not loaded_after("import rnnkit") & {"onnx", "onnxruntime", "tf2onnx", "export", "serving"}


def test_the_serve_command_loads_no_keras_tensorflow_or_rnnkit():
    """The console script (`rnnkit_cli:main`) runs `rnnkit serve` without importing the rnnkit package."""
    statement = (
        "import rnnkit_cli, contextlib, io; "
        "err = io.StringIO(); ctx = contextlib.redirect_stderr(err); ctx.__enter__(); "
        "code = rnnkit_cli.main(['serve', '--model_base_path', '/nonexistent/rnnkit-model', '--port', '0']); "
        "ctx.__exit__(None, None, None); "
        "assert code == 1, (code, err.getvalue()); assert 'no model version could be loaded' in err.getvalue()"
    )
    loaded = loaded_after(statement)
    assert "serving" in loaded  # the command ran
    assert not loaded & {"keras", "tensorflow", "rnnkit", "export"}
    assert not loaded_after("import rnnkit_cli; rnnkit_cli.build_parser('serve')") & {"keras", "tensorflow", "rnnkit"}


def test_a_serve_only_install_without_keras_or_tensorflow():
    """With keras and tensorflow absent (as after `pip install rnnkit[serve]`), `rnnkit serve` runs,
    `rnnkit --help` lists it, and `import rnnkit` names the extra to install."""
    code = (
        "import sys, contextlib, io\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('keras', 'tensorflow'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import rnnkit_cli\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "    code = rnnkit_cli.main(['serve', '--model_base_path', '/nonexistent/rnnkit-model', '--port', '0'])\n"
        "print(code, 'no model version could be loaded' in err.getvalue())\n"
        "print('serve' in rnnkit_cli.build_parser().format_help())\n"
        "try:\n"
        "    import rnnkit\n"
        "except ModuleNotFoundError as error:\n"
        "    print(error)\n"
        "try:\n"
        "    rnnkit_cli.main(['train', '--out', '/nonexistent'])\n"
        "except SystemExit as error:\n"
        "    print(error)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "1 True",
        "True",
        "rnnkit's layers and training need Keras and TensorFlow ('keras' is not installed): "
        "pip install 'rnnkit[keras]' (the ONNX server alone is 'rnnkit[serve]')",
        "rnnkit train: rnnkit's layers and training need Keras and TensorFlow ('keras' is not installed): "
        "pip install 'rnnkit[keras]' (the ONNX server alone is 'rnnkit[serve]')",
    ]


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
    ("json_depth", "tfs_json", "rest_codec", "grpc_codec", "kserve_codec", "kserve_grpc_codec"),
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
    # fronts: wire <-> dispatch (REST TF Serving and KServe, gRPC TF Serving and KServe), gRPC health
    ("rest_http", "rest_tfs", "rest_kserve", "rest", "grpc_guard", "grpc_server", "kserve_grpc", "health"),
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
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rnnkit_serving.registry import Lease\n"
        "def f():\n    from serving import dispatch\n    import rnnkit_serving.fronts.rest.app\n"
    )
    assert sorted(serving_imports(source)) == ["dispatch", "registry", "rest"]


# ------------------------------------------------------ rnnkit reaches export/serving by name only

# rnnkit may load the other boxes only through importlib, by module names listed in one place:
# the dicts of the launcher rnnkit_cli/__init__.py (COMMAND_MODULES: subcommands; DEMO_MODULES:
# the demo's steps), which lives outside the package so that `rnnkit serve` never imports it.
BOX_NAME_TABLES = ("COMMAND_MODULES", "DEMO_MODULES")
OTHER_BOXES = ("export", "serving")


def _names_other_box(value: object) -> bool:
    return isinstance(value, str) and any(value == box or value.startswith(box + ".") for box in OTHER_BOXES)


TABLES_FILE = ROOT / "rnnkit_cli" / "__init__.py"


def test_rnnkit_names_export_and_serving_modules_only_in_the_cli_table():
    bad = []
    paths = sorted((ROOT / "rnnkit").rglob("*.py")) + sorted((ROOT / "rnnkit_cli").rglob("*.py"))
    assert TABLES_FILE in paths
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        allowed: set = set()
        if path == TABLES_FILE:
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
                bad.append(f"{where} names the module {node.value!r} outside rnnkit_cli's tables")
    assert not bad, bad
