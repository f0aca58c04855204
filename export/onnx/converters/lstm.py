"""rnnkit LSTMCell -> ONNX LSTM (one direction)."""

from __future__ import annotations

import numpy as np

from rnnkit import gate_order
from rnnkit.layers import LSTMCell
from rnnkit_export.onnx.converters.registry import (
    FusedDirection,
    activation_key,
    common_checks,
    read,
    register_converter,
    weights,
)

ONNX_LSTM = "iofc"  # gate order of ONNX W/R/B
ONNX_PEEPHOLE = "iof"  # order of ONNX P


@register_converter(LSTMCell)
def convert_lstm(cell: LSTMCell) -> FusedDirection:
    owner = f"LSTMCell '{cell.name}'"
    common_checks(cell, owner)
    act = activation_key(cell.activation, owner, "activation")
    rec = activation_key(cell.recurrent_activation, owner, "recurrent_activation")
    kernel_ifco, recurrent_ifco, bias_ifco = weights(cell)
    perm = [gate_order.KERAS_LSTM.index(g) for g in ONNX_LSTM]
    units = cell.units

    def reorder(matrix_ifco: np.ndarray) -> np.ndarray:
        blocks = np.split(matrix_ifco, 4, axis=-1)
        return np.concatenate([blocks[p] for p in perm], axis=-1)

    W_iofc = reorder(kernel_ifco).T
    R_iofc = reorder(recurrent_ifco).T
    B_iofc = None
    if bias_ifco is not None:
        B_iofc = np.concatenate([reorder(bias_ifco), np.zeros(4 * units, np.float32)])
    P_iof = None
    if cell.peephole_kernel is not None:
        peep_ifo = read(cell.peephole_kernel)
        P_iof = np.concatenate([peep_ifo[gate_order.RNNKIT_PEEPHOLE.index(g)] for g in ONNX_PEEPHOLE])
    return FusedDirection("LSTM", units, W_iofc, R_iofc, B_iofc, P_iof, [rec, act, act], {}, n_states=2)
