"""Gated recurrent unit, reset-after (cuDNN) and reset-before (original) forms."""

from __future__ import annotations

import keras
from keras import activations, ops

from rnnkit import gate_order
from rnnkit.keras_compat import fused_backend as backend
from rnnkit.layers import cudnn
from rnnkit.layers.cell_base import RecurrentCell
from rnnkit.layers.recurrent import RecurrentLayer


@keras.saving.register_keras_serializable(package="rnnkit")
class GRUCell(RecurrentCell):
    """One GRU step; `rnnkit.layers.GRU` runs it over time.

    Equations (gate order z, r, h — ``gate_order.KERAS_GRU == "zrh"``):
        x_z, x_r, x_h = split(x @ kernel + b_in, 3)           # kernel: (features, 3*units)
        z = recurrent_activation(x_z + h_prev @ R_z [+ b_rec_z])
        r = recurrent_activation(x_r + h_prev @ R_r [+ b_rec_r])
        reset_after=True:   h~ = activation(x_h + r * (h_prev @ R_h + b_rec_h))
        reset_after=False:  h~ = activation(x_h + (r * h_prev) @ R_h)
        h = z * h_prev + (1 - z) * h~

    The lecture's update gate u is 1 - z (h = (1-u)*h_prev + u*h~); rnnkit keeps Keras's
    and ONNX's z so weights are interchangeable. ``recurrent_kernel`` is (units, 3*units)
    with blocks R_z, R_r, R_h. Bias: (2, 3*units) = [b_in; b_rec] when ``reset_after``,
    else (3*units,) = b_in. State: ``h``.
    """

    GATES = gate_order.KERAS_GRU

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        reset_after: bool = True,
        **kwargs,
    ):
        super().__init__(units, activation=activation, use_bias=use_bias, **kwargs)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.reset_after = bool(reset_after)
        self.state_size = self.units

    def bias_shape(self) -> tuple[int, ...]:
        gates = len(self.GATES) * self.units
        return (2, gates) if self.reset_after else (gates,)

    def call(self, inputs, states, training=False):
        nested = isinstance(states, (list, tuple))
        h_prev = states[0] if nested else states
        x, h_in = self.dropped(inputs, h_prev, training)
        units = self.units
        x_proj = ops.matmul(x, self.kernel)
        if self.reset_after:
            h_proj = ops.matmul(h_in, self.recurrent_kernel)
            if self.bias is not None:
                x_proj = x_proj + self.bias[0]
                h_proj = h_proj + self.bias[1]
        else:
            h_proj = ops.matmul(h_in, self.recurrent_kernel[:, : 2 * units])
            if self.bias is not None:
                x_proj = x_proj + self.bias
        x_z, x_r, x_h = ops.split(x_proj, 3, axis=-1)
        z = self.recurrent_activation(x_z + h_proj[:, :units])
        r = self.recurrent_activation(x_r + h_proj[:, units : 2 * units])
        if self.reset_after:
            h_tilde = self.activation(x_h + r * h_proj[:, 2 * units :])
        else:
            h_tilde = self.activation(x_h + ops.matmul(r * h_in, self.recurrent_kernel[:, 2 * units :]))
        h = z * h_prev + (1.0 - z) * h_tilde
        return h, ([h] if nested else h)

    def get_config(self):
        config = {
            "recurrent_activation": activations.serialize(self.recurrent_activation),
            "reset_after": self.reset_after,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="rnnkit")
class GRU(RecurrentLayer):
    """GRU layer, weight-compatible with ``keras.layers.GRU`` (same ``reset_after``).

    Args: ``units``, ``activation``, ``recurrent_activation``, ``use_bias``,
    ``reset_after`` and the cell options of ``GRUCell``; ``return_sequences``,
    ``return_state``, ``go_backwards``, ``stateful``, ``unroll``, ``zero_output_for_mask``
    as in ``keras.layers.RNN``. State: ``h``.

    ``use_cudnn`` (``"auto"``, ``True``, ``False``, as in ``keras.layers.GRU``): run the time
    loop with cuDNN's fused kernel where the configuration allows it (tanh/sigmoid, bias,
    ``reset_after=True``, no recurrent dropout, not unrolled, right-padded masks) and a GPU is
    there: in training calls for ``"auto"`` (inference keeps the portable loop), in every call
    for ``True``, which raises when it cannot. See `rnnkit.layers.cudnn`.
    """

    CELL_CLASS = GRUCell
    STATE_NAMES = ("h",)
    CUDNN = True

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        reset_after: bool = True,
        use_cudnn: str | bool = "auto",
        **kwargs,
    ):
        cell_args = {
            "activation": activation,
            "recurrent_activation": recurrent_activation,
            "use_bias": use_bias,
            "reset_after": reset_after,
        }
        super().__init__(units, cell_args, **kwargs)
        self.use_cudnn = cudnn.check_use_cudnn(self.owner, use_cudnn)

    def cell_cudnn_blockers(self) -> list[str]:
        return [] if self.cell.reset_after else ["reset_after=False (cuDNN computes the reset-after form)"]

    def cudnn_supported_here(self) -> bool:
        cell = self.cell
        return backend.cudnn_ok(
            cell.activation, cell.recurrent_activation, self.unroll, cell.use_bias, reset_after=cell.reset_after
        )

    def cudnn_kernel(self, sequences, initial_state, mask):
        cell = self.cell
        return backend.gru(
            sequences,
            initial_state[0],
            mask,
            kernel=cell.kernel,
            recurrent_kernel=cell.recurrent_kernel,
            bias=cell.bias,
            activation=cell.activation,
            recurrent_activation=cell.recurrent_activation,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
            unroll=self.unroll,
            reset_after=cell.reset_after,
        )
