"""The one request path every front calls: REST (TF Serving and KServe v2) and gRPC.

Fronts decode the wire and encode the answer; everything between runs here, in this order:

1. **resolve** — the model and version a request names, held by a registry lease for the request
   (:meth:`Dispatch.lease`; unknown models and versions fail with TF Serving's texts);
2. **validate** — the front's codec turns the body into arrays against the version's signatures,
   read from a :class:`ModelView` (what a front may see of a version: never the predictor), then
   :meth:`Dispatch.validate` checks names, dtypes and shapes;
3. **limits** — the element budget (:meth:`Dispatch.element_budget`: codecs take each input's
   *declared* shape from it before building an array), batch size and sequence length against
   :meth:`Dispatch.limits_for` (checked with step 2, so each input is refused with its first
   problem); then the values: NaN and infinity are refused unless ``allow_non_finite``;
4. **schedule** — :meth:`Dispatch.run`: the :class:`~rnnkit_serving.scheduling.batching.Batcher` when
   batching is on, else the predictor; chunks of a sequence go through the
   :class:`~rnnkit_serving.scheduling.session_store.SessionStore` (:meth:`Dispatch.stream`), validated
   against the same :meth:`Dispatch.limits_for` as a prediction; :meth:`Dispatch.infer` is the one
   KServe v2 infer (a prediction, or a chunk of a sequence) both KServe fronts call;
5. **timeout** — :meth:`Dispatch.in_worker` (asyncio fronts) and :meth:`Dispatch.in_worker_sync`
   (threaded fronts: gRPC) run a request in a worker thread and answer DEADLINE_EXCEEDED when it
   takes longer than the front's timeout; a request whose deadline passed before a worker took it
   is not run at all. An asyncio front may hand :meth:`Dispatch.in_worker` its
   :class:`~rnnkit_serving.scheduling.inline.InlineRuns` (:meth:`Dispatch.inline_runs`): a small job
   with nothing else in flight then runs on the loop, skipping the two thread wake-ups;
6. **metrics** — :meth:`Dispatch.record` counts every model request by model and status and
   times the successful ones (TF Serving's metric names).

Nothing here knows HTTP, gRPC or JSON: errors are raised as :class:`~rnnkit_serving.errors.ServingError`
and each front turns them into wire errors through :func:`rnnkit_serving.errors.wire_error`. Fronts
import this module and nothing of the runtime or the scheduling: what they read of a version
(signatures, backend, whether it is an encoder-decoder) comes as a :class:`ModelView`, to their
codec callbacks (:meth:`Dispatch.predict`, :meth:`Dispatch.stream`, :meth:`Dispatch.infer`) and to
metadata reads (:meth:`Dispatch.inspect`).

Where new request rules belong: a bound on the request (element budget, batch size, sequence
length) is a field of the :class:`~rnnkit_serving.core.signature.Limits` that
:meth:`Dispatch.limits_for` returns (codecs that must refuse before allocating get the same object
from the front); a check of the values (non-finite inputs) is a step between :meth:`Dispatch.validate` and
:meth:`Dispatch.run`; a deadline for synchronous fronts (gRPC) wraps :meth:`Dispatch.run`, as
:meth:`Dispatch.in_worker` does for REST; state keyed by client input (sessions, metric labels)
is bounded where it is kept (:class:`~rnnkit_serving.scheduling.session_store.SessionStore`,
:meth:`Dispatch.metric_name`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from rnnkit_serving.core.metrics import Metrics
from rnnkit_serving.core.signature import (
    DEFAULT_LIMITS,
    DEFAULT_SIGNATURE,
    ElementBudget,
    Limits,
    Signature,
    check_finite,
    validate,
)
from rnnkit_serving.core.status import VersionStatus
from rnnkit_serving.core.workers import WorkerRing
from rnnkit_serving.errors import Code, ServingError
from rnnkit_serving.registry import Lease, ModelRegistry
from rnnkit_serving.runtime.predictor import Predictor
from rnnkit_serving.scheduling.batching import Batcher
from rnnkit_serving.scheduling.inline import InlineRuns, NotInline, running_inline
from rnnkit_serving.scheduling.session_store import SequenceId, SessionStore

UNKNOWN_MODEL = "(unknown)"  # the metrics label of a request for a model that is not served
MAX_BATCH_WAITERS = 512  # most extra request threads a front adds to wait for batches


class DecodedRequest(Protocol):
    """What a front's codec made of a request body: input values by name, for one signature."""

    @property
    def inputs(self) -> Mapping[str, Any]: ...

    @property
    def signature_name(self) -> str: ...


