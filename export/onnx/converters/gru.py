"""rnnkit GRUCell -> ONNX GRU (one direction). Gate order z, r, h is the same on both sides;
reset_after=True is ONNX's linear_before_reset=1 with the recurrent bias row in Rb."""

from __future__ import annotations

import numpy as np

from rnnkit.layers import GRUCell
from rnnkit_export.onnx.converters.registry import (
    FusedDirection,
    activation_key,
    common_checks,
    register_converter,
    weights,
)


@register_converter(GRUCell)
def convert_gru(cell: GRUCell) -> FusedDirection:
    owner = f"GRUCell '{cell.name}'"
    common_checks(cell, owner)
    act = activation_key(cell.activation, owner, "activation")
    rec = activation_key(cell.recurrent_activation, owner, "recurrent_activation")
    kernel_zrh, recurrent_zrh, bias = weights(cell)
    B_zrh = None
    if bias is not None:
        B_zrh = bias.reshape(-1) if cell.reset_after else np.concatenate([bias, np.zeros_like(bias)])
    return FusedDirection(
        "GRU",
        cell.units,
        kernel_zrh.T,
        recurrent_zrh.T,
        B_zrh,
        None,
        [rec, act],
        {"linear_before_reset": int(cell.reset_after)},
    )
