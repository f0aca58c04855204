"""cuDNN dispatch for rnnkit's LSTM and GRU layers.

When a layer's configuration is one cuDNN's fused kernel computes exactly, its time loop runs
through Keras's TensorFlow-backend ``lstm``/``gru`` functions — the kernels
``keras.layers.LSTM/GRU`` use — with the cell's own weights (rnnkit cells keep Keras's weight
layout, so they pass unchanged). Otherwise, and whenever the backend answers "not supported"
(``NotImplementedError``: no GPU, no cuDNN op), the cell runs step by step as before.

When: with ``use_cudnn="auto"`` (the default) in training calls only, so inference graphs —
a SavedModel traced on a GPU machine, a served model — never hold GPU-only ops; with
``use_cudnn=True`` in every call (as ``keras.layers.LSTM/GRU`` do, and it raises where the
kernel cannot run).

Static conditions (`RecurrentLayer.cudnn_blockers` lists the ones that fail), Keras's plus
rnnkit's own: ``use_cudnn`` is ``"auto"`` or ``True``; ``activation`` tanh,
``recurrent_activation`` sigmoid; ``use_bias``; not ``unroll``; no ``recurrent_dropout``;
LSTM without peepholes; GRU with ``reset_after=True``; no export trace or `cell_loop_only`
block active. Per call: a mask must be right-padded with no fully masked row (checked in the
graph: other masks take the cell's loop, where Keras would stop with an assertion).

Outputs equal the cell path's: cuDNN writes zeros at padded steps and returns the state at
each row's length as the last output; the cell's loop repeats the last valid output at padded
steps unless ``zero_output_for_mask`` (then its last output is zero for a row whose final step
is padding). The dispatch restores the cell path's values (Keras's own layers do not).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import tensorflow as tf
from keras import activations, ops

USE_CUDNN = ("auto", True, False)

# The same functions Keras's backend accepts as tanh and sigmoid.
_TANH = (activations.tanh, tf.tanh, ops.tanh)
_SIGMOID = (activations.sigmoid, tf.sigmoid, ops.sigmoid)

_CELL_LOOP_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("rnnkit_cell_loop_only", default=False)


@contextlib.contextmanager
def cell_loop_only() -> Iterator[None]:
    """Inside the block rnnkit layers never take the cuDNN path (e.g. while building a
    SavedModel on a GPU machine that must also run on CPUs)."""
    token = _CELL_LOOP_ONLY.set(True)
    try:
        yield
    finally:
        _CELL_LOOP_ONLY.reset(token)


def check_use_cudnn(owner: str, use_cudnn: object) -> str | bool:
    if use_cudnn not in USE_CUDNN or (use_cudnn != "auto" and not isinstance(use_cudnn, bool)):
        raise ValueError(f"{owner}: argument `use_cudnn` must be one of {USE_CUDNN}. Received: use_cudnn={use_cudnn!r}")
    return use_cudnn


def activation_blockers(cell) -> list[str]:
    """The activation conditions, checked as Keras's backend checks them."""
    reasons = []
    if cell.activation not in _TANH:
        reasons.append(f"activation={getattr(cell.activation, '__name__', cell.activation)!s} (cuDNN needs tanh)")
    if cell.recurrent_activation not in _SIGMOID:
        name = getattr(cell.recurrent_activation, "__name__", cell.recurrent_activation)
        reasons.append(f"recurrent_activation={name!s} (cuDNN needs sigmoid)")
    return reasons


def mask_fits(mask):
    """Scalar bool tensor: every row of ``mask`` (batch, time) is True then False (right-padded)
    and has at least one True step — the masks cuDNN's sequence lengths express."""
    mask = tf.cast(mask, "bool")
    lengths = tf.reduce_sum(tf.cast(mask, "int32"), axis=1)
    right_padded = tf.reduce_all(tf.equal(mask, tf.sequence_mask(lengths, maxlen=tf.shape(mask)[1])))
    return tf.logical_and(right_padded, tf.reduce_all(lengths > 0))


def run_time_loop(layer, sequences, initial_state, mask, training, cell_loop):
    """The layer's time loop through its cuDNN kernel where the mask allows, else ``cell_loop()``.

    Raises ``NotImplementedError`` when the backend cannot run the kernel at all.
    """
    if training and layer.cell.dropout:
        # The same per-sequence input mask the cell applies at every step.
        dropout_mask = ops.expand_dims(layer.cell.get_dropout_mask(sequences[:, 0, :]), axis=1)
        fused_inputs = sequences * ops.broadcast_to(dropout_mask, ops.shape(sequences))
    else:
        fused_inputs = sequences

    def fused():
        last, outputs, states = layer.cudnn_kernel(fused_inputs, initial_state, mask)
        states = list(states)
        if mask is not None and layer.zero_output_for_mask and not layer.go_backwards:
            # The cell's loop ends on the last time step, a zero output where that step is padding.
            ended = ops.expand_dims(ops.cast(mask, "bool")[:, -1], -1)
            last = ops.where(ended, last, ops.zeros_like(last))
        if not layer.return_sequences:
            outputs = ops.expand_dims(last, 1)
        elif mask is not None and not layer.zero_output_for_mask and not layer.go_backwards:
            # Padded steps: the cell's loop repeats the last valid output (= last), cuDNN wrote 0.
            keep = ops.expand_dims(ops.cast(mask, "bool"), -1)
            outputs = ops.where(keep, outputs, ops.expand_dims(last, 1))
        return last, outputs, states

    def generic():
        last, outputs, states = cell_loop()
        states = list(states)
        if not layer.return_sequences:
            outputs = ops.expand_dims(last, 1)
        return last, outputs, states

    if mask is None:
        return fused()
    fits = mask_fits(mask)
    if tf.executing_eagerly():
        return fused() if bool(fits) else generic()
    return tf.cond(fits, fused, generic)


def cudnn_disabled_here() -> bool:
    """True inside `cell_loop_only` or while export traces the layers."""
    from rnnkit.layers.trace import substitution_active

    return _CELL_LOOP_ONLY.get() or substitution_active()
