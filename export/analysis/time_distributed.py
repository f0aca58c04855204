"""``TimeDistributed(layer)`` as the layer on the flattened batch x time axis, for tracing.

Keras runs ``TimeDistributed`` as a loop over time steps (``vectorized_map`` when the time
axis is dynamic), which tf2onnx turns into an ONNX ``Loop``. Every wrapped layer sees one
step at a time, so the same values come from reshaping ``[B, T, ...]`` to ``[B*T, ...]``,
applying the layer once (its mask reshaped alike) and reshaping back; for ``Dense`` (a
MatMul on the last axis) the reshape is not even needed. ``flattened_time_distributed``
swaps that call in on the model's TimeDistributed layers for the duration of a trace.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import keras
from keras import ops

# Wrapped layers that already act on the last axis of any rank: called on [B, T, ...] directly.
_LAST_AXIS_LAYERS: tuple[type, ...] = (keras.layers.Dense, keras.layers.Activation, keras.layers.Dropout)


def _merge_leading(tensor: Any) -> Any:
    shape = ops.shape(tensor)
    rest = [shape[i] if d is None else d for i, d in enumerate(tensor.shape) if i >= 2]
    return ops.reshape(tensor, [-1, *rest])


def _split_leading(tensor: Any, batch: Any, steps: Any) -> Any:
    shape = ops.shape(tensor)
    rest = [shape[i] if d is None else d for i, d in enumerate(tensor.shape) if i >= 1]
    return ops.reshape(tensor, [batch, steps, *rest])


def flat_call(self: Any, inputs: Any, training: Any = None, mask: Any = None) -> Any:
    """TimeDistributed.call without a loop over time (same values: each step is independent)."""
    inner = self.layer
    kwargs: dict[str, Any] = {}
    if inner._call_has_training_arg:
        kwargs["training"] = training
    if any(isinstance(inner, kind) for kind in _LAST_AXIS_LAYERS):
        if inner._call_has_mask_arg and mask is not None:
            kwargs["mask"] = mask
        return inner.call(inputs, **kwargs)
    shape = ops.shape(inputs)
    batch, steps = shape[0], shape[1]
    if inner._call_has_mask_arg and mask is not None:
        kwargs["mask"] = ops.reshape(mask, [-1, *[ops.shape(mask)[i] for i in range(2, len(mask.shape))]])
    outputs = inner.call(_merge_leading(inputs), **kwargs)
    return keras.tree.map_structure(lambda y: _split_leading(y, batch, steps), outputs)


def time_distributed_layers(model: Any) -> list[Any]:
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.TimeDistributed)
    ]


@contextlib.contextmanager
def flattened_time_distributed(*models: Any) -> Iterator[list[str]]:
    """Inside the block, the TimeDistributed layers of `models` run ``flat_call``; yields their names."""
    patched: list[Any] = []
    for model in models:
        for layer in time_distributed_layers(model):
            if all(layer is not p for p in patched):
                patched.append(layer)
    try:
        for layer in patched:
            object.__setattr__(layer, "call", types.MethodType(flat_call, layer))
        yield [layer.name for layer in patched]
    finally:
        for layer in patched:
            with contextlib.suppress(AttributeError):
                object.__delattr__(layer, "call")
