"""Streaming sessions: RNN state carried between chunks of one sequence.

A model exported with a ``step`` graph takes one chunk plus the recurrent states
(``<layer>_h_in``, ``<layer>_c_in``) and returns the chunk's outputs plus the next states
(``*_out``). A :class:`Session` owns those states for one sequence, so feeding a sequence in
chunks gives the outputs of one full request::

    with predictor.session() as s:
        for chunk in chunks:
            y = s.step({"x": chunk})["y"]

:class:`SessionStore` keeps sessions on a server, keyed by Triton's ``sequence_id``
(``sequence_start`` opens or restarts one, ``sequence_end`` drops it), with an idle timeout and
a bound on live sessions, as Triton's sequence batcher does.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.errors import Code, ServingError, invalid_argument
from serving.signature import DEFAULT_SIGNATURE, STEP_SIGNATURE, validate

if TYPE_CHECKING:
    from serving.predictor import Predictor
    from serving.registry import Lease, ModelRegistry

DEFAULT_IDLE_SECONDS = 60.0
DEFAULT_MAX_SESSIONS = 1000

SequenceId = int | str


class Session:
    """One sequence streamed through a predictor's ``step`` graph; not thread-safe (one caller at a time)."""

    def __init__(self, predictor: Predictor) -> None:
        refused = predictor.streaming_error()
        if refused is not None:
            raise refused
        self.predictor = predictor
        self._pairs = predictor.states
        self._step = predictor._backend(STEP_SIGNATURE)
        step_signature = self._step.signature()
        state_names = {p.input for p in self._pairs}
        chunk_inputs = tuple(s for s in step_signature.inputs if s.name not in state_names)
        self._chunk_signature = type(step_signature)(STEP_SIGNATURE, chunk_inputs, step_signature.outputs)
        default_outputs = predictor.signature(DEFAULT_SIGNATURE).output_names
        self._output_names = [n for n in default_outputs if n not in {p.output for p in self._pairs}]
        self._states: dict[str, np.ndarray] | None = None
        self.closed = False
        self.steps = 0

    @property
    def states(self) -> dict[str, np.ndarray]:
        """The states the next chunk starts from, by input name (empty before the first chunk)."""
        return dict(self._states or {})

    def step(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one chunk (the model's inputs, batch x chunk_steps x ...); the model's outputs for it."""
        if self.closed:
            raise ServingError(Code.FAILED_PRECONDITION, "this session is closed; open a new one with session()")
        arrays = validate(self._chunk_signature, inputs, self.predictor.limits)
        batch = int(next(iter(arrays.values())).shape[0])
        states = self._states
        if states is None:
            states = {p.input: np.zeros((batch, p.units), np.float32) for p in self._pairs}
        elif self._pairs and states[self._pairs[0].input].shape[0] != batch:
            raise invalid_argument(
                f"a session keeps the batch size of its first chunk: expected {states[self._pairs[0].input].shape[0]}"
                f" rows, received {batch}; reset() or open a new session to change it"
            )
        arrays.update(states)
        outputs = self._step.predict(arrays)
        self._states = {p.input: outputs[p.output] for p in self._pairs}
        self.steps += 1
        return {name: outputs[name] for name in self._output_names}

    def reset(self) -> None:
        """Start over: the next chunk begins from zero states."""
        self._states = None
        self.steps = 0

    def close(self) -> None:
        self.closed = True
        self._states = None

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class SessionOptions:
    idle_seconds: float = DEFAULT_IDLE_SECONDS  # --session_idle_seconds
    max_sessions: int = DEFAULT_MAX_SESSIONS  # --max_sessions


DEFAULT_SESSIONS = SessionOptions()


@dataclass
class _Live:
    session: Session
    lock: threading.Lock
    last_used: float


def sequence_id(parameters: Mapping[str, Any]) -> SequenceId | None:
    """Triton's ``sequence_id`` request parameter (uint64 or string); None when the request is not
    part of a sequence. ``sequence_start``/``sequence_end`` without a non-zero id is an error."""
    raw = parameters.get("sequence_id")
    start, end = parameters.get("sequence_start", False), parameters.get("sequence_end", False)
    for flag, value in (("sequence_start", start), ("sequence_end", end)):
        if not isinstance(value, bool):
            raise invalid_argument(f"parameter '{flag}' must be a boolean, received {value!r}")
    if raw is None or raw == 0 or raw == "":
        if start or end:
            raise invalid_argument(
                "inference request to a sequence must specify a non-zero or non-empty correlation ID "
                "(parameter 'sequence_id')"
            )
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or (isinstance(raw, int) and raw < 0):
        raise invalid_argument(f"parameter 'sequence_id' must be an unsigned integer or a string, received {raw!r}")
    return raw


class SessionStore:
    """Server-side sessions keyed by (model name, sequence id), with an idle timeout and a bound."""

    def __init__(self, options: SessionOptions = DEFAULT_SESSIONS, clock: Callable[[], float] = time.monotonic) -> None:
        if options.max_sessions < 1 or options.idle_seconds <= 0:
            raise ValueError(
                f"sessions need max_sessions >= 1 and idle_seconds > 0; received {options.max_sessions}, "
                f"{options.idle_seconds}"
            )
        self.options = options
        self._clock = clock
        self._lock = threading.Lock()
        self._live: OrderedDict[tuple[str, SequenceId], _Live] = OrderedDict()  # least recently used first
        self.evicted: dict[str, int] = {}  # model name -> sessions dropped for idleness

    def step(
        self,
        predictor: Predictor,
        key: SequenceId,
        inputs: Mapping[str, Any],
        start: bool = False,
        end: bool = False,
    ) -> dict[str, np.ndarray]:
        """Feed one chunk of sequence `key` of `predictor`'s model; its outputs."""
        name = predictor.name
        with self._lock:
            now = self._clock()
            self._expire(now)
            live = self._live.get((name, key))
            if start:
                if live is None and len(self._live) >= self.options.max_sessions:
                    raise ServingError(
                        Code.RESOURCE_EXHAUSTED,
                        f"cannot start sequence {key!r} of model '{name}': {len(self._live)} sequences are live, the"
                        f" limit (--max_sessions={self.options.max_sessions}); end sequences with sequence_end or "
                        f"let idle ones expire (--session_idle_seconds={self.options.idle_seconds:g})",
                    )
                if live is not None:  # sequence_start on a live sequence starts it over
                    live.session.close()
                live = _Live(Session(predictor), threading.Lock(), now)
                self._live[(name, key)] = live
            elif live is None:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"sequence {key!r} of model '{name}' is unknown or expired (idle sessions end after "
                    f"{self.options.idle_seconds:g} s); the first request of a sequence must set sequence_start",
                )
            live.last_used = now
            self._live.move_to_end((name, key))
            if end:
                del self._live[(name, key)]
        with live.lock:
            session = live.session
            try:
                if session.predictor is not predictor:
                    raise self._moved(name, key, session.predictor.version)
                return session.step(inputs)
            except ServingError as error:
                if error.code is Code.UNAVAILABLE:  # its version was closed: the state went with it
                    self._drop(name, key, live)
                    raise self._moved(name, key, session.predictor.version) from None
                raise
            finally:
                live.last_used = self._clock()
                if end:
                    session.close()

    def lease(
        self,
        registry: ModelRegistry,
        name: str,
        version: int | None,
        label: str | None,
        key: SequenceId,
        start: bool,
    ) -> Lease:
        """The version a chunk of sequence `key` runs on, held for the request: a new sequence
        starts on the version the request names (default: the newest); later chunks stay on the
        version their sequence started on while it is served."""
        pinned = None if start else self.pinned_version(name, key)
        try:
            return registry.lease(name, pinned) if pinned is not None else registry.lease(name, version, label)
        except ServingError as error:
            if pinned is None or error.code is not Code.NOT_FOUND:
                raise
            self.discard(name, key)
            raise self._moved(name, key, pinned) from None

    def _moved(self, name: str, key: SequenceId, version: int) -> ServingError:
        return ServingError(
            Code.FAILED_PRECONDITION,
            f"sequence {key!r} started on version {version} of model '{name}', which is no longer served; "
            "start the sequence again with sequence_start",
        )

    def pinned_version(self, name: str, key: SequenceId) -> int | None:
        """The version a live sequence runs on (a sequence stays on the version it started with)."""
        with self._lock:
            live = self._live.get((name, key))
            return live.session.predictor.version if live is not None else None

    def discard(self, name: str, key: SequenceId) -> None:
        with self._lock:
            live = self._live.pop((name, key), None)
        if live is not None:
            live.session.close()

    def _drop(self, name: str, key: SequenceId, live: _Live) -> None:
        with self._lock:
            if self._live.get((name, key)) is live:
                del self._live[(name, key)]

    def _expire(self, now: float) -> None:
        limit = now - self.options.idle_seconds
        while self._live:
            key, live = next(iter(self._live.items()))
            if live.last_used > limit or live.lock.locked():
                break
            del self._live[key]
            live.session.close()
            self.evicted[key[0]] = self.evicted.get(key[0], 0) + 1

    def expire(self) -> None:
        """Drop sessions idle for longer than the timeout (also done on every request)."""
        with self._lock:
            self._expire(self._clock())

    def live(self) -> dict[str, int]:
        """Live sessions per model name."""
        with self._lock:
            self._expire(self._clock())
            counts: dict[str, int] = {}
            for name, _ in self._live:
                counts[name] = counts.get(name, 0) + 1
            return counts

    def close(self) -> None:
        with self._lock:
            for live in self._live.values():
                live.session.close()
            self._live.clear()
