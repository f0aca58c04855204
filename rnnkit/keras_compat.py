"""The private Keras names rnnkit relies on, gathered in one place.

Keras 3 keeps three things rnnkit needs outside its public API (``keras.src``):

- ``DropoutRNNCell``: the mixin that gives a cell Keras's per-sequence dropout masks (the same
  masks at every time step), which Keras's own LSTM/GRU cells use;
- ``backend.cudnn_ok`` / ``backend.lstm`` / ``backend.gru``: the backend's fused (cuDNN) kernels,
  taken by rnnkit's LSTM and GRU exactly when Keras's own layers would take them.

Every other module imports them from here, so a Keras release that moves them breaks one file,
and the versions they were checked against are pinned in pyproject.toml (``keras>=3.8,<3.16``).
"""

from keras.src import backend as fused_backend
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

__all__ = ["DropoutRNNCell", "fused_backend"]
