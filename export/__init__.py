"""rnnkit export: one call writes a model repository for TF Serving, Triton and rnnkit's server.

``export_model(model, base_path, name, ...) -> ExportReport`` writes a version directory with
a SavedModel (``serving_default`` + ``step``, warmup file), ONNX with every recurrent layer as
one fused LSTM/GRU/RNN op (``model.onnx``, ``step.onnx``), ``rnnkit.json``, and the server
configs, after checking Keras vs SavedModel vs ONNX Runtime parity. Step graphs exist only for
models that provably stream chunk by chunk (``rnnkit_export.analysis.streamability``); encoder-decoder models
get ``encoder`` + ``decoder_step`` graphs instead.

Heavy imports (TensorFlow, tf2onnx) happen on first use of ``export_model``, not on import.
"""

from typing import Any

from rnnkit_export.report import DEFAULT_TOLERANCE, FORMATS, ExportError, ExportReport

__all__ = ["DEFAULT_TOLERANCE", "FORMATS", "ExportError", "ExportReport", "export_model"]


def __getattr__(name: str) -> Any:
    if name == "export_model":
        from rnnkit_export.api import export_model

        return export_model
    raise AttributeError(f"module 'export' has no attribute {name!r}")
