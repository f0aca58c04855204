"""Streaming: RNN state carried between chunks of one sequence, through a version's step graph.

A model exported with a ``step`` graph takes one chunk plus the recurrent states
(``<layer>_h_in``, ``<layer>_c_in``) and returns the chunk's outputs plus the next states
(``*_out``). :class:`StepGraph` is what a :class:`~serving.predictor.Predictor` publishes of
that graph (:meth:`~serving.predictor.Predictor.step_graph`): the state pairs, the chunk
signature, the outputs to return, the backend that runs a step and the request limits. A
:class:`Session` owns the states of one sequence, so feeding a sequence in chunks gives the
outputs of one full request::

    with predictor.session() as s:
        for chunk in chunks:
            y = s.step({"x": chunk})["y"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from serving.backend import Backend
from serving.errors import Code, ServingError, invalid_argument
from serving.signature import Limits, Signature, StatePair, validate


@dataclass(frozen=True)
class StepGraph:
    """The public face of a version's ``step`` graph."""

    model: str  # model name and version, for messages
    version: int
    states: tuple[StatePair, ...]  # fed as `input`, returned as `output` for the next chunk
    chunk_signature: Signature  # the step inputs a client sends (the states left out)
    output_names: tuple[str, ...]  # the step outputs a client gets (the states left out)
    backend: Backend  # runs one step: chunk + states -> outputs + next states
    limits: Limits


class Session:
    """One sequence streamed through a step graph; not thread-safe (one caller at a time)."""

    def __init__(self, graph: StepGraph) -> None:
        self.graph = graph
        self._states: dict[str, np.ndarray] | None = None
        self.closed = False

    @property
    def states(self) -> dict[str, np.ndarray]:
        """The states the next chunk starts from, by input name (empty before the first chunk)."""
        return dict(self._states or {})

    def step(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one chunk (the model's inputs, batch x chunk_steps x ...); the model's outputs for it."""
        if self.closed:
            raise ServingError(Code.FAILED_PRECONDITION, "this session is closed; open a new one with session()")
        graph = self.graph
        arrays = validate(graph.chunk_signature, inputs, graph.limits)
        batch = int(next(iter(arrays.values())).shape[0])
        states = self._states
        if states is None:
            states = {p.input: np.zeros((batch, p.units), np.float32) for p in graph.states}
        elif graph.states and states[graph.states[0].input].shape[0] != batch:
            raise invalid_argument(
                f"a session keeps the batch size of its first chunk: expected {states[graph.states[0].input].shape[0]}"
                f" rows, received {batch}; reset() or open a new session to change it"
            )
        arrays.update(states)
        outputs = graph.backend.predict(arrays)
        self._states = {p.input: outputs[p.output] for p in graph.states}
        return {name: outputs[name] for name in graph.output_names}

    def reset(self) -> None:
        """Start over: the next chunk begins from zero states."""
        self._states = None

    def close(self) -> None:
        self.closed = True
        self._states = None

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
