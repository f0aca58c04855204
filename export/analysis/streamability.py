"""Whether a model can be streamed chunk by chunk, decided from its functional graph.

Chunked execution equals the full sequence only when every layer between the inputs and the
outputs computes each time step on its own (Dense on the feature axis, Embedding, Masking,
elementwise ops, normalisation over features, TimeDistributed...) or is a forward recurrent
layer whose state the step graph carries. Every tensor of the graph gets a kind:

- ``per_step``: has a time axis (axis 1) whose step t depends on steps <= t only;
- ``static``: does not depend on any sequence input (a side input, a constant);
- ``whole``: depends on a whole sequence (a recurrent layer's final output or state);
- ``state``: an encoder's state handed to a decoder (only while checking a decoder).

A layer that mixes time steps (Conv1D, pooling, attention, Bidirectional, Flatten...) applied
to a ``per_step`` tensor, a ``whole`` tensor combined with ``per_step`` ones, or a layer of
unknown behaviour makes the model non-streamable; the verdict names the layer and the reason.
A recurrent layer whose initial state is computed from another input is an encoder-decoder
cut: the model then streams as an encoder graph plus a decoder step graph (``step.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras

PER_STEP, STATIC, WHOLE, STATE = "per_step", "static", "whole", "state"

L = keras.layers
# Layers that compute each time step from that step alone, whatever their configuration.
_PER_STEP_LAYERS: tuple[type, ...] = (
    L.Dense,
    L.Embedding,
    L.Masking,
    L.Activation,
    L.Dropout,
    L.SpatialDropout1D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Identity,
    L.ReLU,
    L.LeakyReLU,
    L.PReLU,
    L.ELU,
    L.Rescaling,
    L.Add,
    L.Subtract,
    L.Multiply,
    L.Average,
    L.Maximum,
    L.Minimum,
    L.TimeDistributed,  # applies its layer to every step separately, by definition
    L.InputLayer,
)
# Layers that are per-step when their `axis` leaves the batch and time axes alone.
_AXIS_LAYERS: tuple[type, ...] = (
    L.Softmax,
    L.Concatenate,
    L.LayerNormalization,
    L.UnitNormalization,
    L.BatchNormalization,
)
_CONV_1D: tuple[type, ...] = (L.Conv1D, L.SeparableConv1D, L.DepthwiseConv1D, L.Conv1DTranspose)
# Known time-mixing layers and why they mix time.
_TIME_MIXING: tuple[tuple[tuple[type, ...], str], ...] = (
    ((L.MaxPooling1D, L.AveragePooling1D), "pools over neighbouring time steps"),
    ((L.GlobalMaxPooling1D, L.GlobalAveragePooling1D), "reduces over the whole time axis"),
    ((L.Attention, L.AdditiveAttention, L.MultiHeadAttention, L.GroupQueryAttention), "attends across time steps"),
    ((L.Flatten,), "flattens the time axis into features"),
    ((L.Cropping1D, L.ZeroPadding1D, L.UpSampling1D), "shifts or resizes the time axis"),
    ((L.GroupNormalization,), "normalises over the time axis"),
    ((L.Bidirectional,), "is bidirectional (its backward direction starts at the last step)"),
)
# keras.ops operations that act elementwise (broadcasting never mixes time steps).
_ELEMENTWISE_OPS = frozenset(
    """Abs Absolute Add Cast Ceil Clip Cos Cosh Divide DivideNoNan Equal Exp Exp2 Expm1 Floor FloorDivide
    Greater GreaterEqual Isfinite Isinf Isnan Less LessEqual Log Log10 Log1p Log2 LogicalAnd LogicalNot LogicalOr
    LogicalXor Maximum Minimum Mod Multiply Negative NotEqual Power Reciprocal Round Sign Sin Sinh Sqrt Square
    Subtract Tan Tanh TrueDivide Where ZerosLike OnesLike NanToNum Celu Elu Gelu HardSigmoid HardSilu HardTanh
    LeakyRelu LogSigmoid Relu Relu6 Selu Sigmoid Silu Softplus Softsign Squareplus TanhShrink Threshold
    SoftShrink HardShrink SparsePlus SparseSigmoid Identity StopGradient""".split()
)
# keras.ops operations that are per-step when their `axis` leaves the batch and time axes alone.
_AXIS_OPS = frozenset(
    """All Any Amax Amin Max Min Mean Sum Prod Std Var Argmax Argmin Softmax LogSoftmax Concatenate Normalize
    Cumsum Cumprod LayerNorm RMSNorm Sparsemax Glu""".split()
)


class _Blocked(Exception):
    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(reason)
        self.layer = layer
        self.reason = reason


@dataclass
class Cut:
    """A recurrent layer whose initial state comes from elsewhere (an encoder, a side input)."""

    layer: Any
    states: list[Any]  # the KerasTensors passed as initial_state


@dataclass
class Verdict:
    streamable: bool
    reason: str | None = None
    layer: str | None = None  # the layer that prevents streaming
    cuts: list[Cut] = field(default_factory=list)
    kinds: dict[int, str] = field(default_factory=dict)  # id(KerasTensor) -> kind
    reached_inputs: list[Any] = field(default_factory=list)  # the seed tensors the outputs depend on


def _graph_of(model: Any) -> Any:
    return getattr(model, "_functional", None) or model


def _flat_tensors(value: Any) -> list[Any]:
    return [t for t in keras.tree.flatten(value) if isinstance(t, keras.KerasTensor)]


def _producer(tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise _Blocked("", f"tensor {tensor.name!r} has no Keras history (not part of a functional graph)")
    operation, node_index, _ = history
    return operation._inbound_nodes[node_index]


def _topological(outputs: list[Any], seeds: dict[int, str]) -> tuple[list[Any], list[Any]]:
    """Nodes between the seeds and `outputs` in execution order, and the seed tensors reached."""
    order: list[Any] = []
    seen: set[int] = set()
    reached: dict[int, Any] = {}
    stack: list[tuple[Any, bool]] = []
    for tensor in reversed(outputs):
        if id(tensor) in seeds:
            reached[id(tensor)] = tensor
        else:
            stack.append((_producer(tensor), False))
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for tensor in reversed(node.input_tensors):
            if id(tensor) in seeds:
                reached[id(tensor)] = tensor
            else:
                stack.append((_producer(tensor), False))
    return order, list(reached.values())


def _axes_leave_time(axis: Any, rank: int) -> bool:
    if axis is None:
        return False
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return all(isinstance(a, int) and a % max(rank, 1) >= 2 for a in axes)


def _einsum_per_step(equation: str) -> bool:
    """EinsumDense keeps time steps apart when the input's time letter passes straight through."""
    try:
        left, out = equation.replace(" ", "").split("->")
        source, kernel = left.split(",")
    except ValueError:
        return False
    if len(source) < 2 or source[0] == "." or "." in source[:2]:
        return False
    time = source[1]
    return time in out and out.index(time) == 1 and time not in kernel and out[0] == source[0]


