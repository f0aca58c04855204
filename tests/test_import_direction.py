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
