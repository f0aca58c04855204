"""Diagnostics: gradient flow through time (the vanishing/exploding gradient analysis)."""

from rnnkit.diagnostics.gradient_flow import (
    CELLS,
    STATES,
    TABLE_LAGS,
    GradientFlow,
    gradient_flow,
    gradient_flow_table,
    plot_gradient_flow,
    state_gradients,
)

__all__ = [
    "CELLS",
    "STATES",
    "TABLE_LAGS",
    "GradientFlow",
    "gradient_flow",
    "gradient_flow_table",
    "plot_gradient_flow",
    "state_gradients",
]
