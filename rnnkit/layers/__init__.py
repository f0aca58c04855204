"""rnnkit's Keras layers: cells written from the equations, layers, wrappers, stacks."""

from rnnkit.layers.bidirectional import MERGE_MODES, Bidirectional
from rnnkit.layers.gru import GRU, GRUCell
from rnnkit.layers.lstm import LSTM, LSTMCell
from rnnkit.layers.recurrent import RecurrentLayer
from rnnkit.layers.simple_rnn import SimpleRNN, SimpleRNNCell
from rnnkit.layers.stacked import CELL_KINDS, CONNECTIONS, StackedRNN
from rnnkit.layers.trace import trace_substitution

__all__ = [
    "CELL_KINDS",
    "CONNECTIONS",
    "GRU",
    "LSTM",
    "MERGE_MODES",
    "Bidirectional",
    "GRUCell",
    "LSTMCell",
    "RecurrentLayer",
    "SimpleRNN",
    "SimpleRNNCell",
    "StackedRNN",
    "trace_substitution",
]
