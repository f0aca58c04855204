"""rnnkit SimpleRNNCell -> ONNX RNN (one direction)."""

from __future__ import annotations

import numpy as np

from rnnkit.layers import SimpleRNNCell
from rnnkit_export.onnx.converters.registry import (
    FusedDirection,
    activation_key,
    common_checks,
    register_converter,
    weights,
)


@register_converter(SimpleRNNCell)
def convert_simple_rnn(cell: SimpleRNNCell) -> FusedDirection:
    owner = f"SimpleRNNCell '{cell.name}'"
    common_checks(cell, owner)
    act = activation_key(cell.activation, owner, "activation")
    kernel, recurrent, bias = weights(cell)
    B = None if bias is None else np.concatenate([bias, np.zeros_like(bias)])
    return FusedDirection("RNN", cell.units, kernel.T, recurrent.T, B, None, [act], {})
