"""The recurrent layer base: Keras's RNN loop around an rnnkit cell, plus argument checks
and the trace-substitution hook export uses."""

from __future__ import annotations

import keras
from keras import ops

from rnnkit.layers.cell_base import CELL_OPTIONS
from rnnkit.layers.trace import substituted_call

# Arguments of keras.layers.RNN that rnnkit layers accept with the same meaning.
RNN_FLAGS = (
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "unroll",
    "zero_output_for_mask",
)


def as_state_list(initial_state) -> list:
    if isinstance(initial_state, (list, tuple)):
        return list(initial_state)
    return [initial_state]


def check_initial_state(owner: str, initial_state, state_sizes, state_names) -> list:
    """Validate count and width of initial states; return them as a list."""
    states = as_state_list(initial_state)
    if len(states) != len(state_sizes):
        raise ValueError(
            f"{owner}: `initial_state` expects {len(state_sizes)} tensor(s) "
            f"({', '.join(state_names)}) of shape (batch, units), "
            f"received {len(states)} tensor(s)."
        )
    for name, size, state in zip(state_names, state_sizes, states):
        shape = tuple(getattr(state, "shape", ()))
        if len(shape) != 2 or (shape[-1] is not None and shape[-1] != size):
            raise ValueError(
                f"{owner}: `initial_state` entry '{name}' must have shape (batch, {size}), received shape {shape}."
            )
    return states


def check_sequences_rank(owner: str, shape) -> None:
    if len(shape) != 3:
        raise ValueError(f"{owner}: expected `sequences` of rank 3 (batch, time, features), got shape {tuple(shape)}.")


class RecurrentLayer(keras.layers.RNN):
    """Base of ``SimpleRNN``, ``LSTM`` and ``GRU``: builds the cell from the layer's
    arguments and runs it over time with ``keras.layers.RNN``.

    Keyword arguments named in ``RNN_FLAGS`` go to ``keras.layers.RNN``; those in
    ``cell_base.CELL_OPTIONS`` go to the cell; the rest (``name``, ``dtype``...) to the layer.
    """

    CELL_CLASS: type = keras.layers.Layer
    STATE_NAMES: tuple[str, ...] = ("h",)

    def __init__(self, units: int, cell_args: dict, **kwargs):
        cell_kwargs = {k: kwargs.pop(k) for k in CELL_OPTIONS if k in kwargs}
        cell = self.CELL_CLASS(
            units,
            **cell_args,
            **cell_kwargs,
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name=f"{self.CELL_CLASS.__name__.lower().replace('cell', '')}_cell",
        )
        super().__init__(cell, **kwargs)

    @property
    def units(self) -> int:
        return self.cell.units

    @property
    def owner(self) -> str:
        return f"{type(self).__name__} '{self.name}'"

    def build(self, sequences_shape, initial_state_shape=None):
        check_sequences_rank(self.owner, sequences_shape)
        super().build(sequences_shape, initial_state_shape)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        check_sequences_rank(self.owner, sequences.shape)
        if initial_state is not None:
            initial_state = check_initial_state(self.owner, initial_state, self.state_size, self.STATE_NAMES)
        substituted = substituted_call(self, sequences, mask, initial_state, training)
        if substituted is not NotImplemented:
            return substituted
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)

    def get_initial_state(self, batch_size):
        return [ops.zeros((batch_size, d), dtype=self.cell.compute_dtype) for d in self.state_size]

    def get_config(self):
        config = super().get_config()
        config.pop("cell")
        cell_config = self.cell.get_config()
        for key in ("name", "trainable", "dtype"):
            cell_config.pop(key, None)
        return {**config, **cell_config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**dict(config))
