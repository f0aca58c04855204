"""Swap native ``keras.layers`` RNN layers for their weight-compatible rnnkit twins.

rnnkit layers are weight-compatible with Keras's (same names, shapes, order), so a model
with ``keras.layers.LSTM/GRU/SimpleRNN/Bidirectional`` is cloned with twins and the same
weights; the twins then take the fused-op path (and never trace cuDNN ops).
"""

from __future__ import annotations

from typing import Any

import keras

from rnnkit import layers as rk

NATIVE_TWINS: dict[type, Any] = {
    keras.layers.LSTM: rk.LSTM,
    keras.layers.GRU: rk.GRU,
    keras.layers.SimpleRNN: rk.SimpleRNN,
}
_DROPPED_KEYS = ("use_cudnn", "implementation")


def _twin_of_rnn(layer: Any) -> Any:
    config = {k: v for k, v in layer.get_config().items() if k not in _DROPPED_KEYS}
    return NATIVE_TWINS[type(layer)].from_config(config)


def _is_native_bidirectional(layer: Any) -> bool:
    return type(layer) is keras.layers.Bidirectional and type(layer.forward_layer) in NATIVE_TWINS


def twin_of(layer: Any) -> Any:
    """The rnnkit twin of a native layer (unbuilt), or the layer itself."""
    if type(layer) in NATIVE_TWINS:
        return _twin_of_rnn(layer)
    if _is_native_bidirectional(layer):
        forward = _twin_of_rnn(layer.forward_layer)
        backward = _twin_of_rnn(layer.backward_layer)
        return rk.Bidirectional(forward, merge_mode=layer.merge_mode, backward_layer=backward, name=layer.name)
    return layer


def unswapped_native_layers(model: Any) -> dict[str, str]:
    """Native RNN layers still in `model` (nested inside other layers) -> why they are not fused."""
    return {
        layer.name: (
            f"keras.layers.{type(layer).__name__} nested inside another layer is not replaced by its rnnkit "
            "twin (only the model's own layers are); tf2onnx converts it"
        )
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if type(layer) in NATIVE_TWINS or _is_native_bidirectional(layer)
    }


def with_rnnkit_twins(model: Any) -> tuple[Any, list[str]]:
    """Return (model with twins and the same weights, names of swapped layers)."""
    swapped = [layer.name for layer in model.layers if type(layer) in NATIVE_TWINS or _is_native_bidirectional(layer)]
    if not swapped:
        return model, []
    clone = keras.models.clone_model(model, clone_function=twin_of)
    clone.set_weights(model.get_weights())
    return clone, swapped
