"""Deep recurrent stacks with skip connections between layers, as one layer."""

from __future__ import annotations

import warnings

import keras
from keras import ops

from rnnkit.layers.bidirectional import Bidirectional, check_merge_mode
from rnnkit.layers.cell_base import check_rate, check_units
from rnnkit.layers.gru import GRU
from rnnkit.layers.lstm import LSTM
from rnnkit.layers.recurrent import check_sequences_rank
from rnnkit.layers.simple_rnn import SimpleRNN

CELL_KINDS = {"lstm": LSTM, "gru": GRU, "simple": SimpleRNN}
CONNECTIONS = ("none", "residual", "dense", "highway")
STACK_MERGE_MODES = ("concat", "sum", "mul", "ave")  # one tensor per layer, so no None
_LAYER_KWARGS = ("name", "dtype", "trainable")
# Highway gates start mostly closed (carry the input), which keeps deep stacks trainable.
HIGHWAY_GATE_BIAS = -1.0


def _json_config_value(value):
    """Config value -> JSON-able (initializers, regularizers... become their configs)."""
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return keras.saving.serialize_keras_object(value)


@keras.saving.register_keras_serializable(package="rnnkit")
class StackedRNN(keras.layers.Layer):
    """``num_layers`` recurrent layers used as one, with connections between them.

    Let x_0 be the stack input and f_l the l-th recurrent layer (l = 0..L-1, each returning
    sequences except possibly the last). The input x_l of layer l is:

    - ``"none"``:     x_{l+1} = f_l(x_l)
    - ``"residual"``: x_{l+1} = f_l(x_l) + P_l x_l for l >= 1 (P_l a learned projection,
      ``skip_projection_l``, only where the widths differ; identity otherwise)
    - ``"highway"``:  x_{l+1} = T_l * f_l(x_l) + (1 - T_l) * P_l x_l for l >= 1 with
      T_l = sigmoid(x_l @ W_T + b_T) (``highway_gate_l``, bias starting at -1)
    - ``"dense"``:    layer l sees concat(x_0, f_0(.), ..., f_{l-1}(.)); output f_{L-1}(.)

    The first layer has no skip (its input is the raw features). With
    ``return_sequences=False`` the top layer returns its final output (for bidirectional
    layers: forward and backward final outputs merged) without a skip term, since its input
    has no final step that both directions share. ``dropout`` applies to the input of every
    layer but the first, during training. Masks reach every layer.

    Weights, for layer l with input width w_l and output width u_l (``units``, doubled when
bidirectional with ``merge_mode="concat"``): the recurrent layer's own (see its class), then
``skip_projection_l`` ``kernel (w_l, u_l)`` (no bias) where a residual or highway skip changes
width, and ``highway_gate_l`` ``kernel (w_l, u_l)``, ``bias (u_l,)``. With ``"dense"``,
w_l = features + u_0 + ... + u_{l-1}.

Extra keyword arguments (``use_peepholes``, ``reset_after``, ``recurrent_dropout``,
    initializers...) go to every recurrent layer.
    """

    def __init__(
        self,
        units,
        num_layers: int = 2,
        cell: str = "lstm",
        bidirectional: bool = False,
        connection: str = "none",
        dropout: float = 0.0,
        return_sequences: bool = False,
        merge_mode: str = "concat",
        **cell_kwargs,
    ):
        layer_kwargs = {k: cell_kwargs.pop(k) for k in _LAYER_KWARGS if k in cell_kwargs}
        super().__init__(**layer_kwargs)
        owner = f"StackedRNN '{self.name}'"
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(
                f"{owner}: argument `num_layers` must be a positive integer. Received: num_layers={num_layers!r}"
            )
        if cell not in CELL_KINDS:
            raise ValueError(f"{owner}: argument `cell` must be one of {tuple(CELL_KINDS)}. Received: cell={cell!r}")
        if connection not in CONNECTIONS:
            raise ValueError(
                f"{owner}: argument `connection` must be one of {CONNECTIONS}. Received: connection={connection!r}"
            )
        if bidirectional:
            check_merge_mode(owner, merge_mode, STACK_MERGE_MODES)
        if isinstance(units, (list, tuple)):
            if len(units) != num_layers:
                raise ValueError(
                    f"{owner}: argument `units` as a list needs one entry per layer "
                    f"(num_layers={num_layers}). Received {len(units)} entries: units={list(units)!r}"
                )
            units_list = [check_units(owner, u) for u in units]
        else:
            units_list = [check_units(owner, units)] * num_layers
        self.dropout = check_rate(owner, "dropout", dropout)
        if self.dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{owner}: dropout={dropout} has no effect with num_layers=1 "
                "(it applies between layers); use the cell's `dropout` instead.",
                stacklevel=2,
            )
        self.units = units if isinstance(units, int) else list(units)
        self.units_list = units_list
        self.num_layers = num_layers
        self.cell = cell
        self.bidirectional = bool(bidirectional)
        self.connection = connection
        self.return_sequences = bool(return_sequences)
        self.merge_mode = merge_mode
        self.cell_kwargs = {k: _json_config_value(v) for k, v in cell_kwargs.items()}
        self.supports_masking = True

        self.rnn_layers = []
        for index, width in enumerate(units_list):
            returns_sequences = index < num_layers - 1 or self.return_sequences
            layer = CELL_KINDS[cell](
                width,
                return_sequences=returns_sequences,
                name=f"{self.name}_{cell}_{index}",
                dtype=layer_kwargs.get("dtype"),
                **self.cell_kwargs,
            )
            if self.bidirectional:
                layer = Bidirectional(layer, merge_mode=merge_mode, name=f"{self.name}_bidirectional_{index}")
            self.rnn_layers.append(layer)
        self.between_dropout = keras.layers.Dropout(self.dropout) if self.dropout > 0 else None
        self.skip_projections: dict[str, keras.layers.Layer] = {}
        self.highway_gates: dict[str, keras.layers.Layer] = {}

    # -- shapes ----------------------------------------------------------------------------
    def output_width(self, index: int) -> int:
        width = self.units_list[index]
        return 2 * width if self.bidirectional and self.merge_mode == "concat" else width

    def input_width(self, index: int, features: int) -> int:
        if index == 0:
            return features
        if self.connection == "dense":
            return features + sum(self.output_width(i) for i in range(index))
        return self.output_width(index - 1)

    def _has_skip(self, index: int) -> bool:
        is_summary = index == self.num_layers - 1 and not self.return_sequences
        return self.connection in ("residual", "highway") and index >= 1 and not is_summary

    def build(self, input_shape):
        owner = f"StackedRNN '{self.name}'"
        check_sequences_rank(owner, input_shape)
        features = input_shape[-1]
        if features is None:
            raise ValueError(f"{owner}: the feature axis of the input must be known, got shape {tuple(input_shape)}.")
        for index, layer in enumerate(self.rnn_layers):
            width_in = self.input_width(index, features)
            layer.build((input_shape[0], input_shape[1], width_in))
            if not self._has_skip(index):
                continue
            width_out = self.output_width(index)
            if width_in != width_out:
                projection = keras.layers.Dense(
                    width_out, use_bias=False, name=f"skip_projection_{index}", dtype=self.dtype_policy
                )
                projection.build((None, None, width_in))
                self.skip_projections[str(index)] = projection
            if self.connection == "highway":
                gate = keras.layers.Dense(
                    width_out,
                    activation="sigmoid",
                    bias_initializer=keras.initializers.Constant(HIGHWAY_GATE_BIAS),
                    name=f"highway_gate_{index}",
                    dtype=self.dtype_policy,
                )
                gate.build((None, None, width_in))
                self.highway_gates[str(index)] = gate
        self.built = True

    def compute_output_shape(self, input_shape):
        width = self.output_width(self.num_layers - 1)
        if self.return_sequences:
            return (input_shape[0], input_shape[1], width)
        return (input_shape[0], width)

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None

    # -- forward ---------------------------------------------------------------------------
    def call(self, inputs, mask=None, training=False):
        check_sequences_rank(f"StackedRNN '{self.name}'", inputs.shape)
        x = inputs
        features = [inputs]
        last = self.num_layers - 1
        for index, layer in enumerate(self.rnn_layers):
            layer_input = x
            if index > 0 and self.between_dropout is not None:
                layer_input = self.between_dropout(x, training=training)
            y = layer(layer_input, mask=mask, training=training)
            if self.connection == "dense":
                features.append(y)
                x = y if index == last else ops.concatenate(features, axis=-1)
            elif not self._has_skip(index):
                x = y
            else:
                projection = self.skip_projections.get(str(index))
                skip = projection(x) if projection is not None else x
                if self.connection == "residual":
                    x = y + skip
                else:
                    gate = self.highway_gates[str(index)](x)
                    x = gate * y + (1.0 - gate) * skip
        return x

    def get_config(self):
        config = {
            "units": self.units,
            "num_layers": self.num_layers,
            "cell": self.cell,
            "bidirectional": self.bidirectional,
            "connection": self.connection,
            "dropout": self.dropout,
            "return_sequences": self.return_sequences,
            "merge_mode": self.merge_mode,
            **self.cell_kwargs,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        return cls(**dict(config))
