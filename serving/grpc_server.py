"""The TF Serving gRPC front: PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus), on grpcio with the servicer classes of ``tensorflow-serving-api``, so the
official client works unchanged.

Those generated modules import TensorFlow's proto modules; ``serving.tfs_protos`` loads them
without starting TensorFlow itself, inside :func:`start_grpc_server`.
Exceptions become gRPC statuses in one place (:func:`_call`) via ``wire_error``, with the
same codes and texts as the REST front.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

from serving.batching import Batcher
from serving.errors import Code, grpc_message, invalid_argument, wire_error
from serving.metrics import Metrics
from serving.registry import ModelRegistry

T = TypeVar("T")


def _call(context: Any, metrics: Metrics, registry: ModelRegistry, model: str, api: str, job: Callable[[], T]) -> T:
    import grpc

    started = time.perf_counter()
    label = model if registry.model(model) is not None else "(unknown)"
    try:
        result = job()
    except Exception as error:
        code, message, _ = wire_error(error)
        metrics.record(label, api, "GRPC", code, (time.perf_counter() - started) * 1e6)
        context.abort(grpc.StatusCode[code.name], grpc_message(message))
        raise  # unreachable: abort raises
    metrics.record(label, api, "GRPC", Code.OK, (time.perf_counter() - started) * 1e6)
    return result


def start_grpc_server(
    registry: ModelRegistry,
    address: str,
    metrics: Metrics,
    workers: int = 8,
    max_message_bytes: int = -1,
    tensor_content: bool = False,
    batcher: Batcher | None = None,
) -> Any:
    """Bind `address` ("host:port"), start serving, return the ``grpc.Server``."""
    import grpc

    from serving import grpc_codec
    from serving.tfs_protos import import_proto_modules

    model_service_pb2_grpc, prediction_service_pb2_grpc = import_proto_modules(
        "tensorflow_serving.apis.model_service_pb2_grpc", "tensorflow_serving.apis.prediction_service_pb2_grpc"
    )
    prediction_servicer: Any = prediction_service_pb2_grpc.PredictionServiceServicer
    model_servicer: Any = model_service_pb2_grpc.ModelServiceServicer

    grpc_codec.protos()  # load the messages now, not on the first request

    class PredictionService(prediction_servicer):
        def Predict(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                spec = grpc_codec.model_spec(request.model_spec)
                with registry.lease(spec.name, spec.version, spec.label) as predictor:
                    signature = predictor.signature(spec.signature_name)
                    inputs, wanted = grpc_codec.decode_predict_request(request, signature)
                    if batcher is not None:
                        outputs = batcher.predict(predictor, inputs, spec.signature_name)
                    else:
                        outputs = predictor.predict(inputs, spec.signature_name)
                return grpc_codec.encode_predict_response(
                    {k: outputs[k] for k in wanted},
                    predictor.name,
                    predictor.version,
                    spec.signature_name,
                    tensor_content,
                )

            return _call(context, metrics, registry, request.model_spec.name, "Predict", job)

        def GetModelMetadata(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                spec = grpc_codec.model_spec(request.model_spec)
                with registry.lease(spec.name, spec.version, spec.label) as predictor:
                    signatures = predictor.signatures
                return grpc_codec.metadata_response(request, predictor.name, predictor.version, signatures)

            return _call(context, metrics, registry, request.model_spec.name, "GetModelMetadata", job)

    class ModelService(model_servicer):
        def GetModelStatus(self, request: Any, context: Any) -> Any:
            def job() -> Any:
                if not request.HasField("model_spec"):
                    raise invalid_argument("Missing ModelSpec")
                spec = grpc_codec.model_spec(request.model_spec)
                return grpc_codec.status_response(registry.status(spec.name, spec.version))

            return _call(context, metrics, registry, request.model_spec.name, "GetModelStatus", job)

    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
    ]
    if batcher is not None:  # request threads wait for their batch: enough of them to fill batches
        workers += min(batcher.params.max_batch_size * batcher.params.num_batch_threads, 512)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rnnkit-grpc"), options=options
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    server.start()
    return server
