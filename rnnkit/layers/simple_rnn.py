"""Vanilla (Elman) RNN: the cell and the layer."""

from __future__ import annotations

import keras
from keras import ops

from rnnkit import gate_order
from rnnkit.layers.cell_base import RecurrentCell
from rnnkit.layers.recurrent import RecurrentLayer


@keras.saving.register_keras_serializable(package="rnnkit")
class SimpleRNNCell(RecurrentCell):
    """One vanilla RNN step; `rnnkit.layers.SimpleRNN` runs it over time.

    Equations (one block, ``gate_order.KERAS_SIMPLE``):
        h = activation(x @ kernel + h_prev @ recurrent_kernel + bias)
        # kernel: (features, units); recurrent_kernel: (units, units); bias: (units,)

    The state is ``h`` alone; the output equals the new state.
    """

    GATES = gate_order.KERAS_SIMPLE

    def __init__(self, units: int, activation="tanh", **kwargs):
        super().__init__(units, activation=activation, **kwargs)
        self.state_size = self.units

    def call(self, inputs, states, training=False):
        nested = isinstance(states, (list, tuple))
        h_prev = states[0] if nested else states
        x, h_in = self.dropped(inputs, h_prev, training)
        z = ops.matmul(x, self.kernel) + ops.matmul(h_in, self.recurrent_kernel)
        if self.bias is not None:
            z = z + self.bias
        h = self.activation(z)
        return h, ([h] if nested else h)


@keras.saving.register_keras_serializable(package="rnnkit")
class SimpleRNN(RecurrentLayer):
    """Vanilla RNN layer, weight-compatible with ``keras.layers.SimpleRNN``.

    Args: ``units``, ``activation`` and the cell options of ``SimpleRNNCell``
    (initializers, regularizers, constraints, ``dropout``, ``recurrent_dropout``, ``seed``);
    ``return_sequences``, ``return_state``, ``go_backwards``, ``stateful``, ``unroll``,
    ``zero_output_for_mask`` as in ``keras.layers.RNN``.

Weights (one ``SimpleRNNCell``, names and shapes as ``keras.layers.SimpleRNN``):
``kernel (features, units)``, ``recurrent_kernel (units, units)``, ``bias (units,)``.
    """

    CELL_CLASS = SimpleRNNCell
    STATE_NAMES = ("h",)

    def __init__(self, units: int, activation="tanh", use_bias: bool = True, **kwargs):
        super().__init__(units, {"activation": activation, "use_bias": use_bias}, **kwargs)