class SequenceChunk(Protocol):
    """Which sequence a request is a chunk of (Triton's ``sequence_id``, ``sequence_start``, ``sequence_end``)."""

    @property
    def id(self) -> SequenceId: ...

    @property
    def start(self) -> bool: ...

    @property
    def end(self) -> bool: ...


R = TypeVar("R", bound=DecodedRequest)
T = TypeVar("T")


@dataclass(frozen=True)
class ModelView:
    """What a front may read of the version a request runs on, valid while the request holds it.

    The fronts decode against it (signatures, whether sequences carry partial inputs) and render
    metadata from it (backend, variant, runtime facts); they never see the
    :class:`~rnnkit_serving.runtime.predictor.Predictor` itself, so every request runs through the
    dispatch. `limits`: the request limits of this version on this server
    (:meth:`Dispatch.limits_for`), which :meth:`Dispatch.element_budget` takes its budget from.
    """

    _predictor: Predictor = field(repr=False)
    limits: Limits

    @property
    def name(self) -> str:
        return self._predictor.name

    @property
    def version(self) -> int:
        return self._predictor.version

    @property
    def backend_name(self) -> str:
        """The runtime (``onnx``, ``tf``; ``custom`` for hand-built predictors)."""
        return self._predictor.backend_name

    @property
    def variant(self) -> str:
        """The precision that runs (``fp32``, ``int8``, ``fp16``)."""
        return self._predictor.variant

    @property
    def signatures(self) -> dict[str, Signature]:
        """Every signature of the version, by name."""
        return self._predictor.signatures

    def signature(self, name: str = DEFAULT_SIGNATURE) -> Signature:
        """One signature; FAILED_PRECONDITION (TF Serving's text) for a name the version lacks."""
        return self._predictor.signature(name)

    @property
    def encoder_decoder(self) -> bool:
        """Whether a sequence starts from an encoder's outputs (its chunks carry the source, target
        inputs or both: a codec accepts a subset of the signature's inputs)."""
        return self._predictor.encoder_decoder

    def describe(self) -> dict[str, Any]:
        """Backend facts per signature (runtime, variant, file, device, providers, fallback)."""
        return self._predictor.describe()

    @property
    def streaming_reason(self) -> str | None:
        """Why this version cannot stream (no sessions), or None when it can."""
        refused = self._predictor.streaming_error()
        return None if refused is None else refused.message


@dataclass(frozen=True)
class Target:
    """The model a request names: a version number, a version label, or neither (the newest)."""

    name: str
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class Prediction(Generic[R]):
    """The answer to one request: the version that ran it, the decoded request and its outputs."""

    model: str
    version: int
    request: R
    outputs: dict[str, np.ndarray]


@dataclass
class Call:
    """What one request is about, for the metrics step (the front fills it while routing)."""

    entrypoint: str  # "REST" or "GRPC"
    model: str = ""  # the metrics label; "" = not a model request, not recorded
    api: str = ""
    started: float = field(default_factory=time.perf_counter)
    # the outcome of a request answered normally that still did not succeed (a readiness probe
    # answering "not ready"): recorded instead of OK
    outcome: Code | None = None
    # relayed to the worker that owns its sequence (``--server_workers``): that worker records it
    forwarded: bool = False


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run `callback` on `loop`'s thread (from any thread); at once when the loop is closed (nothing runs on it)."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop is closed
        callback()


