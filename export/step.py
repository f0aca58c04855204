"""Streaming step graphs: one chunk of time steps with explicit per-layer state in and out.

For a model whose recurrent layers all run forwards, the step function takes the model's
inputs for a chunk ``x [B, T_chunk, F]`` plus, for every recurrent layer in call order,
``<layer>_h_in`` (and ``<layer>_c_in`` for LSTM) of shape [B, units], and returns the model's
outputs for the chunk plus ``<layer>_h_out`` (``_c_out``). Feeding a sequence chunk by chunk,
passing each chunk's ``*_out`` states as the next chunk's ``*_in``, reproduces the full run.
Bidirectional and go_backwards layers need the future, so such models get no step graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from export.model_io import ModelIO, TensorInfo
from rnnkit.layers import trace_substitution


@dataclass
class StreamingLayer:
    name: str
    state_names: list[str]  # "h", "c"
    units: int

    def inputs(self) -> list[str]:
        return [f"{self.name}_{s}_in" for s in self.state_names]

    def outputs(self) -> list[str]:
        return [f"{self.name}_{s}_out" for s in self.state_names]


@dataclass
class StreamingPlan:
    layers: list[StreamingLayer]
    reason: str | None  # why the model cannot stream (None: it can)

    def state_inputs(self, dtype: str = "float32") -> list[TensorInfo]:
        return [TensorInfo(n, dtype, [None, layer.units]) for layer in self.layers for n in layer.inputs()]

    def state_outputs(self, dtype: str = "float32") -> list[TensorInfo]:
        return [TensorInfo(n, dtype, [None, layer.units]) for layer in self.layers for n in layer.outputs()]

    def to_json(self) -> dict[str, Any]:
        return {
            "streamable": self.reason is None,
            "reason": self.reason,
            "states": [
                {"layer": layer.name, "input": i, "output": o, "units": layer.units}
                for layer in self.layers
                for i, o in zip(layer.inputs(), layer.outputs())
            ],
        }


def plan_streaming(model: Any, io: ModelIO) -> StreamingPlan:
    """Run the model once on a tiny input and record its recurrent layers in call order."""
    seen: list[Any] = []

    def record(layer: Any, *args: Any) -> Any:
        seen.append(layer)
        return NotImplemented

    sample = {t.name: np.zeros([1] + [d or 2 for d in t.shape[1:]], dtype=t.dtype) for t in io.inputs}
    with trace_substitution(record):
        io.call(model, sample)
    layers, reasons = [], []
    for layer in seen:
        if getattr(layer, "forward_layer", None) is not None:
            reasons.append(f"layer '{layer.name}' is bidirectional")
            break
        if layer.go_backwards:
            reasons.append(f"layer '{layer.name}' runs backwards (go_backwards=True)")
        names = list(getattr(layer, "STATE_NAMES", ("h",)))
        layers.append(StreamingLayer(layer.name, names, int(layer.cell.units)))
    if not seen:
        reasons.append("the model has no rnnkit recurrent layer")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        reasons.append(f"recurrent layer names are not unique: {names}")
    return StreamingPlan([] if reasons else layers, reasons[0] if reasons else None)


class LoopStateSubstitute:
    """Runs each recurrent layer's own loop from given states and keeps its final states."""

    def __init__(self, initial: dict[str, list[Any]]) -> None:
        self.initial = initial
        self.final: dict[str, list[Any]] = {}

    def __call__(self, layer: Any, sequences: Any, mask: Any, initial_state: Any, training: Any) -> Any:
        returns_state = layer.return_state
        layer.return_state = True
        try:
            result = keras.layers.RNN.call(
                layer, sequences, initial_state=self.initial[layer.name], mask=mask, training=False
            )
        finally:
            layer.return_state = returns_state
        output, *states = result
        self.final[layer.name] = list(states)
        return [output, *states] if returns_state else output


def step_function(model: Any, io: ModelIO, plan: StreamingPlan, substitute_factory: Any) -> Any:
    """A function (named tensors in, dict out) for the step graph.

    ``substitute_factory(initial_states_by_layer) -> substitute`` chooses the backend: the
    Keras loop (SavedModel) or fused markers (ONNX); the substitute must expose the final
    states as ``.final`` or ``.final_states``.
    """
    model_names = io.input_names
    state_names = [n for layer in plan.layers for n in layer.inputs()]

    def fn(*tensors: Any) -> dict[str, Any]:
        named = dict(zip(model_names + state_names, tensors))
        initial = {layer.name: [named[n] for n in layer.inputs()] for layer in plan.layers}
        substitute = substitute_factory(initial)
        with trace_substitution(substitute):
            outputs = io.call(model, {n: named[n] for n in model_names})
        final = getattr(substitute, "final", None) or substitute.final_states
        for layer in plan.layers:
            for name, value in zip(layer.outputs(), final[layer.name]):
                outputs[name] = value
        return outputs

    return fn
