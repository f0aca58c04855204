"""Model repositories written by hand with the `onnx` package: no Keras, no TensorFlow, milliseconds.

For tests of the REST port that need real versions on disk (the server loads them with ONNX Runtime
and polls the repository) but not a trained network:

- ``half``: ``y = 0.5 x + offset`` per time step, x float32 [batch, time, 1]; it streams (a step graph
  whose state ``h`` [batch, 2] adds up the inputs seen so far);
- ``counter``: ``total = sum(ids)`` as float32, ids int64 [batch, 4]; it cannot stream (the manifest
  says why, as export writes it for bidirectional models).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _half_graph(offset: float, step: bool) -> onnx.GraphProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", 1])
    init = [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(offset, np.float32), "offset"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [helper.make_node("Mul", ["x", "half"], ["scaled"]), helper.make_node("Add", ["scaled", "offset"], ["y"])]
    inputs, outputs = [x], [y]
    if step:
        inputs.append(helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 2]))
        nodes += [
            helper.make_node("ReduceSum", ["x", "axes"], ["summed"], keepdims=0),
            helper.make_node("Unsqueeze", ["summed", "axis1"], ["column"]),
            helper.make_node("Add", ["h_in", "column"], ["h_out"]),
        ]
    return helper.make_graph(nodes, "step" if step else "half", inputs, outputs, init)


def _counter_graph() -> onnx.GraphProto:
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])
    init = [numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [
        helper.make_node("Cast", ["ids"], ["floats"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["floats", "axis1"], ["total"], keepdims=0),
    ]
    return helper.make_graph(nodes, "counter", [ids], [total], init)


def _manifest(name: str, version: int, inputs: list, outputs: list, streaming: dict) -> dict:
    return {
        "format": 1,
        "model_name": name,
        "version": version,
        "formats": ["onnx"],
        "inputs": inputs,
        "outputs": outputs,
        "streaming": streaming,
        "zero_padding_invariant": False,
    }


def write_half(version_dir: str, version: int, offset: float = 2.0, name: str = "half") -> str:
    """One version of ``half`` (0.5 x + offset, streaming) in `version_dir`."""
    os.makedirs(version_dir, exist_ok=True)
    _save(_half_graph(offset, step=False), os.path.join(version_dir, "model.onnx"))
    _save(_half_graph(offset, step=True), os.path.join(version_dir, "step.onnx"))
    manifest = _manifest(
        name,
        version,
        [{"name": "x", "dtype": "float32", "shape": [None, None, 1]}],
        [{"name": "y", "dtype": "float32", "shape": [None, None, 1]}],
        {"streamable": True, "mode": "step", "states": [{"input": "h_in", "output": "h_out", "units": 2}]},
    )
    with open(os.path.join(version_dir, "rnnkit.json"), "w") as handle:
        json.dump(manifest, handle)
    return version_dir


def write_counter(version_dir: str, version: int, name: str = "counter") -> str:
    """One version of ``counter`` (sum of 4 int64 ids, as float32; no streaming) in `version_dir`."""
    os.makedirs(version_dir, exist_ok=True)
    _save(_counter_graph(), os.path.join(version_dir, "model.onnx"))
    manifest = _manifest(
        name,
        version,
        [{"name": "ids", "dtype": "int64", "shape": [None, 4]}],
        [{"name": "total", "dtype": "float32", "shape": [None]}],
        {"streamable": False, "reason": "a bidirectional layer needs the whole sequence"},
    )
    with open(os.path.join(version_dir, "rnnkit.json"), "w") as handle:
        json.dump(manifest, handle)
    return version_dir


def publish(write, model_dir: str, version: int, corrupt: bool = False, **kwargs) -> str:
    """Write a version into a hidden directory and rename it into place, as export publishes;
    `corrupt`: its model.onnx is not an ONNX file (the version fails to load: END with its error)."""
    os.makedirs(model_dir, exist_ok=True)
    hidden = os.path.join(model_dir, f".rnnkit-tmp-{version}-test")
    shutil.rmtree(hidden, ignore_errors=True)
    write(hidden, version, **kwargs)
    if corrupt:
        with open(os.path.join(hidden, "model.onnx"), "wb") as handle:
            handle.write(b"this is not an ONNX file")
    final = os.path.join(model_dir, str(version))
    os.rename(hidden, final)
    return final
