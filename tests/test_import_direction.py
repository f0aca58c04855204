"""The dependency rule of ARCHITECTURE.md, on the source text and in a live process."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What import-linter cannot say (its contracts count every import, wherever it is): imports that
# are allowed only inside functions. serving may use tensorflow only lazily (the TF backend, the TF
# Serving protos), never at module level; the launcher imports nothing beyond the standard library
# at module level, so `rnnkit serve` pays for no box but the server. Folder -> forbidden at module level.
MODULE_LEVEL_FORBIDDEN = {
    "serving": {"tensorflow", "keras"},
    "rnnkit_cli/__init__.py": {
        "rnnkit",
        "rnnkit_export",
        "rnnkit_serving",
        "keras",
        "tensorflow",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
    },
}


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


@pytest.mark.parametrize("where", sorted(MODULE_LEVEL_FORBIDDEN))
def test_lazy_imports_stay_lazy(where):
    root = ROOT / where
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    assert files, f"no sources found for {where}"
    bad = [
        f"{path.relative_to(ROOT)} imports {name} at module level"
        for path in files
        for name, at_top in imports(path)
        if at_top and name in MODULE_LEVEL_FORBIDDEN[where]
    ]
    assert not bad, bad


def loaded_after(statement: str) -> set:
    code = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_serving_loads_no_keras_tensorflow_or_rnnkit():
    loaded = loaded_after("import rnnkit_serving")
    assert not loaded & {"keras", "tensorflow", "rnnkit", "rnnkit_export"}


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
    assert not loaded_after("import rnnkit") & {
        "onnx",
        "onnxruntime",
        "tf2onnx",
        "rnnkit_export",
        "rnnkit_serving",
        "rnnkit_cli",
    }


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
    assert "rnnkit_serving" in loaded  # the command ran
    assert not loaded & {"keras", "tensorflow", "rnnkit", "rnnkit_export"}
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
    assert not loaded & {"onnx", "onnxruntime", "tf2onnx", "rnnkit_export", "rnnkit_serving"}


# ------------------------------------------------------------------ contracts and cycles

PACKAGES = ("rnnkit", "rnnkit_cli", "rnnkit_export", "rnnkit_serving")


def test_the_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: serving's layers, the fronts' independence,
    the dependency rule between the boxes, export's layers (`make test` also runs `lint-imports`)."""
    proc = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and "0 broken" in proc.stdout, proc.stdout[-2000:]


def test_the_layers_contract_catches_an_upward_import_in_a_function_or_under_type_checking(tmp_path):
    """The layers contract counts function-level and TYPE_CHECKING imports, as the old hand-made check did."""
    package = tmp_path / "probe_pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "high.py").write_text("")
    (package / "low" / "lazy.py").write_text("def f():\n    import probe_pkg.high\n")
    (package / "low" / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from probe_pkg import high\n"
    )
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = probe_pkg\n\n"
        "[importlinter:contract:layers]\nname = probe layers\ntype = layers\nlayers =\n    probe_pkg.high\n    probe_pkg.low\n"
    )
    proc = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout
    assert "probe_pkg.low.lazy -> probe_pkg.high" in proc.stdout
    assert "probe_pkg.low.typed -> probe_pkg.high" in proc.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a list of module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            if target not in graph.modules:
                continue
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            connect(module)
    return found


def test_no_import_cycle_anywhere():
    """No module of any package reaches itself again through imports (module level, in functions,
    under TYPE_CHECKING), within a package or across them."""
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 100  # the check saw the code
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    import grimp

    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


# ------------------------------------------------------------------------------- packaging


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject's explicit `packages` (needed for the renamed import names) lists every folder."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {import_name: ROOT / folder for import_name, folder in config["package-dir"].items()}
    folders.update({name: ROOT / name for name in ("rnnkit", "rnnkit_cli")})
    found = set()
    for import_name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found.add(".".join((import_name, *relative)))
    assert sorted(config["packages"]) == sorted(found)


@pytest.mark.slow  # builds the wheel (setuptools, no network)
def test_the_wheel_installs_no_top_level_serving_or_export(tmp_path):
    import zipfile

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("rnnkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"rnnkit", "rnnkit_cli", "rnnkit_export", "rnnkit_serving"}
    assert "rnnkit_serving/fronts/grpc/kserve.py" in names and "rnnkit_export/onnx/splice.py" in names
