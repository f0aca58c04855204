"""Long short-term memory: the cell (optionally with peepholes) and the layer."""

from __future__ import annotations

import keras
from keras import activations, constraints, initializers, ops, regularizers

from rnnkit import gate_order
from rnnkit.keras_compat import fused_backend as backend
from rnnkit.layers import cudnn
from rnnkit.layers.cell_base import RecurrentCell
from rnnkit.layers.recurrent import RecurrentLayer


@keras.saving.register_keras_serializable(package="rnnkit")
class LSTMCell(RecurrentCell):
    """One LSTM step; `rnnkit.layers.LSTM` runs it over time.

    Equations (gate order i, f, c, o — ``gate_order.KERAS_LSTM == "ifco"``):
        z = x @ kernel + h_prev @ recurrent_kernel + bias   # kernel: (features, 4*units)
        z_i, z_f, z_c, z_o = split(z, 4)                     # recurrent_kernel: (units, 4*units)
        i = recurrent_activation(z_i [+ p_i * c_prev])       # bias: (4*units,)
        f = recurrent_activation(z_f [+ p_f * c_prev])
        c = f * c_prev + i * activation(z_c)
        o = recurrent_activation(z_o [+ p_o * c])            # the output peephole sees the new c
        h = o * activation(c)

    The bracketed peephole terms exist when ``use_peepholes=True``: a weight
    ``peephole_kernel`` of shape (3, units) with rows (p_i, p_f, p_o)
    (``gate_order.RNNKIT_PEEPHOLE == "ifo"``), the convention of ONNX's LSTM op (Gers &
    Schmidhuber). It starts at zero (``peephole_initializer``), i.e. as a plain LSTM.
    ``unit_forget_bias=True`` initialises the forget-gate bias to one, as Keras does.
    States: ``[h, c]``.
    """

    GATES = gate_order.KERAS_LSTM

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        unit_forget_bias: bool = True,
        use_peepholes: bool = False,
        peephole_initializer="zeros",
        peephole_regularizer=None,
        peephole_constraint=None,
        **kwargs,
    ):
        super().__init__(units, activation=activation, use_bias=use_bias, **kwargs)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.use_peepholes = bool(use_peepholes)
        self.peephole_initializer = initializers.get(peephole_initializer)
        self.peephole_regularizer = regularizers.get(peephole_regularizer)
        self.peephole_constraint = constraints.get(peephole_constraint)
        self.state_size = [self.units, self.units]

    def build(self, input_shape):
        super().build(input_shape)
        if self.use_peepholes:
            self.peephole_kernel = self.add_weight(
                shape=(len(gate_order.RNNKIT_PEEPHOLE), self.units),
                name="peephole_kernel",
                initializer=self.peephole_initializer,
                regularizer=self.peephole_regularizer,
                constraint=self.peephole_constraint,
            )
        else:
            self.peephole_kernel = None

    def bias_init(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        units, base = self.units, self.bias_initializer

        def forget_one(shape, dtype=None):
            # Blocks in "ifco" order: base, ones (forget), base, base.
            return ops.concatenate(
                [base((units,), dtype=dtype), ops.ones((units,), dtype=dtype), base((2 * units,), dtype=dtype)]
            )

        return forget_one

    def call(self, inputs, states, training=False):
        h_prev, c_prev = states[0], states[1]
        x, h_in = self.dropped(inputs, h_prev, training)
        z = ops.matmul(x, self.kernel) + ops.matmul(h_in, self.recurrent_kernel)
        if self.bias is not None:
            z = z + self.bias
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        if self.peephole_kernel is not None:
            p_i, p_f, p_o = self.peephole_kernel[0], self.peephole_kernel[1], self.peephole_kernel[2]
            z_i = z_i + p_i * c_prev
            z_f = z_f + p_f * c_prev
        i = self.recurrent_activation(z_i)
        f = self.recurrent_activation(z_f)
        c = f * c_prev + i * self.activation(z_c)
        if self.peephole_kernel is not None:
            z_o = z_o + p_o * c
        o = self.recurrent_activation(z_o)
        h = o * self.activation(c)
        return h, [h, c]

    def get_config(self):
        config = {
            "recurrent_activation": activations.serialize(self.recurrent_activation),
            "unit_forget_bias": self.unit_forget_bias,
            "use_peepholes": self.use_peepholes,
            "peephole_initializer": initializers.serialize(self.peephole_initializer),
            "peephole_regularizer": regularizers.serialize(self.peephole_regularizer),
            "peephole_constraint": constraints.serialize(self.peephole_constraint),
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="rnnkit")
class LSTM(RecurrentLayer):
    """LSTM layer, weight-compatible with ``keras.layers.LSTM`` (peepholes add one weight).

    Args: ``units``, ``activation``, ``recurrent_activation``, ``use_bias``,
    ``unit_forget_bias``, ``use_peepholes`` and the cell options of ``LSTMCell``;
    ``return_sequences``, ``return_state``, ``go_backwards``, ``stateful``, ``unroll``,
    ``zero_output_for_mask`` as in ``keras.layers.RNN``. States: ``[h, c]``.

    ``use_cudnn`` (``"auto"``, ``True``, ``False``, as in ``keras.layers.LSTM``): run the time
    loop with cuDNN's fused kernel where the configuration allows it (tanh/sigmoid, bias, no
    peepholes, no recurrent dropout, not unrolled, right-padded masks) and a GPU is there: in
    training calls for ``"auto"`` (inference keeps the portable loop), in every call for
    ``True``, which raises when it cannot. See `rnnkit.layers.cudnn`.
    """

    CELL_CLASS = LSTMCell
    STATE_NAMES = ("h", "c")
    CUDNN = True

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        unit_forget_bias: bool = True,
        use_peepholes: bool = False,
        use_cudnn: str | bool = "auto",
        **kwargs,
    ):
        cell_args = {
            "activation": activation,
            "recurrent_activation": recurrent_activation,
            "use_bias": use_bias,
            "unit_forget_bias": unit_forget_bias,
            "use_peepholes": use_peepholes,
        }
        for key in ("peephole_initializer", "peephole_regularizer", "peephole_constraint"):
            if key in kwargs:
                cell_args[key] = kwargs.pop(key)
        super().__init__(units, cell_args, **kwargs)
        self.use_cudnn = cudnn.check_use_cudnn(self.owner, use_cudnn)

    def cell_cudnn_blockers(self) -> list[str]:
        return ["use_peepholes=True"] if self.cell.use_peepholes else []

    def cudnn_supported_here(self) -> bool:
        cell = self.cell
        return backend.cudnn_ok(cell.activation, cell.recurrent_activation, self.unroll, cell.use_bias)

    def cudnn_kernel(self, sequences, initial_state, mask):
        cell = self.cell
        return backend.lstm(
            sequences,
            initial_state[0],
            initial_state[1],
            mask,
            kernel=cell.kernel,
            recurrent_kernel=cell.recurrent_kernel,
            bias=cell.bias,
            activation=cell.activation,
            recurrent_activation=cell.recurrent_activation,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
            unroll=self.unroll,
        )
