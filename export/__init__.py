"""rnnkit export: one call writes a model repository for TF Serving, Triton and rnnkit's server.

``export_model(model, base_path, name, options=None, **overrides) -> ExportReport`` (an
``ExportOptions`` and/or its fields as keyword arguments) writes a version directory with
a SavedModel (``serving_default`` + ``step``, warmup file), ONNX with every recurrent layer as
one fused LSTM/GRU/RNN op (``model.onnx``, ``step.onnx``), ``rnnkit.json``, and the server
configs, after checking Keras vs SavedModel vs ONNX Runtime parity. Step graphs exist only for
models that provably stream chunk by chunk (``rnnkit_export.analysis.streamability``); encoder-decoder models
get ``encoder`` + ``decoder_step`` graphs instead.

Heavy imports (TensorFlow, tf2onnx) happen on first use of ``export_model``, not on import.
"""

from typing import TYPE_CHECKING, Any

from rnnkit_export.report import DEFAULT_TOLERANCE, FORMATS, ExportError, ExportReport

if TYPE_CHECKING:
    from rnnkit_export.api import ExportOptions, export_model

__all__ = ["DEFAULT_TOLERANCE", "FORMATS", "ExportError", "ExportOptions", "ExportReport", "export_model"]
_LAZY = ("export_model", "ExportOptions")  # rnnkit_export.api imports TensorFlow


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rnnkit_export import api

        return getattr(api, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
