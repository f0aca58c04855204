"""Keras model -> ONNX with every fusable recurrent layer as one fused LSTM/GRU/RNN op.

tf2onnx converts the non-recurrent rest of the graph; recurrent layers pass through it as
opaque markers (``marker.py``) that ``splice.py`` replaces. Both the full model and the
streaming step graph are produced here.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import tensorflow as tf
from onnx import helper

from rnnkit.layers import trace_substitution
from rnnkit_export.analysis.model_io import ModelIO, TensorInfo
from rnnkit_export.analysis.time_distributed import flattened_time_distributed
from rnnkit_export.analysis.twins import unswapped_native_layers
from rnnkit_export.onnx.marker import MarkerSubstitute
from rnnkit_export.onnx.splice import MARKER_DOMAIN, splice_markers
from rnnkit_export.streaming.step import EncoderDecoder, StreamingPlan, step_function

log = logging.getLogger("rnnkit.export")
LOOP_OPS = ("Loop", "Scan")
TF2ONNX_MAX_OPSET = 18
MIN_OPSET = 14  # LSTM/GRU/RNN v14 (same semantics up to 22)


class StrictExportError(ValueError):
    """--strict export found a layer that would not become a fused op."""


@dataclass
class OnnxResult:
    """A converted graph: the ONNX model, its inputs and outputs (the Keras model's names), the
    layers fused, the layers left to tf2onnx's loop (layer -> reason), and op type -> count."""

    model: onnx.ModelProto
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    fused_layers: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)
    op_census: dict[str, int] = field(default_factory=dict)


def _spec(info: TensorInfo) -> tf.TensorSpec:
    return tf.TensorSpec(info.shape, tf.as_dtype(info.dtype), name=info.name)


def census(model: onnx.ModelProto) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)

    walk(model.graph)
    return dict(sorted(counts.items()))


def _declare_shapes(model: onnx.ModelProto, infos: dict[str, TensorInfo]) -> None:
    """Set graph input/output shapes from the Keras model: static dims as numbers, dynamic
    ones named ('batch' for axis 0, 'time' for axis 1 of sequences, else '<name>_dim<k>')."""
    for value in list(model.graph.input) + list(model.graph.output):
        info = infos[value.name]
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for axis, size in enumerate(info.shape):
            dim = shape.dim.add()
            if size is not None:
                dim.dim_value = size
            elif axis == 0:
                dim.dim_param = "batch"
            elif axis == 1 and len(info.shape) >= 3:
                dim.dim_param = "time"
            else:
                dim.dim_param = f"{value.name}_dim{axis}"


def convert(
    fn: Callable[..., dict[str, Any]],
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    substitute: MarkerSubstitute,
    opset: int,
) -> OnnxResult:
    """Trace `fn` (named tensors in, dict out) with markers, convert, splice, check."""
    import tf2onnx

    if not MIN_OPSET <= opset <= TF2ONNX_MAX_OPSET:
        raise ValueError(f"argument `opset` must be in [{MIN_OPSET}, {TF2ONNX_MAX_OPSET}]. Received: opset={opset}")
    specs = [_spec(info) for info in inputs]
    traced = tf.function(fn, input_signature=specs, autograph=False)
    with trace_substitution(substitute):
        model_proto, _ = tf2onnx.convert.from_function(
            traced,
            input_signature=specs,
            opset=opset,
            custom_ops={"EagerPyFunc": MARKER_DOMAIN},
            extra_opset=[helper.make_opsetid(MARKER_DOMAIN, 1)],
        )
    splice_markers(model_proto, substitute.records)
    got_in = [v.name for v in model_proto.graph.input]
    got_out = [v.name for v in model_proto.graph.output]
    if got_in != [t.name for t in inputs] or sorted(got_out) != sorted(t.name for t in outputs):
        raise ValueError(f"ONNX graph names {got_in} -> {got_out} differ from the model's {inputs} -> {outputs}")
    model_proto = onnx.shape_inference.infer_shapes(model_proto)
    _declare_shapes(model_proto, {t.name: t for t in inputs + outputs})
    onnx.checker.check_model(model_proto)
    ops = census(model_proto)
    loops = {op: ops[op] for op in LOOP_OPS if op in ops}
    if loops and not substitute.fallbacks:
        raise ValueError(f"ONNX graph contains {loops} although every recurrent layer was fused")
    return OnnxResult(model_proto, inputs, outputs, list(substitute.fused), dict(substitute.fallbacks), ops)


def _strict_check(substitute: MarkerSubstitute, strict: bool) -> None:
    if strict and substitute.fallbacks:
        details = "; ".join(f"layer '{name}': {reason}" for name, reason in substitute.fallbacks.items())
        raise StrictExportError(f"--strict: not every recurrent layer can be fused: {details}")


def _convert_checked(
    fn: Callable[..., dict[str, Any]],
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    substitute: MarkerSubstitute,
    opset: int,
    strict: bool,
) -> OnnxResult:
    try:
        result = convert(fn, inputs, outputs, substitute, opset)
    except Exception as error:
        _strict_check(substitute, strict)  # the fallback may be why conversion failed
        if substitute.fallbacks:
            details = "; ".join(f"layer '{name}': {reason}" for name, reason in substitute.fallbacks.items())
            raise ValueError(
                f"ONNX conversion failed; these layers could not be fused and tf2onnx's loop fallback for them "
                f"may be the cause ({details}): {str(error).splitlines()[0]}"
            ) from error
        raise
    _strict_check(substitute, strict)
    return result


def to_onnx(model: Any, io: ModelIO, opset: int = 17, strict: bool = False) -> OnnxResult:
    """The full model as ONNX (dynamic batch and time axes, the model's own names)."""
    names = io.input_names

    def fn(*tensors: Any) -> dict[str, Any]:
        return io.call(model, dict(zip(names, tensors)))

    substitute = MarkerSubstitute(fallbacks=unswapped_native_layers(model))
    with flattened_time_distributed(model):
        return _convert_checked(fn, io.inputs, io.outputs, substitute, opset, strict)


def to_onnx_step(model: Any, io: ModelIO, plan: StreamingPlan, opset: int = 17, strict: bool = False) -> OnnxResult:
    """The streaming step graph as ONNX: model inputs + ``*_in`` states -> outputs + ``*_out`` states."""
    substitute = MarkerSubstitute(fallbacks=unswapped_native_layers(model))

    def with_states(initial: dict[str, list[Any]]) -> MarkerSubstitute:
        substitute.state_io = initial
        return substitute

    fn = step_function(model, io, plan, with_states)
    with flattened_time_distributed(model):
        return _convert_checked(fn, plan.step_inputs(io), io.outputs + plan.state_outputs(), substitute, opset, strict)


def to_onnx_encoder(pair: EncoderDecoder, opset: int = 17, strict: bool = False) -> OnnxResult:
    """The encoder graph of an encoder-decoder model: source inputs -> the decoder's ``*_in`` states."""
    substitute = MarkerSubstitute(fallbacks=unswapped_native_layers(pair.encoder))
    with flattened_time_distributed(pair.encoder):
        return _convert_checked(pair.encoder_function(), pair.source, pair.encoder_outputs(), substitute, opset, strict)
