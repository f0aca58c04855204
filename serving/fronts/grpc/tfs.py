"""The TF Serving gRPC front: PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus), on grpcio with the servicer classes of ``tensorflow-serving-api``, so the
official client works unchanged.

Those generated modules import TensorFlow's proto modules; ``rnnkit_serving.codecs.tfs.protos`` loads them
without starting TensorFlow itself, inside :func:`start_grpc_server`.
Exceptions become gRPC statuses in one place (:func:`recorded_call`) via ``wire_error``, with the
same codes and texts as the REST front.

Bounds: at most ``max_concurrent_rpcs`` RPCs are accepted at once (grpcio answers the next one
``RESOURCE_EXHAUSTED``), and a ``Predict`` is answered ``DEADLINE_EXCEEDED`` after ``timeout_ms``
(``--grpc_timeout_in_ms``) or the client's own deadline, whichever is sooner: the work runs in a
separate pool (:meth:`rnnkit_serving.dispatch.Dispatch.in_worker_sync`), so the RPC thread answers on
time even while the model is still running.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

from rnnkit_serving.dispatch import Call, Dispatch, Target
from rnnkit_serving.errors import Code, grpc_message, invalid_argument, wire_error
from rnnkit_serving.runtime.predictor import Predictor

T = TypeVar("T")

TIMEOUT_FLAG = "--grpc_timeout_in_ms"
DEFAULT_TIMEOUT_MS = 30_000  # as REST's --rest_api_timeout_in_ms
DEFAULT_MAX_CONCURRENT_RPCS = 64  # x 16 MiB messages (--max_request_bytes): at most ~1 GiB of requests held


def recorded_call(context: Any, dispatch: Dispatch, model: str, api: str, job: Callable[[], T]) -> T:
    """Run `job`, record it, and turn an exception into the gRPC status of the same code and text."""
    import grpc

    call = Call("GRPC", dispatch.metric_name(model) if model else "", api)
    try:
        result = job()
    except Exception as error:
        code, message, _ = wire_error(error)
        dispatch.record(call, code)
        context.abort(grpc.StatusCode[code.name], grpc_message(message))
        raise  # unreachable: abort raises
    dispatch.record(call, Code.OK)
    return result


def start_grpc_server(
    dispatch: Dispatch,
    address: str,
    workers: int = 8,
    max_message_bytes: int = -1,
    tensor_content: bool = False,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    max_concurrent_rpcs: int | None = DEFAULT_MAX_CONCURRENT_RPCS,
    health: Any = None,
    credentials: Any = None,
) -> Any:
    """Bind `address` ("host:port"), start serving, return the ``grpc.Server`` (with `health`, a
    :class:`rnnkit_serving.fronts.grpc.health.Health`, registered beside the TF Serving services).

    `timeout_ms`: the server's deadline for a ``Predict`` (<= 0: only the client's);
    `max_concurrent_rpcs`: RPCs accepted at once, beyond it ``RESOURCE_EXHAUSTED`` (None: no bound);
    `credentials` (``grpc.ssl_server_credentials``, see :mod:`rnnkit_serving.config.tls`) makes the port TLS-only."""
    import grpc

    from rnnkit_serving.codecs.tfs import grpc as grpc_codec
    from rnnkit_serving.fronts.grpc.guard import UndecodableRequests
    from rnnkit_serving.codecs.tfs.protos import import_proto_modules

    model_service_pb2_grpc, prediction_service_pb2_grpc = import_proto_modules(
        "tensorflow_serving.apis.model_service_pb2_grpc", "tensorflow_serving.apis.prediction_service_pb2_grpc"
    )
    prediction_servicer: Any = prediction_service_pb2_grpc.PredictionServiceServicer
    model_servicer: Any = model_service_pb2_grpc.ModelServiceServicer

    grpc_codec.protos()  # load the messages now, not on the first request
    threads = dispatch.worker_threads(workers)
    work = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rnnkit-grpc-work")

    class PredictionService(prediction_servicer):
        def Predict(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                spec = grpc_codec.model_spec(request.model_spec)

                def decode(predictor: Predictor) -> grpc_codec.GrpcPredictRequest:
                    signature = predictor.signature(spec.signature_name)
                    return grpc_codec.decode_predict_request(request, signature, dispatch.element_budget(predictor))

                answer = dispatch.predict(Target(spec.name, spec.version, spec.label), decode)
                return grpc_codec.encode_predict_response(
                    {k: answer.outputs[k] for k in answer.request.outputs},
                    answer.model,
                    answer.version,
                    spec.signature_name,
                    tensor_content,
                )

            def timed() -> Any:
                return dispatch.in_worker_sync(work, job, timeout_ms, TIMEOUT_FLAG, context.time_remaining())

            return recorded_call(context, dispatch, request.model_spec.name, "Predict", timed)

        def GetModelMetadata(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                spec = grpc_codec.model_spec(request.model_spec)
                with dispatch.lease(Target(spec.name, spec.version, spec.label)) as predictor:
                    signatures = predictor.signatures
                return grpc_codec.metadata_response(request, predictor.name, predictor.version, signatures)

            return recorded_call(context, dispatch, request.model_spec.name, "GetModelMetadata", job)

    class ModelService(model_servicer):
        def GetModelStatus(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                if not request.HasField("model_spec"):
                    raise invalid_argument("Missing ModelSpec")
                spec = grpc_codec.model_spec(request.model_spec)
                return grpc_codec.status_response(dispatch.status(spec.name, spec.version))

            return recorded_call(context, dispatch, request.model_spec.name, "GetModelStatus", job)

    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rnnkit-grpc"),
        options=options,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        interceptors=[UndecodableRequests()],  # bytes that do not parse: INVALID_ARGUMENT, not INTERNAL
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    if health is not None:
        health.add_to(server)
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        work.shutdown(wait=False)
        raise OSError(f"cannot bind the gRPC port {address}")
    server.start()
    return server
