"""The converter registry and what a converter returns.

Unlike tf2onnx's pattern matchers, a miss is never silent: ``converter_for`` raises
``UnfusableError`` with the reason, and the exporter records it (or fails with --strict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class UnfusableError(Exception):
    """A layer that cannot become a fused ONNX op; the message says why."""


@dataclass
class FusedDirection:
    """One direction of a fused ONNX recurrent op, in ONNX layout (layout=0)."""

    op_type: str  # "LSTM" | "GRU" | "RNN"
    hidden_size: int
    W: np.ndarray  # [gates*H, D]
    R: np.ndarray  # [gates*H, H]
    B: np.ndarray | None  # [2*gates*H] = [Wb | Rb]
    P: np.ndarray | None = None  # LSTM peepholes [3H], order i, o, f
    activations: list[str] = field(default_factory=list)  # ONNX activation keys, see ACTIVATIONS
    attributes: dict[str, Any] = field(default_factory=dict)  # e.g. linear_before_reset
    n_states: int = 1  # LSTM: 2 (h, c)


Converter = Callable[[Any], FusedDirection]
_CONVERTERS: dict[type, Converter] = {}


def register_converter(cell_class: type) -> Callable[[Converter], Converter]:
    def decorate(fn: Converter) -> Converter:
        _CONVERTERS[cell_class] = fn
        return fn

    return decorate


def converter_for(cell: Any) -> Converter:
    for cls in type(cell).__mro__:
        if cls in _CONVERTERS:
            return _CONVERTERS[cls]
    raise UnfusableError(
        f"no fused-op converter for cell class {type(cell).__name__}; known: {sorted(c.__name__ for c in _CONVERTERS)}"
    )


# Keras activation name -> (ONNX activation, alpha, beta). Keras 3 hard_sigmoid is relu6(x+3)/6.
ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
    "linear": ("Affine", 1.0, 0.0),
    "elu": ("Elu", 1.0, None),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
}


def activation_key(fn: Any, owner: str, argument: str) -> str:
    """The Keras name of an activation function, checked against the fusable set."""
    import keras

    name = keras.activations.serialize(fn) if fn is not None else "linear"
    if isinstance(name, dict):
        name = name.get("config", {}).get("name", str(name))
    if name not in ACTIVATIONS:
        raise UnfusableError(f"{owner}: {argument}={name!r} has no ONNX equivalent (fusable: {sorted(ACTIVATIONS)})")
    return str(name)


def common_checks(cell: Any, owner: str) -> None:
    if cell.compute_dtype != "float32":
        raise UnfusableError(f"{owner}: compute dtype {cell.compute_dtype} (fused export supports float32)")


def read(variable: Any) -> np.ndarray:
    """A variable's current value as float32 NumPy, also while a tf.function is tracing."""
    import tensorflow as tf

    with tf.init_scope():
        return np.array(variable.numpy(), dtype=np.float32)


def weights(cell: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    bias = None if getattr(cell, "bias", None) is None else read(cell.bias)
    return read(cell.kernel), read(cell.recurrent_kernel), bias
