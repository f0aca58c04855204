"""Gate orders, named once.

Keras (and rnnkit) store the gates of a cell side by side in the columns of `kernel`
and `recurrent_kernel`. These constants name that order; code that slices or permutes
gate blocks reads them instead of writing the order down again.
"""

KERAS_LSTM = "ifco"  # input, forget, cell candidate, output
KERAS_GRU = "zrh"  # update (z), reset (r), candidate (h)
KERAS_SIMPLE = "h"  # one block
# Rows of rnnkit's `peephole_kernel` (shape (3, units)).
RNNKIT_PEEPHOLE = "ifo"


def gate_count(order: str) -> int:
    """Number of gate blocks in an order string ("ifco" -> 4)."""
    return len(order)
