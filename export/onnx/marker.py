"""Trace-time substitute: each fusable recurrent layer becomes one opaque marker op.

While ``rnnkit.layers.trace_substitution(MarkerSubstitute(...))`` is active, a recurrent
layer's ``call`` emits one ``tf.py_function`` named ``rnnkit_marker_<key>`` whose inputs are
``[sequences, mask?, *initial_states]`` and whose outputs have the shapes the layer would
return. tf2onnx passes it through as a custom-domain node; ``splice.py`` replaces it with
the fused ONNX op. The py_function body never runs during export.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from rnnkit_export.onnx.converters import FusedDirection, UnfusableError, converter_for
from rnnkit_export.streaming.step import LoopStateSubstitute

log = logging.getLogger("rnnkit.export")
MARKER_PREFIX = "rnnkit_marker_"
_KEYS = itertools.count()


@dataclass
class LayerPlan:
    """What one marker stands for: the fused op per direction and Keras's output conventions."""

    layer_name: str
    directions: list[FusedDirection]  # one (forward / reverse) or two (bidirectional)
    direction: str  # "forward" | "reverse" | "bidirectional"
    return_sequences: bool
    return_state: bool
    zero_output_for_mask: bool
    merge_mode: str | None = None  # bidirectional only
    # a streamed layer of a step graph: its initial states are the previous chunk's final ones, so its
    # previous output (the h state) is carried into masked steps before the chunk's first valid one
    streamed: bool = False

    @property
    def n_states(self) -> int:
        return self.directions[0].n_states * len(self.directions)

    @property
    def n_main_outputs(self) -> int:
        return 2 if self.direction == "bidirectional" and self.merge_mode is None else 1


@dataclass
class MarkerRecord:
    key: str
    plan: LayerPlan
    has_mask: bool
    n_initial_states: int
    n_outputs: int


def plan_layer(layer: Any) -> LayerPlan:
    """Describe a layer as fused ops, or raise UnfusableError with the reason."""
    owner = f"{type(layer).__name__} '{layer.name}'"
    if getattr(layer, "stateful", False):
        raise UnfusableError(f"{owner}: stateful=True (export states explicitly instead)")
    forward = getattr(layer, "forward_layer", None)
    if forward is not None:
        backward = layer.backward_layer
        if type(forward.cell) is not type(backward.cell):
            raise UnfusableError(f"{owner}: forward and backward cells differ in type")
        if forward.go_backwards or not backward.go_backwards:
            raise UnfusableError(f"{owner}: expected a forward layer and a go_backwards layer")
        fwd = converter_for(forward.cell)(forward.cell)
        bwd = converter_for(backward.cell)(backward.cell)
        if fwd.activations != bwd.activations or fwd.attributes != bwd.attributes or fwd.op_type != bwd.op_type:
            raise UnfusableError(f"{owner}: forward and backward cells are configured differently")
        if (fwd.P is None) != (bwd.P is None) or (fwd.B is None) != (bwd.B is None):
            raise UnfusableError(f"{owner}: forward and backward cells differ in bias/peepholes")
        return LayerPlan(
            layer.name,
            [fwd, bwd],
            "bidirectional",
            bool(layer.return_sequences),
            bool(layer.return_state),
            bool(forward.zero_output_for_mask),
            layer.merge_mode,
        )
    cell = getattr(layer, "cell", None)
    if cell is None:
        raise UnfusableError(f"{owner}: no cell")
    fused = converter_for(cell)(cell)
    return LayerPlan(
        layer.name,
        [fused],
        "reverse" if layer.go_backwards else "forward",
        bool(layer.return_sequences),
        bool(layer.return_state),
        bool(layer.zero_output_for_mask),
    )


def _never_runs(*args: Any) -> Any:
    raise RuntimeError("rnnkit export marker executed; it only exists to be replaced in the ONNX graph")


@dataclass
class MarkerSubstitute:
    """The substitute handed to ``trace_substitution`` for the ONNX trace.

    An unfusable layer is recorded in ``fallbacks`` (layer name -> reason) and runs its own
    loop, which tf2onnx converts to a ``Loop``; the caller decides whether that is an error.
    ``state_io``: for step graphs, maps layer name -> initial states to use (and the
    marker then also returns the final states, collected in ``final_states``).
    """

    state_io: dict[str, list[Any]] | None = None
    records: dict[str, MarkerRecord] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)
    final_states: dict[str, list[Any]] = field(default_factory=dict)

    def __call__(self, layer: Any, sequences: Any, mask: Any, initial_state: Any, training: Any) -> Any:
        try:
            plan = plan_layer(layer)
        except UnfusableError as error:
            if getattr(layer, "forward_layer", None) is None or layer.name not in self.fallbacks:
                self.fallbacks[layer.name] = str(error)
            log.warning("layer %s is not fused (tf2onnx loop fallback): %s", layer.name, error)
            if self.state_io is not None and layer.name in self.state_io:
                loop = LoopStateSubstitute(self.state_io)  # step graph: keep the state wiring
                result = loop(layer, sequences, mask, initial_state, training)
                self.final_states[layer.name] = loop.final[layer.name]
                return result
            return NotImplemented
        wants_states = self.state_io is not None and layer.name in self.state_io  # a streamed layer
        if wants_states:
            if plan.direction != "forward":
                raise UnfusableError(f"layer '{layer.name}': {plan.direction} layers cannot stream")
            initial_state = self.state_io.get(layer.name, initial_state)  # type: ignore[union-attr]
            plan.return_state = True
            plan.streamed = True
        key = f"m{next(_KEYS)}"
        inputs = [sequences]
        if mask is not None:
            inputs.append(tf.cast(mask, tf.bool))
        states = list(initial_state) if initial_state is not None else []
        inputs.extend(states)
        steps = sequences.shape[1]
        width = (
            sum(d.hidden_size for d in plan.directions)
            if plan.merge_mode == "concat"
            else plan.directions[0].hidden_size
        )
        main_shape = [None, steps, width] if plan.return_sequences else [None, width]
        shapes = [main_shape] * plan.n_main_outputs
        if plan.return_state:
            shapes += [[None, plan.directions[0].hidden_size]] * plan.n_states
        outputs = tf.py_function(
            _never_runs, inputs, Tout=[sequences.dtype] * len(shapes), name=f"{MARKER_PREFIX}{key}"
        )
        for tensor, shape in zip(outputs, shapes):
            tensor.set_shape(shape)
        self.records[key] = MarkerRecord(key, plan, mask is not None, len(states), len(shapes))
        self.fused.append(layer.name)
        self.fallbacks.pop(layer.name, None)
        outputs = list(outputs)
        if wants_states:
            self.final_states[layer.name] = outputs[plan.n_main_outputs :]
            if not layer.return_state:
                outputs = outputs[: plan.n_main_outputs]
        if len(outputs) == 1:
            return outputs[0]
        if plan.n_main_outputs == 2 and not plan.return_state:
            return (outputs[0], outputs[1])
        return outputs
