"""The model repository format: the one contract between the exporter (writer) and the server (reader).

``rnnkit export`` writes, and ``rnnkit serve`` reads, this tree (docs/ARCHITECTURE.md, contract 3)::

    <base>/models.config                       TF Serving --model_config_file
    <base>/<name>/config.pbtxt                 Triton
    <base>/<name>/<version>/
        saved_model.pb, variables/             TF Serving (signatures below)
        assets.extra/tf_serving_warmup_requests
        model.onnx, step.onnx                  fused ONNX graphs, full sequence and streaming step
        encoder.onnx, decoder_step.onnx        encoder-decoder models
        model.<variant>.onnx ...               reduced-precision variants, published behind a gate
        rnnkit.json                            the manifest (``MANIFEST_FORMAT``)

Every name both sides use is defined here once; the exporter imports this module (pure Python, no
dependency) and nothing else of the server. A change of the format is a change of
``MANIFEST_FORMAT``, which the server checks before it reads anything else.
"""

from __future__ import annotations

import os

# rnnkit.json: the manifest the server trusts; `format` is checked first
MANIFEST = "rnnkit.json"
MANIFEST_FORMAT = 1

# signature names: the SavedModel's signatures, the manifest's, the wire's `signature_name`
DEFAULT_SIGNATURE = "serving_default"
STEP_SIGNATURE = "step"
# encoder-decoder models: source inputs -> the decoder's initial states, and the decoder's step graph
ENCODER_SIGNATURE = "encoder"
DECODER_STEP_SIGNATURE = "decoder_step"

# `streaming.mode` of the manifest: a step graph, an encoder + decoder step graph, no streaming
# graph (`streaming.reason` says why), or streaming switched off at export
STREAMING_STEP = "step"
STREAMING_ENCODER_DECODER = "encoder_decoder"
STREAMING_NONE = "none"
STREAMING_OFF = "off"

# files of a version directory
SAVED_MODEL_FILE = "saved_model.pb"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODEL_FILE = "model.onnx"
STEP_FILE = "step.onnx"
ENCODER_FILE = "encoder.onnx"
DECODER_STEP_FILE = "decoder_step.onnx"
# signature -> the ONNX graph that runs it (fp32)
ONNX_FILES: dict[str, str] = {
    DEFAULT_SIGNATURE: MODEL_FILE,
    STEP_SIGNATURE: STEP_FILE,
    ENCODER_SIGNATURE: ENCODER_FILE,
    DECODER_STEP_SIGNATURE: DECODER_STEP_FILE,
}
GRAPH_FILES = tuple(ONNX_FILES.values())

# files of the repository root and of a model directory
MODELS_CONFIG_FILE = "models.config"
TRITON_CONFIG_FILE = "config.pbtxt"

# formats a version may carry (`formats` in the manifest)
SAVEDMODEL_FORMAT = "savedmodel"
ONNX_FORMAT = "onnx"
FORMATS = (SAVEDMODEL_FORMAT, ONNX_FORMAT)

# numeric precisions: fp32 is the exported graph itself, the others are gated variants
FP32 = "fp32"
INT8 = "int8"
FP16 = "fp16"
VARIANTS = (INT8, FP16)

# dtypes a manifest may name (numpy names); anything else is refused at load time
SUPPORTED_DTYPES = ("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool", "str")


# How every reader runs int8 graphs: ONNX Runtime's default u8 x s8 kernels on x86 CPUs without VNNI
# add pairs of products in 16 bits, which overflow for weights outside [-64, 63] (measured: the int8
# variant of a small LSTM classifier agreed with fp32 on 0.905 of its arg-maxes on an AVX2-only EPYC,
# 0.995 with this entry). The entry makes those kernels exact; on VNNI and ARM CPUs it changes nothing.
# The export gate and the server both set it, so a published variant runs as it was judged. (Triton's
# ONNX Runtime backend does not set it: on such CPUs its int8 answers differ from the gate's.)
INT8_EXACT_SESSION_CONFIG = ("session.x64quantprecision", "1")


def variant_file(graph_file: str, variant: str) -> str:
    """``model.onnx`` -> ``model.int8.onnx`` (fp32 is the file itself)."""
    if variant == FP32:
        return graph_file
    stem, extension = os.path.splitext(graph_file)
    return f"{stem}.{variant}{extension}"
