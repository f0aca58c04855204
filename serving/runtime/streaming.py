"""Streaming: RNN state carried between chunks of one sequence, through a version's step graph.

A model exported with a ``step`` graph takes one chunk plus the recurrent states
(``<layer>_h_in``, ``<layer>_c_in``) and returns the chunk's outputs plus the next states
(``*_out``). :class:`StepGraph` is what a :class:`~rnnkit_serving.runtime.predictor.Predictor` publishes of
that graph (:meth:`~rnnkit_serving.runtime.predictor.Predictor.step_graph`): the state pairs, the chunk
signature, the outputs to return, the backend that runs a step and the request limits. A
:class:`Session` owns the states of one sequence, so feeding a sequence in chunks gives the
outputs of one full request::

    with predictor.session() as s:
        for chunk in chunks:
            y = s.step({"x": chunk})["y"]

An encoder-decoder model (``streaming.mode == "encoder_decoder"``) has no ``step`` graph; its
:class:`StepGraph` is the ``decoder_step`` graph with an :class:`EncoderGraph` attached. Its
sessions start from the encoder's outputs instead of zeros: the first request of a session
(after :meth:`Session.reset`, too) must carry the source inputs, which run the encoder and
become the states; it may also carry a target chunk, which then runs the first decoder step.
Later requests carry target chunks only::

    with predictor.session() as s:
        s.step({"src": source})                       # the encoder: no outputs, the state is set
        for t in range(steps):
            logits = s.step({"tgt": target[:, t : t + 1]})["logits"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from rnnkit_serving.core.signature import Limits, Signature, StatePair, validate
from rnnkit_serving.errors import Code, ServingError, invalid_argument
from rnnkit_serving.runtime.backend import Backend


@dataclass(frozen=True)
class EncoderGraph:
    """The encoder of an encoder-decoder model: source inputs -> the decoder step's initial states."""

    signature: Signature  # the source inputs; outputs named as the decoder step's state inputs
    backend: Backend


@dataclass(frozen=True)
class StepGraph:
    """The public face of a version's ``step`` graph."""

    model: str  # model name and version, for messages
    version: int
    states: tuple[StatePair, ...]  # fed as `input`, returned as `output` for the next chunk
    chunk_signature: Signature  # the step inputs a client sends (the states left out)
    output_names: tuple[str, ...]  # the step outputs a client gets (the states left out)
    backend: Backend  # runs one step: chunk + states -> outputs + next states
    limits: Limits  # the version's own; a server passes its own to Session.step
    encoder: EncoderGraph | None = None  # encoder-decoder models: the states start from its outputs


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

    def step(self, inputs: Mapping[str, Any], limits: Limits | None = None) -> dict[str, np.ndarray]:
        """Run one chunk (the model's inputs, batch x chunk_steps x ...); the model's outputs for it.

        `limits`: the bounds the chunk is validated against (a server's
        :meth:`~rnnkit_serving.dispatch.Dispatch.limits_for`, as its predictions are); None: the step graph's own."""
        if self.closed:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                "this session is closed (ended, expired or started over): start the sequence again with "
                "sequence_start (in Python: open a new one with Predictor.session())",
            )
        graph = self.graph
        limits = graph.limits if limits is None else limits
        states = self._states
        if graph.encoder is not None:
            started, inputs = self._encode(graph.encoder, inputs, limits)
            if started is not None:
                if not inputs:  # only the source: the encoder ran, the decoder has not stepped yet
                    self._states = started
                    return {}
                states = started  # kept only when the first decoder step succeeds too
        arrays = validate(graph.chunk_signature, inputs, limits)
        batch = int(next(iter(arrays.values())).shape[0])
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

    def _encode(
        self, encoder: EncoderGraph, inputs: Mapping[str, Any], limits: Limits
    ) -> tuple[dict[str, np.ndarray] | None, Mapping[str, Any]]:
        """The first request of a session runs the encoder on its source inputs: the states it starts
        from and the rest of `inputs` (the target chunk, if any); later requests: (None, `inputs`)."""
        graph = self.graph
        if not isinstance(inputs, Mapping):
            return None, inputs  # validate() names what was received
        source_names = encoder.signature.input_names
        target_names = graph.chunk_signature.input_names
        given = [name for name in source_names if name in inputs]
        if self._states is not None:
            if given:
                raise invalid_argument(
                    f"model '{graph.model}' version {graph.version}: source inputs {given} are only accepted by the "
                    f"first request of a sequence (sequence_start), which runs the encoder; later requests carry the "
                    f"decoder's inputs {target_names}"
                )
            return None, inputs
        missing = [name for name in source_names if name not in inputs]
        if missing:
            raise invalid_argument(
                f"model '{graph.model}' version {graph.version} is an encoder-decoder: the first request of a "
                f"sequence (sequence_start) must carry the encoder's source inputs {source_names} (and optionally "
                f"the decoder's inputs {target_names}); missing {missing}"
            )
        source = validate(encoder.signature, {name: inputs[name] for name in source_names}, limits)
        outputs = encoder.backend.predict(source)
        started = {p.input: outputs[p.input] for p in graph.states}
        return started, {name: value for name, value in inputs.items() if name not in source_names}

    def reset(self) -> None:
        """Start over: the next chunk begins from zero states (encoder-decoder models: from the
        encoder's outputs for the source the next request carries)."""
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
