"""The KServe v2 / Open Inference Protocol gRPC front: ``inference.GRPCInferenceService`` on its own
port (``--grpc_inference_port``), with the servicer classes ``tritonclient`` ships, so Triton's and
KServe's gRPC clients work unchanged.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer and ModelStreamInfer
are served (the others answer UNIMPLEMENTED). Bodies are decoded by :mod:`rnnkit_serving.codecs.kserve.grpc`
and run through the :class:`~rnnkit_serving.dispatch.Dispatch` like every other front; a request carrying
Triton's ``sequence_id`` (a request parameter, or the ``x-rnnkit-sequence-id`` metadata key) runs
one chunk of a streaming session. On ModelStreamInfer the session's state stays in this process for
as long as the stream lives, since a stream never changes replica; a failed request on a stream is
answered with ``error_message`` and the stream goes on, as Triton does.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

from rnnkit_serving.codecs.kserve import grpc as kserve_grpc_codec
from rnnkit_serving.codecs.kserve import rest as kserve_codec
from rnnkit_serving.codecs.kserve import sequence as kserve_sequence
from rnnkit_serving.config.connections import DEFAULT_CONNECTIONS, FLAGS, ConnectionLimits
from rnnkit_serving.core import defaults
from rnnkit_serving.core.package import package_version
from rnnkit_serving.dispatch import Call, Dispatch, ModelView, Prediction, Target
from rnnkit_serving.errors import Code, grpc_message, wire_error
from rnnkit_serving.fronts.grpc.builder import TIMEOUT_FLAG, build_server, recorded_call
from rnnkit_serving.fronts.grpc.forward import GrpcRelay

T = TypeVar("T")
log = logging.getLogger(__name__)

_protos = kserve_grpc_codec.protos()  # tritonclient's generated modules (a clear ImportError without them)
_pb2 = _protos.pb2
_InferenceServiceBase: Any = _protos.pb2_grpc.GRPCInferenceServiceServicer


def _sequence_header(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == kserve_sequence.SEQUENCE_HEADER:
            return str(value)
    return None


def infer(
    dispatch: Dispatch,
    request: Any,
    sequence_header: str | None,
    relay: GrpcRelay | None = None,
    call: Call | None = None,
) -> Any:
    """One ModelInferRequest through the dispatch's KServe infer -> its ModelInferResponse.

    `relay` (``--server_workers N``): a chunk of a sequence another worker owns is answered by that
    worker (and `call` marked forwarded: the owner records it)."""
    target = Target(request.model_name, kserve_grpc_codec.model_version(request.model_version))
    sequence = kserve_sequence.sequence_control(
        {"parameters": kserve_grpc_codec.parameters_dict(request.parameters)}, sequence_header
    )
    if sequence is not None and relay is not None:
        owner = relay.owner_elsewhere(target.name, sequence.id)
        if owner is not None:
            if call is not None:
                call.forwarded = True
            what = f"sequence {sequence.id!r} of model {target.name!r}"
            return relay.model_infer(owner, request, sequence_header, what)

    def decode(model: ModelView, partial: bool) -> kserve_grpc_codec.GrpcInferRequest:
        budget = dispatch.element_budget(model)
        return kserve_grpc_codec.decode_infer_request(request, model.signature(), budget, partial)

    answer: Prediction[kserve_grpc_codec.GrpcInferRequest] = dispatch.infer(target, sequence, decode)
    decoded = answer.request
    return kserve_grpc_codec.encode_infer_response(
        answer.model, answer.version, answer.outputs, decoded.outputs, decoded.id, decoded.raw
    )


class InferenceServicer(_InferenceServiceBase):
    """``inference.GRPCInferenceService`` over a dispatch (KServe's ``InferenceServicer(data_plane)``).

    With `work`, each inference runs there and is answered ``DEADLINE_EXCEEDED`` after `timeout_ms`
    (or the client's deadline if sooner), as the TF Serving front's ``Predict`` is; without it, in the
    RPC's own thread."""

    def __init__(
        self,
        dispatch: Dispatch,
        work: futures.Executor | None = None,
        timeout_ms: int = defaults.GRPC_TIMEOUT_MS,
        connections: ConnectionLimits = DEFAULT_CONNECTIONS,
    ) -> None:
        self.dispatch = dispatch
        self.work = work
        self.timeout_ms = timeout_ms
        self.connections = connections
        # --server_workers N: chunks of another worker's sequence go to it
        ring = dispatch.workers
        self.relay = GrpcRelay(ring, timeout_ms / 1000 + 1 if timeout_ms > 0 else None) if ring is not None else None
        self._streams = threading.BoundedSemaphore(connections.grpc_max_streams)

    def _bounded(self, job: Callable[[], T], client_s: float | None) -> T:
        if self.work is None:
            return job()
        return self.dispatch.in_worker_sync(self.work, job, self.timeout_ms, TIMEOUT_FLAG, client_s)

    def ServerLive(self, request: Any, context: Any) -> Any:
        return _pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return _pb2.ServerReadyResponse(ready=self.dispatch.available())

    def ModelReady(self, request: Any, context: Any) -> Any:
        call = Call("GRPC", self.dispatch.metric_name(request.name), "ModelReady")

        def job() -> Any:
            target = Target(request.name, kserve_grpc_codec.model_version(request.version))
            call.outcome = self.dispatch.readiness(target)
            return _pb2.ModelReadyResponse(ready=call.outcome is Code.OK)

        return recorded_call(context, self.dispatch, request.name, "ModelReady", job, call)

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return kserve_grpc_codec.server_metadata_response(package_version())

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        def job() -> Any:
            target = Target(request.name, kserve_grpc_codec.model_version(request.version))
            platform, signature = self.dispatch.inspect(
                target, lambda model: (kserve_codec.platform(model.backend_name), model.signature())
            )
            return kserve_grpc_codec.model_metadata_response(
                request.name, self.dispatch.versions(request.name), platform, signature
            )

        return recorded_call(context, self.dispatch, request.name, "ModelMetadata", job)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        header = _sequence_header(context)
        call = Call("GRPC", self.dispatch.metric_name(request.model_name), "ModelInfer")
        return recorded_call(
            context,
            self.dispatch,
            request.model_name,
            "ModelInfer",
            lambda: self._bounded(
                lambda: infer(self.dispatch, request, header, self.relay, call), context.time_remaining()
            ),
            call,
        )

    def ModelStreamInfer(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        if not self._streams.acquire(blocking=False):
            import grpc

            limit = self.connections.grpc_max_streams
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{limit} ModelStreamInfer streams are open, the limit ({FLAGS['grpc_max_streams']}={limit}); "
                "close a stream or retry later",
            )
        idle = _IdleTimer(self.connections.grpc_stream_idle_s, context)
        try:
            yield from self._stream(request_iterator, context, idle)
        finally:
            idle.stop()
            self._streams.release()

    def _stream(self, request_iterator: Iterator[Any], context: Any, idle: _IdleTimer) -> Iterator[Any]:
        header = _sequence_header(context)
        dispatch = self.dispatch
        idle.restart()
        for request in request_iterator:
            idle.stop()
            call = Call("GRPC", dispatch.metric_name(request.model_name), "ModelStreamInfer")
            try:
                response = self._bounded(functools.partial(infer, dispatch, request, header, self.relay, call), None)
            except Exception as error:
                code, message, _ = wire_error(error)
                dispatch.record(call, code)
                yield _pb2.ModelStreamInferResponse(error_message=grpc_message(message))
                idle.restart()
                continue
            dispatch.record(call, Code.OK)
            yield _pb2.ModelStreamInferResponse(infer_response=response)
            idle.restart()


class _IdleTimer:
    """Cancels a stream's RPC when no request arrives for `seconds` (a stream that is never closed
    would hold a worker thread and a --grpc_max_streams slot for ever)."""

    def __init__(self, seconds: float, context: Any) -> None:
        self.seconds = seconds
        self.context = context
        self._timer: threading.Timer | None = None

    def _expire(self) -> None:
        log.info(
            "a ModelStreamInfer stream sent nothing for %g s (--grpc_stream_idle_seconds): cancelled",
            self.seconds,
        )
        self.context.cancel()

    def restart(self) -> None:
        self.stop()
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def add_inference_service(
    server: Any,
    dispatch: Dispatch,
    work: futures.Executor | None = None,
    timeout_ms: int = defaults.GRPC_TIMEOUT_MS,
    connections: ConnectionLimits = DEFAULT_CONNECTIONS,
) -> None:
    """Register ``inference.GRPCInferenceService`` over `dispatch` on `server` (a ``grpc.Server``)."""
    servicer = InferenceServicer(dispatch, work, timeout_ms, connections)
    _protos.pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


def start_inference_server(
    dispatch: Dispatch,
    address: str,
    workers: int = defaults.GRPC_WORKERS,
    max_message_bytes: int = -1,
    health: Any = None,
    timeout_ms: int = defaults.GRPC_TIMEOUT_MS,
    max_concurrent_rpcs: int | None = defaults.GRPC_MAX_CONCURRENT_RPCS,
    credentials: Any = None,
    connections: ConnectionLimits = DEFAULT_CONNECTIONS,
) -> Any:
    """Bind `address` ("host:port") with the inference service (and `health`, a
    :class:`rnnkit_serving.fronts.grpc.health.Health`), start serving, return the ``grpc.Server``. The same bounds as
    the TF Serving front (the same builder, :func:`rnnkit_serving.fronts.grpc.builder.build_server`):
    `timeout_ms` per inference, `max_concurrent_rpcs` calls at once, bytes that do not parse answered
    ``INVALID_ARGUMENT``; `credentials` makes the port TLS-only.

    Each open ModelStreamInfer stream holds one of the server's worker threads (and one of the
    `max_concurrent_rpcs`) while it lives: at most ``connections.grpc_max_streams`` are open at once
    (fewer than `workers`, so unary calls and health checks always find a thread), and one without a
    request for ``connections.grpc_stream_idle_s`` is cancelled."""
    if connections.grpc_max_streams >= workers:
        streams = max(1, workers - 1)
        log.warning(
            "--grpc_max_streams %d is not below --grpc_workers %d: each open stream holds a worker thread, and "
            "unary calls and health checks need one; at most %d streams are open at once",
            connections.grpc_max_streams,
            workers,
            streams,
        )
        connections = dataclasses.replace(connections, grpc_max_streams=streams)
    return build_server(
        dispatch,
        address,
        lambda server, work: add_inference_service(server, dispatch, work, timeout_ms, connections),
        port_name="KServe v2 gRPC",
        thread_prefix="rnnkit-kserve",
        workers=workers,
        max_message_bytes=max_message_bytes,
        max_concurrent_rpcs=max_concurrent_rpcs,
        health=health,
        credentials=credentials,
        connections=connections,
        private_socket=dispatch.workers.grpc_socket(dispatch.workers.index) if dispatch.workers is not None else None,
    )
