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

import functools
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

from rnnkit_serving.codecs.kserve import rest as kserve_codec
from rnnkit_serving.codecs.kserve import grpc as kserve_grpc_codec
from rnnkit_serving.dispatch import Call, Dispatch, Prediction, Target
from rnnkit_serving.errors import Code, grpc_message, wire_error
from rnnkit_serving.fronts.grpc.guard import UndecodableRequests
from rnnkit_serving.fronts.grpc.tfs import DEFAULT_MAX_CONCURRENT_RPCS, DEFAULT_TIMEOUT_MS, TIMEOUT_FLAG, recorded_call
from rnnkit_serving.runtime.predictor import Predictor
from rnnkit_serving.core.signature import DEFAULT_SIGNATURE

T = TypeVar("T")


def _sequence_header(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == kserve_codec.SEQUENCE_HEADER:
            return str(value)
    return None


def infer(dispatch: Dispatch, request: Any, sequence_header: str | None) -> Any:
    """One ModelInferRequest through the dispatch -> its ModelInferResponse."""
    target = Target(request.model_name, kserve_grpc_codec.model_version(request.model_version))
    sequence = kserve_codec.sequence_control(
        {"parameters": kserve_grpc_codec.parameters_dict(request.parameters)}, sequence_header
    )

    def decode(predictor: Predictor) -> kserve_grpc_codec.GrpcInferRequest:
        # a sequence of an encoder-decoder model carries the source, target chunks or both
        partial = sequence is not None and predictor.encoder_decoder
        signature = predictor.signature(DEFAULT_SIGNATURE)
        budget = dispatch.element_budget(predictor)
        return kserve_grpc_codec.decode_infer_request(request, signature, budget, partial)

    answer: Prediction[kserve_grpc_codec.GrpcInferRequest]
    if sequence is None:
        answer = dispatch.predict(target, decode)
    else:
        answer = dispatch.stream(target, sequence.id, sequence.start, sequence.end, decode)
    decoded = answer.request
    return kserve_grpc_codec.encode_infer_response(
        answer.model, answer.version, answer.outputs, decoded.outputs, decoded.id, decoded.raw
    )


def add_inference_service(
    server: Any, dispatch: Dispatch, work: futures.Executor | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> None:
    """Register ``inference.GRPCInferenceService`` on `server` (a ``grpc.Server``). With `work`, each
    inference runs there and is answered ``DEADLINE_EXCEEDED`` after `timeout_ms` (or the client's
    deadline if sooner), as the TF Serving front's ``Predict`` is."""

    def bounded(job: Callable[[], T], client_s: float | None) -> T:
        if work is None:
            return job()
        return dispatch.in_worker_sync(work, job, timeout_ms, TIMEOUT_FLAG, client_s)

    protos = kserve_grpc_codec.protos()
    pb2 = protos.pb2
    base: Any = protos.pb2_grpc.GRPCInferenceServiceServicer

    class InferenceService(base):
        def ServerLive(self, request: Any, context: Any) -> Any:
            return pb2.ServerLiveResponse(live=True)

        def ServerReady(self, request: Any, context: Any) -> Any:
            return pb2.ServerReadyResponse(ready=dispatch.available())

        def ModelReady(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                target = Target(request.name, kserve_grpc_codec.model_version(request.version))
                return pb2.ModelReadyResponse(ready=dispatch.ready(target))

            return recorded_call(context, dispatch, request.name, "ModelReady", job)

        def ServerMetadata(self, request: Any, context: Any) -> Any:
            return kserve_grpc_codec.server_metadata_response(_package_version())

        def ModelMetadata(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                target = Target(request.name, kserve_grpc_codec.model_version(request.version))
                with dispatch.lease(target) as predictor:
                    platform = kserve_codec.PLATFORMS.get(predictor.backend_name, predictor.backend_name)
                    signature = predictor.signature(DEFAULT_SIGNATURE)
                return kserve_grpc_codec.model_metadata_response(
                    request.name, dispatch.versions(request.name), platform, signature
                )

            return recorded_call(context, dispatch, request.name, "ModelMetadata", job)

        def ModelInfer(self, request: Any, context: Any) -> Any:
            header = _sequence_header(context)
            return recorded_call(
                context,
                dispatch,
                request.model_name,
                "ModelInfer",
                lambda: bounded(lambda: infer(dispatch, request, header), context.time_remaining()),
            )

        def ModelStreamInfer(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
            header = _sequence_header(context)
            for request in request_iterator:
                call = Call("GRPC", dispatch.metric_name(request.model_name), "ModelStreamInfer")
                try:
                    response = bounded(functools.partial(infer, dispatch, request, header), None)
                except Exception as error:
                    code, message, _ = wire_error(error)
                    dispatch.record(call, code)
                    yield pb2.ModelStreamInferResponse(error_message=grpc_message(message))
                    continue
                dispatch.record(call, Code.OK)
                yield pb2.ModelStreamInferResponse(infer_response=response)

    protos.pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(), server)


def start_inference_server(
    dispatch: Dispatch,
    address: str,
    workers: int = 8,
    max_message_bytes: int = -1,
    health: Any = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    max_concurrent_rpcs: int | None = DEFAULT_MAX_CONCURRENT_RPCS,
    credentials: Any = None,
) -> Any:
    """Bind `address` ("host:port") with the inference service (and `health`, a
    :class:`rnnkit_serving.fronts.grpc.health.Health`), start serving, return the ``grpc.Server``. The same bounds as
    the TF Serving front: `timeout_ms` per inference, `max_concurrent_rpcs` calls at once, bytes
    that do not parse answered ``INVALID_ARGUMENT``; `credentials` makes the port TLS-only.

    Each open ModelStreamInfer stream holds one of the server's worker threads (and one of the
    `max_concurrent_rpcs`) while it lives."""
    import grpc

    threads = dispatch.worker_threads(workers)
    work = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rnnkit-kserve-work")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rnnkit-kserve"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        interceptors=[UndecodableRequests()],
    )
    add_inference_service(server, dispatch, work, timeout_ms)
    if health is not None:
        health.add_to(server)
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        work.shutdown(wait=False)
        raise OSError(f"cannot bind the KServe v2 gRPC port {address}")
    server.start()
    return server


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("rnnkit")
    except Exception:  # not installed as a distribution
        return "unknown"
