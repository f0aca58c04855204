"""The decoder step graph of an encoder-decoder model, made to run under Triton's sequence batcher.

Triton keeps a sequence's state itself (implicit state), but the first value of an implicit
state can only be zeros or a file: it cannot come from an encoder. So the ``<name>_decoder_step``
Triton model runs a wrapper of ``decoder_step.onnx`` with, per state, two inputs:

- ``<layer>_h_in`` (``_c_in``): explicit, sent by the client: the ``<name>_encoder`` model's
  output of that name (same names, so the encoder's response is passed on as is);
- ``<layer>_h_carry``: Triton's implicit state, the previous request's ``<layer>_h_out``;

and the control input ``START`` (Triton's ``CONTROL_SEQUENCE_START``, 1 on a sequence's first
request). The decoder runs from ``where(START, <layer>_h_in, <layer>_h_carry)``: the encoder's
states on the first request, the carried ones after it (the explicit inputs are then ignored).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import onnx
from onnx import TensorProto, helper

START = "START"  # Triton's control input for CONTROL_SEQUENCE_START (int32 0/1, shape [batch, 1])
CARRY_SUFFIX = "_carry"


def carry_name(state_input: str) -> str:
    """The implicit-state input that carries `state_input` (``dec_h_in`` -> ``dec_h_carry``)."""
    stem = state_input[: -len("_in")] if state_input.endswith("_in") else state_input
    return stem + CARRY_SUFFIX


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def seeded_decoder_step(model: onnx.ModelProto, state_inputs: Sequence[str]) -> onnx.ModelProto:
    """A copy of the decoder step graph `model` whose states `state_inputs` are taken from the
    explicit inputs when ``START`` is 1 and from the implicit-state ``*_carry`` inputs otherwise."""
    seeded = onnx.ModelProto()
    seeded.CopyFrom(model)
    graph = seeded.graph
    by_name = {value.name: value for value in graph.input}
    missing = [name for name in state_inputs if name not in by_name]
    if missing:
        raise ValueError(f"the decoder step graph has no state inputs {missing}; its inputs are {list(by_name)}")
    taken = {value.name for value in graph.input} | {value.name for value in graph.output}
    chosen = {name: f"{name}__seeded" for name in state_inputs}
    clashes = sorted(({START} | {carry_name(n) for n in state_inputs} | set(chosen.values())) & taken)
    if clashes:
        raise ValueError(f"the decoder step graph already uses the names {clashes}")
    for sub in _graphs(graph):  # the graph's consumers read the chosen state
        for node in sub.node:
            for index, name in enumerate(node.input):
                if name in chosen:
                    node.input[index] = chosen[name]
    start_flag = "START__flag"
    nodes = [helper.make_node("Cast", [START], [start_flag], to=TensorProto.BOOL, name="seed_start_flag")]
    for name in state_inputs:
        carry = onnx.ValueInfoProto()
        carry.CopyFrom(by_name[name])
        carry.name = carry_name(name)
        graph.input.append(carry)
        nodes.append(helper.make_node("Where", [start_flag, name, carry.name], [chosen[name]], name=f"seed_{name}"))
    graph.input.append(helper.make_tensor_value_info(START, TensorProto.INT32, ["batch", 1]))
    for node in reversed(nodes):  # before every consumer (nodes are kept in topological order)
        graph.node.insert(0, node)
    onnx.checker.check_model(seeded)
    return seeded


def write_seeded_decoder_step(source: str, target: str, state_inputs: Sequence[str]) -> None:
    """Read ``decoder_step.onnx`` at `source`, write its Triton wrapper to `target`."""
    model = onnx.load(source)
    with open(target, "wb") as handle:
        handle.write(seeded_decoder_step(model, state_inputs).SerializeToString())