def _reshape_per_step(layer: Any, shape: Any) -> bool:
    target = list(layer.target_shape)
    features = list(shape[2:])
    if not target or target[0] not in (-1, None) or None in features or None in target[1:] or -1 in target[1:]:
        return False
    size = 1
    for d in features:
        size *= int(d)
    wanted = 1
    for d in target[1:]:
        wanted *= int(d)
    return size == wanted


def _why_not_per_step(operation: Any, node: Any) -> str | None:
    """None when `operation` computes every time step on its own; else why it does not."""
    kind = type(operation).__name__
    first = node.input_tensors[0] if node.input_tensors else None
    rank = len(first.shape) if first is not None else 0
    if isinstance(operation, _PER_STEP_LAYERS):
        return None
    if isinstance(operation, _AXIS_LAYERS):
        axis = getattr(operation, "axis", -1)
        return None if _axes_leave_time(axis, rank) else f"normalises or concatenates over axis {axis!r}"
    if any(isinstance(operation, kind) for kind in _CONV_1D):
        kernel, strides = tuple(operation.kernel_size), tuple(operation.strides)
        if kernel == (1,) and strides == (1,) and isinstance(operation, L.Conv1D):
            return None
        return f"convolves over time (kernel_size {kernel[0]}, strides {strides[0]})"
    if isinstance(operation, L.EinsumDense):
        equation = operation.equation
        return None if _einsum_per_step(equation) else f"contracts or moves the time axis (equation {equation!r})"
    if isinstance(operation, L.Reshape):
        if first is not None and _reshape_per_step(operation, first.shape):
            return None
        return f"reshapes across the time axis (target_shape {tuple(operation.target_shape)})"
    if isinstance(operation, L.Permute):
        return None if tuple(operation.dims)[:1] == (1,) else f"moves the time axis (dims {tuple(operation.dims)})"
    for classes, why in _TIME_MIXING:
        if isinstance(operation, classes):
            return why
    module = type(operation).__module__
    if module.startswith("keras.src.ops."):
        if kind in _ELEMENTWISE_OPS:
            return None
        if kind in _AXIS_OPS:
            axis = getattr(operation, "axis", None)
            return None if _axes_leave_time(axis, rank) else f"works along axis {axis!r}"
    if isinstance(operation, L.Lambda):
        return "is a Lambda layer, whose effect on the time axis cannot be known"
    return "is not known to compute each time step on its own"


