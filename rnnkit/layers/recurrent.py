"""The recurrent layer base: Keras's RNN loop around an rnnkit cell, plus argument checks
and the trace-substitution hook export uses."""

from __future__ import annotations

import keras
from keras import ops

from rnnkit.layers import cudnn
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

    Layers with a cuDNN kernel (``CUDNN = True``: LSTM, GRU) take ``use_cudnn`` and run their
    time loop through it where they can (`rnnkit.layers.cudnn`); the others always run the cell.
    """

    CELL_CLASS: type = keras.layers.Layer
    STATE_NAMES: tuple[str, ...] = ("h",)
    CUDNN: bool = False
    use_cudnn: str | bool = False

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
        if not self.cudnn_blockers() and self.cudnn_supported_here():
            self.supports_jit = False  # cuDNN ops are not XLA-compatible (as keras.layers.LSTM/GRU)

    # -- cuDNN dispatch ------------------------------------------------------------------------
    def cudnn_blockers(self) -> list[str]:
        """Why this configuration cannot run cuDNN's fused kernel (empty: it can, given a GPU)."""
        if not self.CUDNN:
            return [f"{type(self).__name__} has no cuDNN kernel"]
        cell = self.cell
        reasons = [] if self.use_cudnn else ["use_cudnn=False"]
        reasons += cudnn.activation_blockers(cell)
        if not cell.use_bias:
            reasons.append("use_bias=False")
        if self.unroll:
            reasons.append("unroll=True")
        if cell.recurrent_dropout:
            reasons.append(f"recurrent_dropout={cell.recurrent_dropout}")
        return reasons + self.cell_cudnn_blockers()

    def cell_cudnn_blockers(self) -> list[str]:
        """Conditions of this layer's own cell (peepholes, reset_after...)."""
        return []

    def cudnn_supported_here(self) -> bool:
        """Keras's backend check: the arguments and a visible GPU (the backend kernel also
        answers NotImplementedError when it cannot run)."""
        return False

    def cudnn_kernel(self, sequences, initial_state, mask):
        """Call the backend's fused function; ``(last_output, outputs, states)``."""
        raise NotImplementedError

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]

        def cell_loop():
            return super(RecurrentLayer, self).inner_loop(sequences, initial_state, mask=mask, training=training)

        if cudnn.cudnn_disabled_here():  # an export trace or `cell_loop_only()`, whatever use_cudnn says
            return cell_loop()
        blockers = self.cudnn_blockers()
        # "auto" takes the kernel in training calls only: inference graphs (SavedModel export,
        # serving) then never hold GPU-only ops. use_cudnn=True takes it in every call.
        wanted = bool(training) or self.use_cudnn is True
        if not blockers and wanted:
            try:
                return cudnn.run_time_loop(self, sequences, initial_state, mask, training, cell_loop)
            except NotImplementedError:
                blockers = ["the backend has no cuDNN kernel here (no GPU, or no cuDNN op)"]
        if self.use_cudnn is True:
            raise ValueError(
                f"{self.owner}: use_cudnn=True, but cuDNN cannot run this layer: {'; '.join(blockers)}. "
                "Pass use_cudnn='auto' to fall back to the cell's loop."
            )
        return cell_loop()

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
        if self.CUDNN:
            config["use_cudnn"] = self.use_cudnn
        return {**config, **cell_config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**dict(config))
