"""Streaming step graphs: one chunk of time steps with explicit per-layer state in and out.

For a model that ``rnnkit_export.analysis.streamability`` finds streamable, the step function takes the
model's inputs for a chunk ``x [B, T_chunk, F]`` (side inputs whole) plus, for every recurrent
layer in call order, ``<layer>_h_in`` (and ``<layer>_c_in`` for LSTM) of shape [B, units], and
returns the model's outputs for the chunk plus ``<layer>_h_out`` (``_c_out``). Feeding a
sequence chunk by chunk, passing each chunk's ``*_out`` states as the next chunk's ``*_in``,
reproduces the full run.

A model whose decoder starts from states computed by an encoder gets, instead, an encoder
graph (source inputs -> the decoder's ``*_in`` states) and a decoder step graph (target
inputs + ``*_in`` states -> outputs + ``*_out`` states): a session starts from the encoder's
output and steps the decoder chunk by chunk.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from rnnkit.layers import trace_substitution
from rnnkit_export.analysis.model_io import ModelIO, TensorInfo
from rnnkit_export.analysis.streamability import PER_STEP, Verdict, analyze, input_kind
from rnnkit_serving.core.repository_format import (
    DECODER_STEP_FILE,
    DECODER_STEP_SIGNATURE,
    ENCODER_FILE,
    ENCODER_SIGNATURE,
    STREAMING_ENCODER_DECODER,
    STREAMING_NONE,
    STREAMING_OFF,
    STREAMING_STEP,
)

STREAMING_MODES = ("auto", "off", "required")


@dataclass
class StreamingLayer:
    """One recurrent layer of a step graph: its name, its states (``h``, and ``c`` for LSTM) and
    width; its state tensors are ``<name>_<state>_in`` / ``_out``, shape [batch, units]."""

    name: str
    state_names: list[str]  # "h", "c"
    units: int

    def inputs(self) -> list[str]:
        return [f"{self.name}_{s}_in" for s in self.state_names]

    def outputs(self) -> list[str]:
        return [f"{self.name}_{s}_out" for s in self.state_names]


@dataclass
class EncoderDecoder:
    """Encoder graph + decoder step graph for a model whose decoder starts from encoder states."""

    encoder: Any  # keras.Model: source inputs (list) -> the cut state tensors (list)
    source: list[TensorInfo]  # the encoder's inputs (model inputs)
    feeds: dict[tuple[str, int], int]  # (decoder layer, state index) -> index of the encoder output
    decoder: Any  # keras.Model: target inputs + cut tensors (list) -> model outputs (list)
    decoder_io: ModelIO
    plan: StreamingPlan  # the decoder step graph

    def encoder_outputs(self) -> list[TensorInfo]:
        return self.plan.state_inputs()

    def encoder_function(self) -> Any:
        """Source tensors (positional) -> {decoder state input name: initial state}."""
        names = [t.name for t in self.source]

        def fn(*tensors: Any) -> dict[str, Any]:
            values = keras.tree.flatten(self.encoder([tensors[names.index(n)] for n in names]))
            batch = keras.ops.shape(tensors[0])[0]
            out: dict[str, Any] = {}
            for layer in self.plan.layers:
                for index, name in enumerate(layer.inputs()):
                    k = self.feeds.get((layer.name, index))
                    out[name] = values[k] if k is not None else keras.ops.zeros((batch, layer.units))
            return out

        return fn

    def to_json(self) -> dict[str, Any]:
        return {
            ENCODER_SIGNATURE: {
                "signature": ENCODER_SIGNATURE,
                "file": ENCODER_FILE,
                "inputs": [t.to_json() for t in self.source],
                "outputs": [t.to_json() for t in self.encoder_outputs()],
            },
            DECODER_STEP_SIGNATURE: {
                "signature": DECODER_STEP_SIGNATURE,
                "file": DECODER_STEP_FILE,
                "inputs": [t.to_json() for t in self.plan.step_inputs(self.decoder_io)],
                "outputs": [t.to_json() for t in self.decoder_io.outputs + self.plan.state_outputs()],
            },
            "states": self.plan.states_json(),
        }


@dataclass
class StreamingPlan:
    """Whether and how a model streams; ``to_json`` is ``rnnkit.json``'s ``streaming``.

    ``reason`` None means a step graph over the whole model (``mode`` ``STREAMING_STEP``) with the
    states of ``layers`` in call order; otherwise it says why not, naming ``layer`` when one layer
    is the cause. ``sequence_inputs`` are cut into chunks (other inputs go whole to every chunk),
    ``sequence_outputs`` are concatenated over chunks (others: the last chunk's), ``state_feeds``
    maps a model input fed by a state to that state input. Encoder-decoder models (``mode``
    ``STREAMING_ENCODER_DECODER``) carry their own decoder plan in ``encoder_decoder``.
    """

    layers: list[StreamingLayer]
    reason: str | None  # why the model has no step graph (None: it has one)
    layer: str | None = None  # the layer that prevents streaming
    mode: str = STREAMING_STEP  # STREAMING_STEP | _ENCODER_DECODER | _NONE | _OFF (the manifest's streaming.mode)
    sequence_outputs: list[str] = field(default_factory=list)  # per-step outputs (concatenated over chunks)
    sequence_inputs: list[str] = field(default_factory=list)  # inputs cut into chunks (others go whole)
    state_feeds: dict[str, str] = field(default_factory=dict)  # model-io input -> the state input feeding it
    encoder_decoder: EncoderDecoder | None = None

    def state_inputs(self, dtype: str = "float32") -> list[TensorInfo]:
        return [TensorInfo(n, dtype, [None, layer.units]) for layer in self.layers for n in layer.inputs()]

    def state_outputs(self, dtype: str = "float32") -> list[TensorInfo]:
        return [TensorInfo(n, dtype, [None, layer.units]) for layer in self.layers for n in layer.outputs()]

    def step_inputs(self, io: ModelIO) -> list[TensorInfo]:
        """The step graph's inputs: the model's inputs (less those fed by states) + the states."""
        return [t for t in io.inputs if t.name not in self.state_feeds] + self.state_inputs()

    def states_json(self) -> list[dict[str, Any]]:
        return [
            {"layer": layer.name, "input": i, "output": o, "units": layer.units}
            for layer in self.layers
            for i, o in zip(layer.inputs(), layer.outputs())
        ]

    def without_step(self, reason: str) -> StreamingPlan:
        return StreamingPlan([], reason, self.layer, STREAMING_NONE)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "streamable": self.reason is None,
            "mode": self.mode,
            "reason": self.reason,
            "layer": self.layer,
            "states": self.states_json() if self.reason is None else [],
        }
        if self.encoder_decoder is not None:
            data["encoder_decoder"] = self.encoder_decoder.to_json()
        return data


def recurrent_layers_called(model: Any, io: ModelIO, sample: dict[str, np.ndarray] | None = None) -> list[Any]:
    """Run the model once on a tiny input and return its recurrent layers in call order."""
    seen: list[Any] = []

    def record(layer: Any, *args: Any) -> Any:
        seen.append(layer)
        return NotImplemented

    if sample is None:
        sample = {t.name: np.zeros([1] + [d or 2 for d in t.shape[1:]], dtype=t.dtype) for t in io.inputs}
    with trace_substitution(record):
        io.call(model, sample)
    return seen


def _inside_time_distributed(model: Any) -> set[int]:
    """Layers wrapped by TimeDistributed: they restart on every time step, so they carry no state."""
    return {
        id(inner)
        for wrapper in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(wrapper, keras.layers.TimeDistributed)
        for inner in wrapper.layer._flatten_layers(include_self=True, recursive=True)
    }


def _streaming_layers(model: Any, seen: list[Any]) -> tuple[list[StreamingLayer], str | None, str | None]:
    per_step = _inside_time_distributed(model)
    seen = [layer for layer in seen if id(layer) not in per_step]
    layers = []
    for layer in seen:
        if getattr(layer, "forward_layer", None) is not None:
            return [], f"layer '{layer.name}' is bidirectional", layer.name
        if layer.go_backwards:
            return [], f"layer '{layer.name}' runs backwards (go_backwards=True)", layer.name
        names = list(getattr(layer, "STATE_NAMES", ("h",)))
        layers.append(StreamingLayer(layer.name, names, int(layer.cell.units)))
    if not seen:
        return [], "the model has no rnnkit recurrent layer", None
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        return [], f"recurrent layer names are not unique: {names}", None
    return layers, None, None


def _tensors_by_name(model: Any, io: ModelIO) -> tuple[dict[str, Any], dict[str, Any]]:
    graph = getattr(model, "_functional", None) or model
    ins, outs = graph._inputs_struct, graph._outputs_struct
    if isinstance(ins, dict):
        inputs = dict(ins)
    else:
        inputs = dict(zip(io.input_names, ins if isinstance(ins, (list, tuple)) else [ins]))
    if isinstance(outs, dict):
        outputs = dict(outs)
    else:
        outputs = dict(zip(io.output_names, outs if isinstance(outs, (list, tuple)) else [outs]))
    return inputs, outputs


def _sequence_names(infos: list[TensorInfo], tensors: dict[str, Any], verdict: Verdict) -> list[str]:
    return [t.name for t in infos if verdict.kinds.get(id(tensors[t.name])) == PER_STEP]


def plan_streaming(model: Any, io: ModelIO, streaming: str = "auto") -> StreamingPlan:
    """Decide whether and how `model` streams (see ``rnnkit_export.analysis.streamability``) and plan the graphs."""
    if streaming not in STREAMING_MODES:
        raise ValueError(f"argument `streaming` must be one of {STREAMING_MODES}. Received: streaming={streaming!r}")
    if streaming == "off":
        return StreamingPlan([], "streaming is off (--streaming off)", None, STREAMING_OFF)
    verdict = analyze(model)
    if not verdict.streamable:
        if verdict.cuts:
            return _encoder_decoder(model, io, verdict)
        return StreamingPlan([], verdict.reason, verdict.layer, STREAMING_NONE)
    layers, reason, layer_name = _streaming_layers(model, recurrent_layers_called(model, io))
    if reason is not None:
        return StreamingPlan([], reason, layer_name, STREAMING_NONE)
    inputs, outputs = _tensors_by_name(model, io)
    return StreamingPlan(
        layers,
        None,
        None,
        STREAMING_STEP,
        _sequence_names(io.outputs, outputs, verdict),
        [t.name for t in io.inputs if input_kind(inputs[t.name]) == PER_STEP],
    )


def _encoder_decoder(model: Any, io: ModelIO, verdict: Verdict) -> StreamingPlan:
    """Plan an encoder graph + decoder step graph, or say why the model cannot stream at all."""
    refused = StreamingPlan([], verdict.reason, verdict.layer, STREAMING_NONE)
    cut_tensors: list[Any] = []
    for cut in verdict.cuts:
        cut_tensors.extend(t for t in cut.states if all(t is not c for c in cut_tensors))
    decoder_verdict = analyze(model, cut_tensors)
    if not decoder_verdict.streamable:
        refused.reason = f"{verdict.reason}; as a decoder fed by those states: {decoder_verdict.reason}"
        return refused
    inputs, outputs = _tensors_by_name(model, io)
    reached = {id(t) for t in decoder_verdict.reached_inputs}
    targets = [t for t in io.inputs if id(inputs[t.name]) in reached]
    sources = [t for t in io.inputs if id(inputs[t.name]) not in reached]
    if not sources or not targets:
        return refused
    placeholders = [
        TensorInfo(f"__encoder_state_{k}", np.dtype(t.dtype).name, [None if d is None else int(d) for d in t.shape])
        for k, t in enumerate(cut_tensors)
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = keras.Model([inputs[t.name] for t in sources], list(cut_tensors))
            decoder = keras.Model(
                [inputs[t.name] for t in targets] + list(cut_tensors), [outputs[t.name] for t in io.outputs]
            )
    except ValueError as error:  # the states also depend on the target inputs (graph disconnected)
        refused.reason = f"{verdict.reason}; the states cannot be computed from the other inputs alone: {error}"
        return refused
    decoder_io = ModelIO(targets + placeholders, list(io.outputs), "list", "list" if len(io.outputs) > 1 else "single")
    sample = {t.name: np.zeros([1] + [d or 2 for d in t.shape[1:]], dtype=t.dtype) for t in decoder_io.inputs}
    layers, reason, layer_name = _streaming_layers(decoder, recurrent_layers_called(decoder, decoder_io, sample))
    if reason is not None:
        refused.reason = f"{verdict.reason}; the decoder cannot stream: {reason}"
        return refused
    by_name = {layer.name: layer for layer in layers}
    feeds: dict[tuple[str, int], int] = {}
    state_feeds: dict[str, str] = {}
    for cut in verdict.cuts:
        streaming_layer = by_name[cut.layer.name]
        for index, tensor in enumerate(cut.states):
            k = next(i for i, c in enumerate(cut_tensors) if c is tensor)
            feeds[(cut.layer.name, index)] = k
            state_feeds.setdefault(placeholders[k].name, streaming_layer.inputs()[index])
    plan = StreamingPlan(
        layers,
        None,
        None,
        STREAMING_STEP,
        _sequence_names(io.outputs, outputs, decoder_verdict),
        [t.name for t in targets if input_kind(inputs[t.name]) == PER_STEP],
        state_feeds,
    )
    pair = EncoderDecoder(encoder, sources, feeds, decoder, decoder_io, plan)
    reason = (
        f"layer '{verdict.layer}' starts from states computed by an encoder from "
        f"{[t.name for t in sources]}: no step graph over the whole model; stream with the "
        f"'{ENCODER_SIGNATURE}' graph, then '{DECODER_STEP_SIGNATURE}' over {[t.name for t in targets]}"
    )
    return StreamingPlan([], reason, verdict.layer, STREAMING_ENCODER_DECODER, encoder_decoder=pair)


class LoopStateSubstitute:
    """Runs each recurrent layer's own loop from given states and keeps its final states."""

    def __init__(self, initial: dict[str, list[Any]]) -> None:
        self.initial = initial
        self.final: dict[str, list[Any]] = {}

    def __call__(self, layer: Any, sequences: Any, mask: Any, initial_state: Any, training: Any) -> Any:
        if layer.name not in self.initial:  # not a streamed layer (e.g. inside TimeDistributed)
            return NotImplemented
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
    """A function (the step inputs positionally, ``plan.step_inputs(io)``; dict out) for the step graph.

    ``substitute_factory(initial_states_by_layer) -> substitute`` chooses the backend: the
    Keras loop (SavedModel) or fused markers (ONNX); the substitute must expose the final
    states as ``.final`` or ``.final_states``.
    """
    step_names = [t.name for t in plan.step_inputs(io)]

    def fn(*tensors: Any) -> dict[str, Any]:
        named = dict(zip(step_names, tensors))
        initial = {layer.name: [named[n] for n in layer.inputs()] for layer in plan.layers}
        substitute = substitute_factory(initial)
        feed = {n: named[plan.state_feeds.get(n, n)] for n in io.input_names}
        with trace_substitution(substitute):
            outputs = io.call(model, feed)
        final = getattr(substitute, "final", None) or substitute.final_states
        for layer in plan.layers:
            for name, value in zip(layer.outputs(), final[layer.name]):
                outputs[name] = value
        return outputs

    return fn
