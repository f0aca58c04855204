"""The TF Serving gRPC front: PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus), on grpcio with the servicer classes of ``tensorflow-serving-api``, so the
official client works unchanged.

Those generated modules import TensorFlow's proto modules; ``rnnkit_serving.codecs.tfs.protos`` loads them
without starting TensorFlow itself, when this module is imported (only the gRPC front imports it).
Exceptions become gRPC statuses in one place (:func:`~rnnkit_serving.fronts.grpc.builder.recorded_call`)
via ``wire_error``, with the same codes and texts as the REST front.

Bounds: at most ``max_concurrent_rpcs`` RPCs are accepted at once (grpcio answers the next one
``RESOURCE_EXHAUSTED``), and a ``Predict`` is answered ``DEADLINE_EXCEEDED`` after ``timeout_ms``
(``--grpc_timeout_in_ms``) or the client's own deadline, whichever is sooner: the work runs in a
separate pool (:meth:`rnnkit_serving.dispatch.Dispatch.in_worker_sync`), so the RPC thread answers on
time even while the model is still running. The server itself is built by
:func:`rnnkit_serving.fronts.grpc.builder.build_server`, as the KServe v2 gRPC front's is.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

from rnnkit_serving.codecs.tfs import grpc as grpc_codec
from rnnkit_serving.codecs.tfs.protos import import_proto_modules
from rnnkit_serving.config.connections import DEFAULT_CONNECTIONS, ConnectionLimits
from rnnkit_serving.core import defaults
from rnnkit_serving.dispatch import Dispatch, ModelView, Target
from rnnkit_serving.errors import invalid_argument
from rnnkit_serving.fronts.grpc.builder import TIMEOUT_FLAG, build_server, recorded_call

SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")

_model_service_pb2_grpc, _prediction_service_pb2_grpc = import_proto_modules(
    "tensorflow_serving.apis.model_service_pb2_grpc", "tensorflow_serving.apis.prediction_service_pb2_grpc"
)
_PredictionServiceBase: Any = _prediction_service_pb2_grpc.PredictionServiceServicer
_ModelServiceBase: Any = _model_service_pb2_grpc.ModelServiceServicer


class PredictionServicer(_PredictionServiceBase):
    """``tensorflow.serving.PredictionService`` over a dispatch: Predict and GetModelMetadata
    (Classify, Regress, MultiInference answer UNIMPLEMENTED, as the generated base does).

    `work`: the pool a Predict runs in, answered ``DEADLINE_EXCEEDED`` after `timeout_ms` (<= 0: only
    the client's deadline); `tensor_content`: answer with ``tensor_content`` instead of typed ``*_val``."""

    def __init__(
        self,
        dispatch: Dispatch,
        work: futures.Executor,
        timeout_ms: int = defaults.GRPC_TIMEOUT_MS,
        tensor_content: bool = False,
    ) -> None:
        self.dispatch = dispatch
        self.work = work
        self.timeout_ms = timeout_ms
        self.tensor_content = tensor_content

    def Predict(self, request: Any, context: Any) -> Any:
        dispatch = self.dispatch

        def job() -> Any:
            spec = grpc_codec.model_spec(request.model_spec)

            def decode(model: ModelView) -> grpc_codec.GrpcPredictRequest:
                signature = model.signature(spec.signature_name)
                return grpc_codec.decode_predict_request(request, signature, dispatch.element_budget(model))

            answer = dispatch.predict(Target(spec.name, spec.version, spec.label), decode)
            return grpc_codec.encode_predict_response(
                {k: answer.outputs[k] for k in answer.request.outputs},
                answer.model,
                answer.version,
                spec.signature_name,
                self.tensor_content,
            )

        def timed() -> Any:
            return dispatch.in_worker_sync(self.work, job, self.timeout_ms, TIMEOUT_FLAG, context.time_remaining())

        return recorded_call(context, dispatch, request.model_spec.name, "Predict", timed)

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        def job() -> Any:
            spec = grpc_codec.model_spec(request.model_spec)
            name, version, signatures = self.dispatch.inspect(
                Target(spec.name, spec.version, spec.label), lambda model: (model.name, model.version, model.signatures)
            )
            return grpc_codec.metadata_response(request, name, version, signatures)

        return recorded_call(context, self.dispatch, request.model_spec.name, "GetModelMetadata", job)


class ModelServicer(_ModelServiceBase):
    """``tensorflow.serving.ModelService`` over a dispatch: GetModelStatus (HandleReloadConfigRequest
    answers UNIMPLEMENTED: the served models follow the base paths and the config file)."""

    def __init__(self, dispatch: Dispatch) -> None:
        self.dispatch = dispatch

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        def job() -> Any:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            spec = grpc_codec.model_spec(request.model_spec)
            return grpc_codec.status_response(self.dispatch.status(spec.name, spec.version))

        return recorded_call(context, self.dispatch, request.model_spec.name, "GetModelStatus", job)


def add_tf_serving_services(
    server: Any,
    dispatch: Dispatch,
    work: futures.Executor,
    timeout_ms: int = defaults.GRPC_TIMEOUT_MS,
    tensor_content: bool = False,
) -> None:
    """Register PredictionService and ModelService over `dispatch` on `server` (a ``grpc.Server``)."""
    _prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(dispatch, work, timeout_ms, tensor_content), server
    )
    _model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(dispatch), server)


def start_grpc_server(
    dispatch: Dispatch,
    address: str,
    workers: int = defaults.GRPC_WORKERS,
    max_message_bytes: int = -1,
    tensor_content: bool = False,
    timeout_ms: int = defaults.GRPC_TIMEOUT_MS,
    max_concurrent_rpcs: int | None = defaults.GRPC_MAX_CONCURRENT_RPCS,
    health: Any = None,
    credentials: Any = None,
    connections: ConnectionLimits = DEFAULT_CONNECTIONS,
) -> Any:
    """Bind `address` ("host:port"), start serving, return the ``grpc.Server`` (with `health`, a
    :class:`rnnkit_serving.fronts.grpc.health.Health`, registered beside the TF Serving services).

    `timeout_ms`: the server's deadline for a ``Predict`` (<= 0: only the client's);
    `max_concurrent_rpcs`: RPCs accepted at once, beyond it ``RESOURCE_EXHAUSTED`` (None: no bound);
    `credentials` (``grpc.ssl_server_credentials``, see :mod:`rnnkit_serving.config.tls`) makes the port TLS-only."""
    grpc_codec.protos()  # load the messages now, not on the first request
    return build_server(
        dispatch,
        address,
        lambda server, work: add_tf_serving_services(server, dispatch, work, timeout_ms, tensor_content),
        port_name="gRPC",
        thread_prefix="rnnkit-grpc",
        workers=workers,
        max_message_bytes=max_message_bytes,
        max_concurrent_rpcs=max_concurrent_rpcs,
        health=health,
        credentials=credentials,
        connections=connections,
    )
