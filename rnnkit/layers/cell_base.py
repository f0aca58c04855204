"""What every rnnkit cell shares: arguments, weight creation, dropout masks, config.

A cell is one time step: ``call(inputs, states) -> (output, new_states)``. The time loop,
masking and statefulness belong to ``keras.layers.RNN`` (see ``recurrent.py``).
"""

from __future__ import annotations

import keras
from keras import activations, constraints, initializers, ops, regularizers

# Keras' RNN layer pre-creates and resets dropout masks only for cells that mix in this
# class (``keras.layers.RNN._maybe_config_dropout_masks``). Mixing it in keeps the masks
# fixed across time steps (variational dropout) and outside the while-loop body.
from rnnkit.keras_compat import DropoutRNNCell

# Constructor arguments that every cell takes besides `units`; layers route these to their cell.
CELL_OPTIONS = (
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "dropout",
    "recurrent_dropout",
    "seed",
)


def check_units(owner: str, units: object) -> int:
    """Validate a `units` argument and return it as an int."""
    if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
        raise ValueError(f"{owner}: argument `units` must be a positive integer. Received: units={units!r}")
    return units


def check_rate(owner: str, name: str, rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{owner}: argument `{name}` must be a float in [0, 1). Received: {name}={rate!r}")
    return float(rate)


class RecurrentCell(DropoutRNNCell, keras.layers.Layer):
    """Base class of rnnkit cells (not used directly).

    Subclasses set ``GATES`` (a gate-order string from ``rnnkit.gate_order``), implement
    ``call`` with their equations, and may add weights in ``build`` after calling
    ``super().build``. Weight names and shapes are Keras's: ``kernel (D, G*units)``,
    ``recurrent_kernel (units, G*units)``, ``bias``.
    """

    GATES = "h"

    def __init__(
        self,
        units: int,
        activation="tanh",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = f"{type(self).__name__} '{self.name}'"
        self.units = check_units(owner, units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout = check_rate(owner, "dropout", dropout)
        self.recurrent_dropout = check_rate(owner, "recurrent_dropout", recurrent_dropout)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.output_size = self.units

    # -- weights ---------------------------------------------------------------------------
    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': expected inputs of rank 2 "
                f"(batch, features), got shape {tuple(input_shape)}."
            )
        super().build(input_shape)
        gates = len(self.GATES)
        self.kernel = self.add_weight(
            shape=(input_shape[-1], gates * self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, gates * self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                shape=self.bias_shape(),
                name="bias",
                initializer=self.bias_init(),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None

    def bias_shape(self) -> tuple[int, ...]:
        return (len(self.GATES) * self.units,)

    def bias_init(self):
        return self.bias_initializer

    # -- dropout ---------------------------------------------------------------------------
    def dropped(self, inputs, h_prev, training):
        """Apply the (per-sequence) input and recurrent dropout masks when training."""
        if training and self.dropout > 0.0:
            inputs = inputs * self.get_dropout_mask(inputs)
        if training and self.recurrent_dropout > 0.0:
            h_prev = h_prev * self.get_recurrent_dropout_mask(h_prev)
        return inputs, h_prev

    def get_initial_state(self, batch_size=None):
        sizes = self.state_size if isinstance(self.state_size, (list, tuple)) else [self.state_size]
        return [ops.zeros((batch_size, d), dtype=self.compute_dtype) for d in sizes]

    # -- config ----------------------------------------------------------------------------
    def get_config(self):
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}
