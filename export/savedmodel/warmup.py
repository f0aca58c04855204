"""``assets.extra/tf_serving_warmup_requests``: PredictionLog records TF Serving replays at load.

A few batch sizes x sequence lengths per signature (each new shape can trigger kernel
selection and allocator growth), written with the tensorflow-serving-api protos. rnnkit's
own server replays the same file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rnnkit_export.analysis.model_io import TensorInfo
from rnnkit_serving.core.repository_format import WARMUP_FILE

BATCH_SIZES = (1, 8)
SEQUENCE_LENGTHS = (8, 32)
MAX_RECORDS = 1000  # TF Serving refuses to load a model with more


def sample_inputs(infos: list[TensorInfo], batch: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs: dynamic axis 0 = batch, other dynamic axes = steps."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for info in infos:
        shape = [batch] + [steps if d is None else d for d in info.shape[1:]]
        if np.issubdtype(np.dtype(info.dtype), np.integer):
            arrays[info.name] = rng.integers(1, 5, size=shape).astype(info.dtype)
        else:
            arrays[info.name] = rng.normal(size=shape).astype(info.dtype)
    return arrays


def write_warmup(directory: str, model_name: str, signatures: dict[str, list[TensorInfo]]) -> int:
    """Write the warmup file; return the number of records."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = os.path.join(directory, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for signature, infos in signatures.items():
            for batch in BATCH_SIZES:
                for steps in SEQUENCE_LENGTHS:
                    request = predict_pb2.PredictRequest()
                    request.model_spec.name = model_name
                    request.model_spec.signature_name = signature
                    for name, array in sample_inputs(infos, batch, steps).items():
                        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
                    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                    writer.write(log.SerializeToString())
                    count += 1
    if count > MAX_RECORDS:
        raise ValueError(f"{count} warmup records; TF Serving accepts at most {MAX_RECORDS}")
    return count


def read_warmup(directory: str) -> list[Any]:
    """The PredictRequests stored in a version directory's warmup file."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(os.path.join(directory, WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests
