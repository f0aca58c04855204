"""Server-side streaming sessions, keyed by Triton's ``sequence_id``.

:class:`SessionStore` keeps one :class:`~rnnkit_serving.runtime.streaming.Session` per (model name, sequence
id): ``sequence_start`` opens or restarts one, ``sequence_end`` drops it, with an idle timeout
and a bound on live sessions, as Triton's sequence batcher does. Which version a chunk runs on
is the dispatch's business (:meth:`rnnkit_serving.dispatch.Dispatch.stream`); the store only
remembers the version each sequence started on (:meth:`SessionStore.pinned_version`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnkit_serving.core import defaults
from rnnkit_serving.core.identifiers import check_sequence_id
from rnnkit_serving.core.signature import Limits
from rnnkit_serving.errors import Code, ServingError
from rnnkit_serving.runtime.predictor import Predictor
from rnnkit_serving.runtime.streaming import Session

DEFAULT_IDLE_SECONDS = defaults.SESSION_IDLE_SECONDS
DEFAULT_MAX_SESSIONS = defaults.MAX_SESSIONS

SequenceId = int | str


@dataclass(frozen=True)
class SessionOptions:
    idle_seconds: float = DEFAULT_IDLE_SECONDS  # --session_idle_seconds
    max_sessions: int = DEFAULT_MAX_SESSIONS  # --max_sessions
    max_sequence_id_length: int = defaults.MAX_SEQUENCE_ID_LENGTH  # --max_sequence_id_length


DEFAULT_SESSIONS = SessionOptions()


@dataclass
class LiveSequence:
    """A sequence's session, the version it runs on, and when it was last fed."""

    session: Session
    predictor: Predictor
    lock: threading.Lock
    last_used: float


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
        self._live: OrderedDict[tuple[str, SequenceId], LiveSequence] = OrderedDict()  # least recently used first
        self.evicted: dict[str, int] = {}  # model name -> sessions dropped for idleness

    def step(
        self,
        predictor: Predictor,
        key: SequenceId,
        inputs: Mapping[str, Any],
        start: bool = False,
        end: bool = False,
        limits: Limits | None = None,
    ) -> dict[str, np.ndarray]:
        """Feed one chunk of sequence `key` of `predictor`'s model; its outputs. `limits`: the bounds
        the chunk is validated against (the dispatch's, as for a prediction; None: the version's own)."""
        name = predictor.name
        check_sequence_id(key, self.options.max_sequence_id_length)
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
                live = LiveSequence(Session(predictor.step_graph()), predictor, threading.Lock(), now)
                self._live[(name, key)] = live
            elif live is None:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"unknown sequence {key!r} of model '{name}': it is unknown or expired on this server (never "
                    f"started, ended, idle longer than {self.options.idle_seconds:g} s, or started on a replica "
                    "that has gone away); start it again with sequence_start",
                )
            live.last_used = now
            self._live.move_to_end((name, key))
            if end:
                del self._live[(name, key)]
        with live.lock:
            session = live.session
            try:
                if live.predictor is not predictor:
                    raise self.moved(name, key, live.predictor.version)
                return session.step(inputs, limits)
            except ServingError as error:
                if error.code is Code.UNAVAILABLE:  # its version was closed: the state went with it
                    self._drop(name, key, live)
                    raise self.moved(name, key, live.predictor.version) from None
                if start:  # a failed start keeps no session (and no --max_sessions slot)
                    self._drop(name, key, live)
                    session.close()
                raise
            except BaseException:
                if start:
                    self._drop(name, key, live)
                    session.close()
                raise
            finally:
                live.last_used = self._clock()
                if end:
                    session.close()

    def moved(self, name: str, key: SequenceId, version: int) -> ServingError:
        """The error for a chunk of a sequence whose version is no longer served."""
        return ServingError(
            Code.FAILED_PRECONDITION,
            f"sequence {key!r} started on version {version} of model '{name}', which is no longer served; "
            "start the sequence again with sequence_start",
        )

    def pinned_version(self, name: str, key: SequenceId) -> int | None:
        """The version a live sequence runs on (a sequence stays on the version it started with)."""
        with self._lock:
            live = self._live.get((name, key))
            return live.predictor.version if live is not None else None

    def discard(self, name: str, key: SequenceId) -> None:
        with self._lock:
            live = self._live.pop((name, key), None)
        if live is not None:
            live.session.close()

    def _drop(self, name: str, key: SequenceId, live: LiveSequence) -> None:
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
