"""The one hook export needs: substitute a recurrent layer's time loop while tracing.

While a substitution is active, ``rnnkit`` recurrent layers (and ``Bidirectional``) call
``substitute(layer, sequences, mask, initial_state, training)`` instead of running their
time loop, and return what it returns. Returning ``NotImplemented`` means "run the layer
normally" (a bidirectional wrapper then offers each direction on its own). Outside a
substitution nothing changes. rnnkit knows nothing about what the substitute does.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

Substitute = Callable[..., Any]

_ACTIVE: contextvars.ContextVar[Substitute | None] = contextvars.ContextVar("rnnkit_trace_substitute", default=None)


@contextlib.contextmanager
def trace_substitution(substitute: Substitute) -> Iterator[None]:
    """Route recurrent layers' calls to `substitute` inside the `with` block."""
    if not callable(substitute):
        raise TypeError(f"trace_substitution: `substitute` must be callable, received {type(substitute).__name__}")
    token = _ACTIVE.set(substitute)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def substituted_call(layer, sequences, mask, initial_state, training):
    """Return the active substitute's result for `layer`, or NotImplemented."""
    substitute = _ACTIVE.get()
    if substitute is None:
        return NotImplemented
    return substitute(layer, sequences, mask, initial_state, training)


def substitution_active() -> bool:
    """Whether a `trace_substitution` block is active (export is tracing)."""
    return _ACTIVE.get() is not None