class Dispatch:
    """The data plane behind every front: one registry, batcher, session store and metrics.

    `limits`: the server's bounds on a request (``--max_batch_size``, ``--max_sequence_length``,
    ``--max_request_elements``), applied together with each version's own (the tighter wins);
    `allow_non_finite`: pass NaN/infinity inputs to the model (``--allow_non_finite_inputs``)
    instead of refusing them.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics | None = None,
        batcher: Batcher | None = None,
        sessions: SessionStore | None = None,
        limits: Limits = DEFAULT_LIMITS,
        allow_non_finite: bool = False,
        workers: WorkerRing | None = None,
    ) -> None:
        self.registry = registry
        # this process's place among the server's worker processes (None: the only one)
        self.workers = workers
        self.metrics = metrics if metrics is not None else Metrics()
        self.batcher = batcher
        self.sessions = sessions if sessions is not None else SessionStore()
        self.limits = limits
        self.allow_non_finite = allow_non_finite

    # ------------------------------------------------------------------------ 1. resolve

    def lease(self, target: Target) -> Lease:
        """Hold the version `target` names for one request (``with dispatch.lease(t) as predictor``)."""
        return self.registry.lease(target.name, target.version, target.label)

    def view(self, predictor: Predictor) -> ModelView:
        """What a front may read of `predictor` (held by a lease), with its limits on this server."""
        return ModelView(predictor, self.limits_for(predictor))

    def inspect(self, target: Target, read: Callable[[ModelView], T]) -> T:
        """``read`` the version `target` names while holding it (metadata, status of one version)."""
        with self.lease(target) as predictor:
            return read(self.view(predictor))

    def metric_name(self, name: str) -> str:
        """The metrics label for a requested model name: itself when served, else ``(unknown)``."""
        return name if self.registry.model(name) is not None else UNKNOWN_MODEL

    # ------------------------------------------------------------- 2 + 3. validate, limits

    def limits_for(self, model: Predictor | ModelView) -> Limits:
        """The request limits for a version: the server's and those it was loaded with, the tighter of each."""
        if isinstance(model, ModelView):  # built by view(): its limits are these already, worked out once a request
            return model.limits
        return self.limits.tighter(model.limits)

    def element_budget(self, model: Predictor | ModelView) -> ElementBudget:
        """A fresh element budget for one request to `model`: every front's codec takes each
        input's declared shape from it before building the input's array."""
        return ElementBudget(self.limits_for(model).max_elements)

    def validate(
        self, model: Predictor | ModelView, inputs: Mapping[str, Any], signature_name: str
    ) -> dict[str, np.ndarray]:
        """`inputs` checked against the signature and the limits, as arrays in the signature's dtypes;
        non-finite values refused unless ``allow_non_finite``."""
        arrays = validate(model.signature(signature_name), inputs, self.limits_for(model))
        self.check_values(arrays)
        return arrays

    def check_values(self, inputs: Mapping[str, Any]) -> None:
        """NaN and infinity in float inputs -> INVALID_ARGUMENT naming the input and the first bad
        index, unless the server passes them through (``--allow_non_finite_inputs``)."""
        if not self.allow_non_finite:
            check_finite(inputs)

    # ----------------------------------------------------------------------- 4. schedule

    def run(self, predictor: Predictor, arrays: dict[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        """Validated arrays through the batcher (when batching is on) or straight to the predictor."""
        if self.batcher is not None:  # a job on the event loop must not wait for a batch
            return self.batcher.run(predictor, arrays, signature_name, wait=not running_inline())
        return predictor.run(arrays, signature_name)

    def predict(self, target: Target, decode: Callable[[ModelView], R]) -> Prediction[R]:
        """Steps 1-4 for one prediction: lease `target`, ``decode(model)`` (the front's codec),
        validate, run; the outputs of every output of the signature, by name."""
        with self.lease(target) as predictor:
            model = self.view(predictor)
            request = decode(model)
            signature_name = request.signature_name or DEFAULT_SIGNATURE
            arrays = self.validate(model, request.inputs, signature_name)
            outputs = self.run(predictor, arrays, signature_name)
        return Prediction(predictor.name, predictor.version, request, outputs)

    def stream(
        self, target: Target, key: SequenceId, start: bool, end: bool, decode: Callable[[ModelView], R]
    ) -> Prediction[R]:
        """Steps 1-4 for one chunk of sequence `key`: a new sequence (`start`) runs on the version
        `target` names; later chunks stay on the version their sequence started on while it is
        served (a sequence whose version was retired is told to start again). Validation applies
        in the session, against the step graph's chunk signature, with the limits of a prediction
        (:meth:`limits_for`). Never on the event loop: a chunk takes its session's lock, which a thread of
        another front may hold (:class:`~rnnkit_serving.scheduling.inline.NotInline`, raised before anything
        changes, sends the job to a worker thread)."""
        if running_inline():
            raise NotInline(f"sequence {key!r} of model {target.name!r}")
        with self._sequence_lease(target, key, start) as predictor:
            model = self.view(predictor)
            request = decode(model)
            self.check_values(request.inputs)
            outputs = self.sessions.step(predictor, key, request.inputs, start, end, model.limits)
        return Prediction(predictor.name, predictor.version, request, outputs)

    def infer(
        self, target: Target, sequence: SequenceChunk | None, decode: Callable[[ModelView, bool], R]
    ) -> Prediction[R]:
        """The KServe v2 infer, whatever the wire (REST and gRPC call it alike): one prediction, or,
        for a request carrying Triton's sequence parameters, one chunk of that sequence (:meth:`stream`).

        ``decode(model, partial)`` is the front's codec; `partial` is true for a chunk of an
        encoder-decoder sequence, which carries the source, a target chunk or both (the session says
        which it needs), so the codec must accept a subset of the signature's inputs."""
        if sequence is None:
            return self.predict(target, lambda model: decode(model, False))
        return self.stream(
            target, sequence.id, sequence.start, sequence.end, lambda model: decode(model, model.encoder_decoder)
        )

    def _sequence_lease(self, target: Target, key: SequenceId, start: bool) -> Lease:
        pinned = None if start else self.sessions.pinned_version(target.name, key)
        if pinned is None:
            return self.lease(target)
        try:
            return self.lease(Target(target.name, pinned))
        except ServingError as error:
            if error.code is not Code.NOT_FOUND:
                raise
            self.sessions.discard(target.name, key)
            raise self.sessions.moved(target.name, key, pinned) from None

    def worker_threads(self, base: int) -> int:
        """Threads a front needs to run `base` requests at once: with batching, request threads wait
        for their batch, so enough of them to fill the batches are added."""
        workers = max(1, base)
        if self.batcher is not None:
            params = self.batcher.params
            workers += min(params.max_batch_size * params.num_batch_threads, MAX_BATCH_WAITERS)
        return workers

    # ------------------------------------------------------------------------ 5. timeout

    def inline_runs(self, budget_ms: float) -> InlineRuns | None:
        """The inline policy an asyncio front passes to :meth:`in_worker` (``--rest_inline_ms``); None when
        nothing may run on its loop: a budget <= 0 or several server processes (a sequence chunk may wait on
        a relay to another process). With a batcher, :meth:`run` never lets an inline job wait for a batch."""
        if not budget_ms > 0 or self.workers is not None:
            return None
        return InlineRuns(budget_ms)

    async def in_worker(
        self,
        executor: Executor,
        job: Callable[[], T],
        timeout_ms: int,
        flag: str,
        inline: InlineRuns | None = None,
        key: tuple[str, int] | None = None,
    ) -> T:
        """Run `job` in a worker thread of `executor`; DEADLINE_EXCEEDED (naming `flag`, the setting
        that sets it) after `timeout_ms` (<= 0: no timeout). The job itself is not interrupted.

        With `inline` (the front's :class:`~rnnkit_serving.scheduling.inline.InlineRuns`) and `key`
        ((model name, body bytes) of a model request), `job` runs right here on the loop when the policy
        allows it, and otherwise its time in the thread, when it succeeded, teaches the policy; the policy
        counts it busy until it ends, even past its timeout."""
        if inline is not None and key is not None and inline.may_inline(*key):
            try:
                return inline.run(*key, job)
            except NotInline:
                pass  # it changed nothing: run it in a thread
        timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        outcome: list[tuple[float, bool]] = []  # (ms, succeeded), once the job has ended

        def timed() -> T:
            started, succeeded = time.perf_counter(), False
            try:
                result = job()
                succeeded = True
                return result
            finally:
                outcome.append(((time.perf_counter() - started) * 1e3, succeeded))

        loop = asyncio.get_running_loop()
        if inline is not None:
            inline.busy += 1
        timed_out = False
        future: concurrent.futures.Future[T] | None = None
        try:
            future = executor.submit(timed)
            return await asyncio.wait_for(asyncio.wrap_future(future, loop=loop), timeout)
        except asyncio.TimeoutError:
            timed_out = True
            if inline is not None and key is not None:
                inline.forget(key[0])
            raise self._timed_out(timeout_ms, flag) from None
        finally:
            if inline is not None:
                # the front stays busy while the job runs, even when its request no longer waits for it
                # (timed out, cancelled): nothing may run on the loop beside it
                policy, learn = inline, None if timed_out else key

                def ended() -> None:
                    policy.busy -= 1
                    if learn is not None and outcome:
                        policy.observed(learn[0], learn[1], *outcome[0])

                if future is None or future.done():
                    ended()
                else:
                    future.add_done_callback(lambda _: _on_loop(loop, ended))

    @staticmethod
    def _timed_out(timeout_ms: int, flag: str) -> ServingError:
        return ServingError(Code.DEADLINE_EXCEEDED, f"Request timed out after {timeout_ms} ms ({flag})")

    def in_worker_sync(
        self, executor: Executor, job: Callable[[], T], timeout_ms: int, flag: str, client_s: float | None = None
    ) -> T:
        """:meth:`in_worker` for a front that handles each request in a thread of its own (gRPC): wait
        for `job` in `executor` at most `timeout_ms` (<= 0: no cap) or `client_s` (the client's
        remaining deadline, when shorter). A job still queued when the time is up never runs."""
        if client_s is not None and not client_s < 1e7:  # no client deadline: gRPC reports a far-future one
            client_s = None
        limits = [t for t in (timeout_ms / 1000 if timeout_ms > 0 else None, client_s) if t is not None]
        wait = min(limits) if limits else None
        deadline = None if wait is None else time.monotonic() + wait

        def guarded() -> T:
            if deadline is not None and time.monotonic() >= deadline:
                raise ServingError(Code.DEADLINE_EXCEEDED, "Request timed out in the queue")
            return job()

        future = executor.submit(guarded)
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            if client_s is not None and wait == client_s and (timeout_ms <= 0 or client_s < timeout_ms / 1000):
                raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded (the client's deadline)") from None
            raise self._timed_out(timeout_ms, flag) from None

    # ------------------------------------------------------------------------ 6. metrics

    def record(self, call: Call, code: Code) -> None:
        """Count one request (by model label and status) and time it when it succeeded."""
        if code is Code.OK and call.outcome is not None:
            code = call.outcome
        if call.model and not call.forwarded:
            self.metrics.record(call.model, call.api, call.entrypoint, code, (time.perf_counter() - call.started) * 1e6)

    # --------------------------------------------------------------------- model queries

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self.registry.status(name, version)

    def ready(self, target: Target) -> bool:
        """Whether the version `target` names serves now."""
        return self.readiness(target) is Code.OK

    def readiness(self, target: Target) -> Code:
        """OK when the version `target` names serves now, else why not (NOT_FOUND, UNAVAILABLE...)."""
        try:
            self.registry.resolve(target.name, target.version, target.label)
        except ServingError as error:
            return error.code
        return Code.OK

    def available(self) -> bool:
        """Whether any version of any model serves now."""
        return self.registry.available()

    def versions(self, name: str) -> list[int]:
        return self.registry.versions(name)

    def model_names(self) -> list[str]:
        """Every model this server is configured to serve, sorted (whether or not a version serves now)."""
        return self.registry.names

    def live_sessions(self) -> dict[str, int]:
        """Open streaming sessions (sequences holding RNN state) per model name."""
        return self.sessions.live()
