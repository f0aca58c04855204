"""Replace each rnnkit marker node in an ONNX graph with a fused LSTM / GRU / RNN op.

Per marker (inputs ``[x (B,T,F), mask (B,T) bool?, *initial_states]``):

1. Masks of any shape (right padding, left padding, holes) are handled by compaction: the
   valid steps of each row are moved to the front in order (TopK over ``(1-m)*T + t``), the
   fused op runs with ``sequence_lens = sum(m)``, and outputs are scattered back to Keras's
   conventions (carry-forward or zeros at masked steps, reversed order for go_backwards).
2. ``X`` is transposed to time-major (ORT's CPU kernels do not take layout=1).
3. Outputs are assembled exactly as Keras returns them (merge modes, last output, states;
   with initial states and a length-0 row, the state is the initial state as in Keras).

The op's weights come from ``rnnkit_export.onnx.converters``; this module only wires tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnkit_export.onnx.converters.registry import ACTIVATIONS
from rnnkit_export.onnx.marker import MARKER_PREFIX, LayerPlan, MarkerRecord

MARKER_DOMAIN = "rnnkit.marker"
_ALPHA_USERS = {"LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu", "Affine"}
_BETA_USERS = {"ScaledTanh", "HardSigmoid", "Affine"}
_INT64_MIN = np.iinfo(np.int64).min


class GraphBuilder:
    """Collects nodes and initializers with names derived from one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, hint: str, value: Any, dtype: Any = None) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1, **attrs: Any) -> Any:
        names = [self.fresh(f"{hint or op_type}_out{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(hint or op_type), **attrs))
        return names[0] if outputs == 1 else names

    def ints(self, values: list[int]) -> str:
        return self.const("axes", np.asarray(values, np.int64))


def _activation_attributes(keys: list[str]) -> dict[str, Any]:
    names, alphas, betas = [], [], []
    for key in keys:
        onnx_name, alpha, beta = ACTIVATIONS[key]
        names.append(onnx_name)
        if onnx_name in _ALPHA_USERS:
            alphas.append(alpha)
        if onnx_name in _BETA_USERS:
            betas.append(beta)
    attrs: dict[str, Any] = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


def _stack(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    if arrays[0] is None:
        return None
    return np.stack([np.asarray(a, np.float32) for a in arrays], axis=0)


@dataclass(frozen=True)
class _Compaction:
    """A masked layer's sequence with its valid steps moved to the front of each row.

    ``x``: the compacted (batch-major) sequence; ``lengths`` (int32, ``(B,)``): valid steps per
    row, the fused op's ``sequence_lens``; ``mask_int`` (int32, ``(B, T)``): the mask as numbers.
    """

    x: str
    lengths: str
    mask_int: str


def _compact(b: GraphBuilder, x: str, mask: str) -> _Compaction:
    """Move the valid steps of each row to the front, in order: TopK (ascending) over the key
    ``(1 - m) * T + t`` orders valid steps by time, then invalid ones."""
    mask_int = b.op("Cast", [mask], "mask_int32", to=TensorProto.INT32)
    lengths = b.op("ReduceSum", [mask_int, b.ints([1])], "lengths", keepdims=0)
    shape_x = b.op("Shape", [x], "shape_x")
    steps = b.op("Gather", [shape_x, b.const("one", np.int64(1))], "steps", axis=0)
    time_index = b.op("Range", [b.const("zero", np.int64(0)), steps, b.const("one", np.int64(1))], "t")
    mask64 = b.op("Cast", [mask], "mask_int64", to=TensorProto.INT64)
    invalid = b.op("Sub", [b.const("one", np.int64(1)), mask64], "invalid")
    key = b.op("Add", [b.op("Mul", [invalid, steps]), time_index], "compaction_key")
    k = b.op("Unsqueeze", [steps, b.ints([0])], "k")
    _, order = b.op("TopK", [key, k], "compaction_order", outputs=2, axis=1, largest=0, sorted=1)
    order3 = b.op("Expand", [b.op("Unsqueeze", [order, b.ints([2])]), shape_x], "order3")
    compacted = b.op("GatherElements", [x, order3], "compacted_x", axis=1)
    return _Compaction(compacted, lengths, mask_int)


def _initial_states_by_direction(initial: list[str], plan: LayerPlan) -> list[list[str]]:
    """The marker's initial-state inputs (direction-major: all states of direction 0, then 1)
    grouped per direction; empty when the layer has none."""
    per_dir = plan.directions[0].n_states
    return [initial[d * per_dir : (d + 1) * per_dir] for d in range(len(plan.directions))] if initial else []


def _fused_inputs(
    b: GraphBuilder, plan: LayerPlan, x_tbf: str, lengths: str, init_by_dir: list[list[str]]
) -> list[str]:
    """The fused op's inputs ``X, W, R, B, sequence_lens, initial_h[, initial_c, P]``: the weights
    of every direction stacked on a leading direction axis (as the converters laid them out),
    initial states stacked likewise; trailing absent optional inputs are dropped."""
    dirs = len(plan.directions)
    W = b.const("W", _stack([d.W for d in plan.directions]))
    R = b.const("R", _stack([d.R for d in plan.directions]))
    bias = _stack([d.B for d in plan.directions])
    peep = _stack([d.P for d in plan.directions])
    op_inputs = [x_tbf, W, R, b.const("B", bias) if bias is not None else "", lengths]
    for s in range(plan.directions[0].n_states):
        if init_by_dir:
            parts = [b.op("Unsqueeze", [init_by_dir[d][s], b.ints([0])]) for d in range(dirs)]
            op_inputs.append(parts[0] if dirs == 1 else b.op("Concat", parts, f"initial_{s}", axis=0))
        else:
            op_inputs.append("")
    if plan.directions[0].op_type == "LSTM":
        op_inputs.append(b.const("P", peep) if peep is not None else "")
    while op_inputs and op_inputs[-1] == "":
        op_inputs.pop()
    return op_inputs


def _fused_node(b: GraphBuilder, plan: LayerPlan, op_inputs: list[str]) -> tuple[str, list[str]]:
    """The fused LSTM / GRU / RNN node; returns ``Y`` (time-major ``(T, dirs, B, H)``) and the
    final states (``Y_h``, and ``Y_c`` for LSTM: ``(dirs, B, H)``)."""
    first = plan.directions[0]
    n_op_out = 3 if first.op_type == "LSTM" else 2
    op_outputs = b.op(
        first.op_type,
        op_inputs,
        first.op_type.lower(),
        outputs=n_op_out,
        hidden_size=first.hidden_size,
        direction=plan.direction,
        **_activation_attributes(first.activations * len(plan.directions)),
        **first.attributes,
    )
    return op_outputs[0], op_outputs[1:]


def _zero(b: GraphBuilder) -> str:
    return b.const("zero_f", np.float32(0.0))


def _uncompact(
    b: GraphBuilder, plan: LayerPlan, yb: str, mask: str, compaction: _Compaction, carried_in: str | None = None
) -> str:
    """Scatter the compacted per-step outputs ``yb`` ``(B, T, dirs, H)`` back to the original steps,
    with Keras's value at masked steps: the last output carried forward (the next valid one for
    go_backwards, in processing order), or zeros (bidirectional, ``zero_output_for_mask``).

    `carried_in` ``(B, H)``: the output carried into this call, for masked steps before its first
    valid one (a streaming step graph: the previous chunk's last output is its ``h`` state, which
    the full sequence would carry here; zeros when nothing was seen yet, as the state then is)."""
    mask_int, lengths = compaction.mask_int, compaction.lengths
    cumulative = b.op("CumSum", [mask_int, b.const("axis", np.int32(1))], "valid_so_far")
    one_i = b.const("one_i", np.int32(1))
    zero_i = b.const("zero_i", np.int32(0))
    last_seen = b.op("Max", [b.op("Sub", [cumulative, one_i]), zero_i], "last_seen")
    carry = len(plan.directions) == 1 and not plan.zero_output_for_mask
    if carry and plan.direction == "forward":
        index, valid = last_seen, b.op("Greater", [cumulative, zero_i], "seen_any")
    elif carry:  # go_backwards: the next valid step (already processed) is carried
        nxt = b.op("Sub", [cumulative, mask_int], "next_valid")
        lengths2 = b.op("Unsqueeze", [lengths, b.ints([1])])
        valid = b.op("Less", [nxt, lengths2], "processed_any")
        index = b.op("Min", [nxt, b.op("Max", [b.op("Sub", [lengths2, one_i]), zero_i])], "next_clipped")
    else:
        index, valid = last_seen, mask
    index4 = b.op("Unsqueeze", [b.op("Cast", [index], to=TensorProto.INT64), b.ints([2, 3])])
    index4 = b.op("Expand", [index4, b.op("Shape", [yb])], "scatter_index")
    gathered = b.op("GatherElements", [yb, index4], "uncompacted", axis=1)
    valid4 = b.op("Unsqueeze", [valid, b.ints([2, 3])])
    before_first = _zero(b) if carried_in is None else b.op("Unsqueeze", [carried_in, b.ints([1, 2])], "carried_in")
    return b.op("Where", [valid4, gathered, before_first], "masked_sequence")


def _sequence_outputs(
    b: GraphBuilder,
    plan: LayerPlan,
    Y: str,
    mask: str | None,
    compaction: _Compaction | None,
    carried_in: str | None = None,
) -> list[str]:
    """``return_sequences``: the per-step output(s) ``(B, T, H)`` as Keras returns them (masked steps
    restored, go_backwards in processing order, bidirectional merged)."""
    yb = b.op("Transpose", [Y], "y_batch_major", perm=[2, 0, 1, 3])  # (B, T, dirs, H)
    if mask is not None and compaction is not None:
        yb = _uncompact(b, plan, yb, mask, compaction, carried_in)
    if len(plan.directions) > 1:
        return _merge(b, yb, plan.merge_mode, axis=2)
    seq = b.op("Squeeze", [yb, b.ints([2])], "sequence")
    if plan.direction == "reverse":  # Keras returns go_backwards outputs in processing order
        seq = b.op(
            "Slice",
            [seq, b.ints([-1]), b.ints([int(_INT64_MIN)]), b.ints([1]), b.ints([-1])],
            "processing_order",
        )
    return [seq]


def _last_outputs(
    b: GraphBuilder, plan: LayerPlan, final_h: str, mask: str | None, lengths: str = "", carried_in: str | None = None
) -> list[str]:
    """Not ``return_sequences``: the last output(s) ``(B, H)`` from the final hidden state (zeros
    where Keras's ``zero_output_for_mask`` masks the last processed step; bidirectional merged).
    `carried_in`: the output carried into the call, for rows without a valid step (see `_uncompact`)."""
    if len(plan.directions) > 1:
        both = b.op("Transpose", [final_h], "last_both", perm=[1, 0, 2])  # (B, 2, H)
        return _merge(b, both, plan.merge_mode, axis=1)
    last = b.op("Squeeze", [final_h, b.ints([0])], "last_output")
    if carried_in is not None and mask is not None and lengths:
        ran = b.op("Unsqueeze", [b.op("Greater", [lengths, b.const("zero_i", np.int32(0))]), b.ints([1])], "row_ran")
        last = b.op("Where", [ran, last, carried_in], "last_or_carried")
    if plan.zero_output_for_mask and mask is not None:
        position = -1 if plan.direction == "forward" else 0
        last_valid = b.op("Gather", [mask, b.const("pos", np.int64(position))], "last_step_valid", axis=1)
        last = b.op("Where", [b.op("Unsqueeze", [last_valid, b.ints([1])]), last, _zero(b)], "last_zeroed")
    return [last]


def _state_outputs(
    b: GraphBuilder, plan: LayerPlan, final: list[str], lengths: str, init_by_dir: list[list[str]]
) -> list[str]:
    """``return_state``: each direction's final states ``(B, H)``, direction-major; a row of length
    0 keeps its given initial state, as in Keras."""
    keep_initial = None
    if init_by_dir and lengths:
        keep_initial = b.op(
            "Unsqueeze", [b.op("Greater", [lengths, b.const("zero_i", np.int32(0))]), b.ints([1])], "ran"
        )
    outputs = []
    for d in range(len(plan.directions)):
        for s in range(plan.directions[0].n_states):
            state = b.op("Gather", [final[s], b.const("dir", np.int64(d))], f"state_{d}_{s}", axis=0)
            if keep_initial is not None:
                state = b.op("Where", [keep_initial, state, init_by_dir[d][s]], f"state_or_initial_{d}_{s}")
            outputs.append(state)
    return outputs


def build_fused(b: GraphBuilder, record: MarkerRecord, inputs: list[str]) -> list[str]:
    """Emit the nodes for one marker; return the names carrying the marker's outputs.

    Phases: mask compaction (masked layers) -> time-major ``X`` -> the fused node's inputs
    (weights, biases, initial states per direction) -> the fused node -> the outputs Keras
    returns (sequence or last output, then states)."""
    plan: LayerPlan = record.plan
    x = inputs[0]
    mask = inputs[1] if record.has_mask else None
    init_by_dir = _initial_states_by_direction(inputs[1 + int(record.has_mask) :], plan)

    compaction = _compact(b, x, mask) if mask is not None else None
    lengths = compaction.lengths if compaction is not None else ""
    x_tbf = b.op("Transpose", [compaction.x if compaction else x], "x_time_major", perm=[1, 0, 2])
    Y, final = _fused_node(b, plan, _fused_inputs(b, plan, x_tbf, lengths, init_by_dir))

    # a streamed forward layer (a step graph) carries its previous output, the h state, into masked steps
    # before the chunk's first valid one, as the whole sequence would. (A full graph given an initial state
    # does not: Keras starts masked outputs from zeros whatever the initial state.)
    carries = plan.streamed and plan.direction == "forward" and not plan.zero_output_for_mask
    carried_in = init_by_dir[0][0] if carries and init_by_dir else None
    if plan.return_sequences:
        outputs = _sequence_outputs(b, plan, Y, mask, compaction, carried_in)
    else:
        outputs = _last_outputs(b, plan, final[0], mask, lengths, carried_in)
    if plan.return_state:
        outputs += _state_outputs(b, plan, final, lengths, init_by_dir)
    return outputs


def _merge(b: GraphBuilder, both: str, merge_mode: str | None, axis: int) -> list[str]:
    """Merge the direction axis (size 2) of `both` as Keras's Bidirectional does."""
    if merge_mode == "concat":
        shape = [0, 0, -1] if axis == 2 else [0, -1]
        return [b.op("Reshape", [both, b.ints(shape)], "concat")]
    forward = b.op("Gather", [both, b.const("fwd", np.int64(0))], "forward", axis=axis)
    backward = b.op("Gather", [both, b.const("bwd", np.int64(1))], "backward", axis=axis)
    if merge_mode is None:
        return [forward, backward]
    if merge_mode == "mul":
        return [b.op("Mul", [forward, backward], "mul")]
    total = b.op("Add", [forward, backward], "sum")
    if merge_mode == "ave":
        total = b.op("Mul", [total, b.const("half", np.float32(0.5))], "ave")
    return [total]


_KEY = re.compile(re.escape(MARKER_PREFIX) + r"(m\d+)")


def splice_markers(model: onnx.ModelProto, records: dict[str, MarkerRecord]) -> list[str]:
    """Replace every marker node in place; return the op types inserted (in order)."""
    graph = model.graph
    new_nodes: list[onnx.NodeProto] = []
    inserted: list[str] = []
    for node in graph.node:
        match = _KEY.search(node.name) if node.domain == MARKER_DOMAIN else None
        if node.domain == MARKER_DOMAIN and match is None:
            raise ValueError(f"marker node {node.name!r} carries no rnnkit key")
        if match is None:
            new_nodes.append(node)
            continue
        record = records.get(match.group(1))
        if record is None:
            raise ValueError(f"marker node {node.name!r} has no record (was it traced in another export?)")
        if len(node.output) != record.n_outputs:
            raise ValueError(f"marker {node.name!r}: {len(node.output)} outputs, expected {record.n_outputs}")
        builder = GraphBuilder(record.plan.layer_name)
        results = build_fused(builder, record, list(node.input))
        for result, wanted in zip(results, node.output):
            builder.nodes.append(helper.make_node("Identity", [result], [wanted], name=builder.fresh("out")))
        new_nodes.extend(builder.nodes)
        graph.initializer.extend(builder.initializers)
        inserted.append(record.plan.directions[0].op_type)
    del graph.node[:]
    graph.node.extend(new_nodes)
    leftover = [n.name for n in graph.node if n.domain == MARKER_DOMAIN]
    if leftover:
        raise ValueError(f"markers left after splicing: {leftover}")
    kept = [o for o in model.opset_import if o.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return inserted
