"""Per-cell converters: a cell's weights and config -> the inputs and attributes of one
direction of a fused ONNX LSTM / GRU / RNN op. One converter per file, looked up by class."""

from rnnkit_export.onnx.converters.registry import FusedDirection, UnfusableError, converter_for, register_converter

# Importing the converter modules registers them.
from rnnkit_export.onnx.converters import gru, lstm, simple_rnn  # noqa: E402,F401  isort: skip

__all__ = ["FusedDirection", "UnfusableError", "converter_for", "register_converter"]
