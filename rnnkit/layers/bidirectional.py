"""Bidirectional wrapper: a forward and a backward copy of a recurrent layer, merged."""

from __future__ import annotations

import keras

from rnnkit.layers.recurrent import check_initial_state, check_sequences_rank
from rnnkit.layers.trace import substituted_call

MERGE_MODES = ("concat", "sum", "mul", "ave", None)
# What the wrapped layer must offer (checked by attribute, never by class).
_RECURRENT_ATTRIBUTES = ("go_backwards", "return_sequences", "return_state", "stateful", "state_size")


def check_merge_mode(owner: str, merge_mode, allowed=MERGE_MODES) -> None:
    if merge_mode not in allowed:
        raise ValueError(
            f"{owner}: argument `merge_mode` must be one of {allowed}. Received: merge_mode={merge_mode!r}"
        )


@keras.saving.register_keras_serializable(package="rnnkit")
class Bidirectional(keras.layers.Bidirectional):
    """Runs ``layer`` forwards and a rebuilt copy backwards, then merges them.

    ``merge_mode``: "concat" (forward features first), "sum", "mul", "ave", or None (two
    outputs). ``initial_state`` is ``[*forward_states, *backward_states]`` (LSTM:
    h_f, c_f, h_b, c_b); ``return_state`` returns states in the same order. With
    ``return_sequences`` both directions' outputs are time-aligned and zero at masked steps.
    Works with any recurrent layer that has Keras's RNN attributes (rnnkit or keras).

Weights: the forward layer's, then the backward copy's, each with the shapes of the wrapped
layer (LSTM(units) on F features: ``kernel (F, 4*units)``, ``recurrent_kernel (units, 4*units)``,
``bias (4*units,)`` per direction), in the order of ``keras.layers.Bidirectional``.
    """

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        owner = f"Bidirectional '{kwargs.get('name', 'bidirectional')}'"
        check_merge_mode(owner, merge_mode)
        missing = [a for a in _RECURRENT_ATTRIBUTES if not hasattr(layer, a)]
        if missing:
            raise ValueError(
                f"{owner}: argument `layer` must be a recurrent layer with attributes "
                f"{_RECURRENT_ATTRIBUTES}; {type(layer).__name__} lacks {tuple(missing)}."
            )
        super().__init__(layer, merge_mode=merge_mode, weights=weights, backward_layer=backward_layer, **kwargs)

    @property
    def owner(self) -> str:
        return f"Bidirectional '{self.name}'"

    def build(self, sequences_shape, initial_state_shape=None):
        check_sequences_rank(self.owner, sequences_shape)
        super().build(sequences_shape, initial_state_shape)

    def call(self, sequences, initial_state=None, mask=None, training=None):
        check_sequences_rank(self.owner, sequences.shape)
        if initial_state is not None:
            names = getattr(
                self.forward_layer, "STATE_NAMES", tuple(f"s{i}" for i in range(len(self.forward_layer.state_size)))
            )
            initial_state = check_initial_state(
                self.owner,
                initial_state,
                list(self.forward_layer.state_size) + list(self.backward_layer.state_size),
                tuple(f"{n}_fwd" for n in names) + tuple(f"{n}_bwd" for n in names),
            )
        substituted = substituted_call(self, sequences, mask, initial_state, training)
        if substituted is not NotImplemented:
            return substituted
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)