def _recurrent_kinds(operation: Any, node: Any, kinds: dict[int, str], cuts: list[Cut]) -> list[str]:
    """Output kinds of a recurrent layer call (rnnkit or Keras RNN, StackedRNN)."""
    name = operation.name
    args, kwargs = node.arguments.args, node.arguments.kwargs
    sequence = args[0] if args else kwargs.get("sequences", kwargs.get("inputs"))
    if isinstance(sequence, (list, tuple)):  # Keras 2 style [x, *initial_states]
        sequence = sequence[0]
    initial = _flat_tensors(kwargs.get("initial_state"))
    if getattr(operation, "stateful", False):
        raise _Blocked(name, f"layer '{name}' is stateful (stateful=True); export its states explicitly")
    if getattr(operation, "go_backwards", False):
        raise _Blocked(name, f"layer '{name}' runs backwards (go_backwards=True): its first output needs the last step")
    if getattr(operation, "bidirectional", False):  # StackedRNN(bidirectional=True)
        raise _Blocked(name, f"layer '{name}' is bidirectional (its backward direction starts at the last step)")
    sequence_kind = kinds[id(sequence)] if isinstance(sequence, keras.KerasTensor) else STATIC
    if sequence_kind == WHOLE:
        raise _Blocked(name, f"layer '{name}' reads a sequence that depends on a whole input sequence")
    if sequence_kind == STATE:
        raise _Blocked(name, f"layer '{name}' reads an encoder state as its sequence")
    if initial:
        initial_kinds = {kinds[id(t)] for t in initial}
        if initial_kinds != {STATE}:
            cuts.append(Cut(operation, initial))
    elif any(kinds[id(t)] == STATE for t in node.input_tensors):
        raise _Blocked(name, f"layer '{name}' uses an encoder state other than as its initial state")
    main = PER_STEP if getattr(operation, "return_sequences", False) else WHOLE
    if sequence_kind == STATIC:
        main = STATIC if not initial else WHOLE
    return [main] + [WHOLE] * (len(node.outputs) - 1)


def _is_recurrent(operation: Any) -> bool:
    from rnnkit.layers import StackedRNN

    return isinstance(operation, (L.RNN, StackedRNN)) and not isinstance(operation, L.Bidirectional)


