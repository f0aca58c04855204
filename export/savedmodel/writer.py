"""The TF-Serving half of a version directory: SavedModel with named signatures.

``serving_default`` takes the model's inputs by name (batch and time dynamic) and returns its
outputs by name (never ``output_0``). Streamable models also get ``step``; encoder-decoder models
get ``encoder`` and ``decoder_step`` instead (see ``rnnkit_export.streaming.step``).
rnnkit layers never trace cuDNN kernels, and native Keras RNN layers are swapped for their
rnnkit twins before export, so the graph holds no GPU-only op; ``gpu_only_ops`` checks that.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from rnnkit_export.analysis.model_io import ModelIO, TensorInfo
from rnnkit_export.analysis.time_distributed import flattened_time_distributed
from rnnkit_export.streaming.step import LoopStateSubstitute, StreamingPlan, step_function
from rnnkit_serving.core.repository_format import (
    DECODER_STEP_SIGNATURE,
    DEFAULT_SIGNATURE,
    ENCODER_SIGNATURE,
    SAVED_MODEL_FILE,
    STEP_SIGNATURE,
)

SERVE_TAG = "serve"
GPU_ONLY_OP_PREFIXES = ("CudnnRNN",)


def _specs(infos: list[TensorInfo]) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in infos]


def _write_savedmodel(model: Any, io: ModelIO, plan: StreamingPlan, directory: str) -> list[str]:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    names = io.input_names

    def serve(*tensors: Any) -> dict[str, Any]:
        return io.call(model, dict(zip(names, tensors)))

    archive.add_endpoint(DEFAULT_SIGNATURE, serve, input_signature=_specs(io.inputs))
    signatures = [DEFAULT_SIGNATURE]
    if plan.reason is None:
        step = step_function(model, io, plan, LoopStateSubstitute)
        archive.add_endpoint(STEP_SIGNATURE, step, input_signature=_specs(plan.step_inputs(io)))
        signatures.append(STEP_SIGNATURE)
    pair = plan.encoder_decoder
    if pair is not None:
        archive.add_endpoint(ENCODER_SIGNATURE, pair.encoder_function(), input_signature=_specs(pair.source))
        decoder_step = step_function(pair.decoder, pair.decoder_io, pair.plan, LoopStateSubstitute)
        archive.add_endpoint(
            DECODER_STEP_SIGNATURE, decoder_step, input_signature=_specs(pair.plan.step_inputs(pair.decoder_io))
        )
        signatures += [ENCODER_SIGNATURE, DECODER_STEP_SIGNATURE]
    archive.write_out(directory, verbose=False)
    return signatures


def write_savedmodel(model: Any, io: ModelIO, plan: StreamingPlan, directory: str) -> list[str]:
    """Write the SavedModel into `directory`; return the signature names.

    TimeDistributed layers are traced as their layer on the flattened batch x time axis (Keras's
    own dynamic-time path returns wrong shapes in a SavedModel; see ``time_distributed.py``).
    rnnkit layers run their cell loop while tracing, even with ``use_cudnn=True``, so the
    SavedModel never holds cuDNN-only ops and runs on CPUs too.
    """
    from rnnkit.layers.cudnn import cell_loop_only

    with flattened_time_distributed(model), cell_loop_only():
        return _write_savedmodel(model, io, plan, directory)


def gpu_only_ops(directory: str) -> list[str]:
    """Op types in the SavedModel (all graphs and functions) that have no CPU kernel."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(directory, SAVED_MODEL_FILE), "rb") as handle:
        proto.ParseFromString(handle.read())
    found: set[str] = set()
    for meta in proto.meta_graphs:
        nodes = list(meta.graph_def.node)
        for function in meta.graph_def.library.function:
            nodes.extend(function.node_def)
        found.update(n.op for n in nodes if n.op.startswith(GPU_ONLY_OP_PREFIXES))
    return sorted(found)