def _node_kinds(node: Any, kinds: dict[int, str], cuts: list[Cut]) -> list[str]:
    operation = node.operation
    name = getattr(operation, "name", type(operation).__name__)
    incoming = [kinds[id(t)] for t in node.input_tensors]
    if _is_recurrent(operation):
        return _recurrent_kinds(operation, node, kinds, cuts)
    if STATE in incoming:
        raise _Blocked(name, f"layer '{name}' uses an encoder state other than as a recurrent layer's initial state")
    if isinstance(operation, keras.Model):
        return _nested_kinds(operation, node, kinds, cuts)
    if PER_STEP not in incoming:
        return [WHOLE if WHOLE in incoming else STATIC] * len(node.outputs)
    why = _why_not_per_step(operation, node)
    if why is not None:
        raise _Blocked(name, f"layer '{name}' ({type(operation).__name__}) {why}")
    if WHOLE in incoming:
        raise _Blocked(
            name,
            f"layer '{name}' ({type(operation).__name__}) combines per-step values with a value that depends on "
            "a whole sequence",
        )
    return [PER_STEP] * len(node.outputs)


def _nested_kinds(model: Any, node: Any, kinds: dict[int, str], cuts: list[Cut]) -> list[str]:
    graph = _graph_of(model)
    inner_inputs = _flat_tensors(graph.inputs)
    inner_outputs = _flat_tensors(graph.outputs)
    outer = node.input_tensors
    if len(inner_inputs) != len(outer):
        raise _Blocked(model.name, f"nested model '{model.name}' is called with a structure export cannot follow")
    seeds = {id(i): kinds[id(o)] for i, o in zip(inner_inputs, outer)}
    inner_kinds = _propagate(inner_outputs, seeds, cuts)[0]
    return [inner_kinds[id(t)] for t in inner_outputs]


def _propagate(outputs: list[Any], seeds: dict[int, str], cuts: list[Cut]) -> tuple[dict[int, str], list[Any]]:
    order, reached = _topological(outputs, seeds)
    kinds = dict(seeds)
    for node in order:
        if getattr(node, "is_input", False):
            for tensor in node.outputs:
                kinds.setdefault(id(tensor), input_kind(tensor))
            continue
        for tensor, kind in zip(node.outputs, _node_kinds(node, kinds, cuts)):
            kinds[id(tensor)] = kind
    return kinds, reached


def input_kind(tensor: Any) -> str:
    """A model input is a sequence when its axis 1 is dynamic; anything else is a side input."""
    shape = tuple(tensor.shape)
    return PER_STEP if len(shape) >= 2 and shape[1] is None else STATIC


def analyze(model: Any, state_seeds: list[Any] | None = None) -> Verdict:
    """The streaming verdict for `model` (a functional or sequential Keras model).

    ``state_seeds``: tensors inside the graph to treat as given encoder states (decoder check).
    """
    graph = _graph_of(model)
    inputs = _flat_tensors(graph.inputs)
    outputs = _flat_tensors(graph.outputs)
    seeds = {id(t): input_kind(t) for t in inputs}
    seeds.update({id(t): STATE for t in state_seeds or []})
    cuts: list[Cut] = []
    try:
        kinds, reached = _propagate(outputs, seeds, cuts)
    except _Blocked as blocked:
        return Verdict(
            False, blocked.reason + ": chunk-by-chunk execution would differ from the full run", blocked.layer
        )
    if not any(kinds[id(t)] == PER_STEP for t in inputs):
        return Verdict(False, "no input has a dynamic time axis (axis 1), so there is nothing to cut into chunks")
    for tensor in outputs:
        if kinds[id(tensor)] == STATE:
            return Verdict(False, "an encoder state is itself a model output", None)
    if cuts:
        names = [c.layer.name for c in cuts]
        return Verdict(
            False,
            f"layer '{names[0]}' starts from an initial state computed from other inputs; a step graph starting "
            "from carried states would differ from the full run",
            names[0],
            cuts,
            kinds,
            reached,
        )
    return Verdict(True, None, None, [], kinds, reached)
