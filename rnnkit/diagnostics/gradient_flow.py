"""How far back gradients reach: the norm of dJ^(i)/dh^(j) against the lag i - j.

The lecture's analysis: for a recurrent state h^(t) = F(h^(t-1), x^(t)),

    dJ^(i)/dh^(j) = dJ^(i)/dh^(i) * prod_{t=j+1..i} dh^(t)/dh^(t-1)

so the norm shrinks or grows roughly geometrically in the lag i - j for a vanilla RNN,
while the LSTM's additive cell path (and the GRU's interpolation) keep it alive longer.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from rnnkit.layers import GRU, LSTM, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell
from rnnkit.tasks import adding_problem

CELLS = {"simple": (SimpleRNNCell, SimpleRNN), "lstm": (LSTMCell, LSTM), "gru": (GRUCell, GRU)}
TABLE_LAGS = (1, 5, 10, 20, 50, 100)


@dataclasses.dataclass
class GradientFlow:
    """Result of `gradient_flow`: ``norms[k]`` is the batch mean of ||dJ^(T-1)/dh^(T-1-k)||
    for lag k = 0..length-1 at initialization; ``trained_norms`` the same after training
    (``None`` without training)."""

    cell: str
    length: int
    units: int
    norms: np.ndarray
    trained_norms: np.ndarray | None = None
    state: str = "h"
    train_loss: float | None = None

    @property
    def lags(self) -> np.ndarray:
        return np.arange(self.length)

    def at(self, lag: int, trained: bool = False) -> float:
        values = self.trained_norms if trained else self.norms
        if values is None:
            raise ValueError(f"GradientFlow '{self.cell}': no trained norms (run with train_epochs > 0).")
        if not 0 <= lag < self.length:
            raise ValueError(f"Argument `lag` must be in [0, {self.length - 1}]. Received: lag={lag!r}")
        return float(values[lag])


STATES = ("h", "full")


def state_gradients(cell: keras.layers.Layer, inputs, readout, state: str = "h") -> np.ndarray:
    """dJ/dh^(j) for every step j, with J = sum_b readout . h_b^(T-1).

    ``cell`` is an rnnkit (or Keras) cell whose first state is h; ``inputs`` is
    ``(batch, T, features)``; ``readout`` is ``(units,)``. The cell is stepped by hand and a
    zero perturbation d_j is added to h^(j) after each step; dJ/dd_j = dJ/dh^(j) is the total
    derivative through every later step. With ``state="h"`` other states (the LSTM's c) are
    passed on unperturbed; with ``state="full"`` every state is perturbed and the gradients
    are concatenated ([dJ/dh, dJ/dc] for the LSTM). Returns ``(T, batch, width)``; rows of
    different examples are independent, so row b is the gradient of that example's J.
    """
    if state not in STATES:
        raise ValueError(f"Argument `state` must be one of {STATES}. Received: state={state!r}")
    inputs = tf.convert_to_tensor(inputs, dtype=cell.compute_dtype)
    readout = tf.convert_to_tensor(readout, dtype=cell.compute_dtype)
    batch, length = int(inputs.shape[0]), int(inputs.shape[1])
    if not cell.built:
        cell.build((batch, int(inputs.shape[2])))
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    perturbed = sizes if state == "full" else sizes[:1]
    perturbations = [[tf.zeros((batch, size), dtype=cell.compute_dtype) for size in perturbed] for _ in range(length)]
    with tf.GradientTape() as tape:
        tape.watch(perturbations)
        states = [tf.zeros((batch, size), dtype=cell.compute_dtype) for size in sizes]
        for t in range(length):
            _, states = cell(inputs[:, t], states)
            states = list(states)
            for index, delta in enumerate(perturbations[t]):
                states[index] = states[index] + delta
        objective = tf.reduce_sum(states[0] * readout)
    grads = tape.gradient(objective, perturbations, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return np.stack([np.concatenate([g.numpy() for g in step], axis=-1) for step in grads])


def _measure(cell, inputs, readout, state: str) -> np.ndarray:
    grads = state_gradients(cell, inputs, readout, state)  # (T, batch, units), index j
    norms = np.linalg.norm(grads, axis=-1).mean(axis=-1)  # (T,) by step j
    return norms[::-1].copy()  # by lag k = T - 1 - j


def gradient_flow(
    cell: str = "lstm",
    length: int = 128,
    *,
    units: int = 32,
    batch: int = 16,
    seed: int = 0,
    state: str = "h",
    train_epochs: int = 0,
    train_examples: int = 512,
    learning_rate: float = 1e-2,
) -> GradientFlow:
    """||dJ^(i)/dh^(j)|| against lag i - j for a ``cell`` ("simple" | "lstm" | "gru").

    Inputs are ``batch`` adding-problem sequences of ``length`` steps (seeded); J^(i) =
    v . h^(i) with v a fixed random unit vector, i = length - 1, so lag 0 has norm 1 and
    the curve is the pure product of state Jacobians. ``state="full"`` measures the gradient
    with respect to the whole recurrent state ([h, c] for the LSTM) instead of h alone.
    The cell starts with Keras default initializers (orthogonal recurrent kernel; LSTM
    forget bias 1). With ``train_epochs > 0`` a ``cell -> Dense(1)`` model is then trained
    on the adding problem of the same length (Adam, ``learning_rate``, global-norm
    clipping 1.0) and the norms are measured again.
    """
    if state not in STATES:
        raise ValueError(f"Argument `state` must be one of {STATES}. Received: state={state!r}")
    if cell not in CELLS:
        raise ValueError(f"Argument `cell` must be one of {tuple(CELLS)}. Received: cell={cell!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"Argument `length` must be an integer >= 2. Received: length={length!r}")
    if isinstance(train_epochs, bool) or not isinstance(train_epochs, int) or train_epochs < 0:
        raise ValueError(
            f"Argument `train_epochs` must be a non-negative integer. Received: train_epochs={train_epochs!r}"
        )
    _, layer_class = CELLS[cell]
    keras.utils.set_random_seed(seed)
    x, _ = adding_problem(batch, seed=[seed, 2], length=length)
    readout = np.random.default_rng([seed, 3]).normal(size=units)
    readout = (readout / np.linalg.norm(readout)).astype("float32")
    layer = layer_class(units, name=f"{cell}_probe")
    model = keras.Sequential([keras.Input((length, 2)), layer, keras.layers.Dense(1)])
    result = GradientFlow(cell, length, units, _measure(layer.cell, x, readout, state), state=state)
    if train_epochs:
        from rnnkit.training.optimizer import make_optimizer

        x_train, y_train = adding_problem(train_examples, seed=[seed, 4], length=length)
        model.compile(optimizer=make_optimizer("adam", learning_rate=learning_rate), loss="mse")
        fit = model.fit(x_train, y_train, epochs=train_epochs, batch_size=64, verbose=0)
        result.trained_norms = _measure(layer.cell, x, readout, state)
        result.train_loss = float(fit.history["loss"][-1])
    return result


def gradient_flow_table(results: list[GradientFlow], lags=TABLE_LAGS) -> str:
    """Lags down, cells across (plus ``<cell> trained`` columns where measured)."""
    columns = []
    for result in results:
        columns.append((f"{result.cell} init", result, False))
        if result.trained_norms is not None:
            columns.append((f"{result.cell} trained", result, True))
    width = max([13] + [len(name) for name, _, _ in columns])
    header = f"{'lag':>5} | " + " | ".join(f"{name:>{width}}" for name, _, _ in columns)
    lines = [header, "-" * len(header)]
    for lag in lags:
        cells = [f"{r.at(lag, t):{width}.3e}" if lag < r.length else f"{'-':>{width}}" for _, r, t in columns]
        lines.append(f"{lag:>5} | " + " | ".join(cells))
    return "\n".join(lines)


def plot_gradient_flow(results: list[GradientFlow], path: str | os.PathLike) -> str:
    """Write a PNG: norm (log scale) against lag, one line per cell (dashed: after training).

    Uses a bare ``matplotlib.figure.Figure`` with the Agg canvas, so no display and no
    global pyplot state is touched. Norms that underflow float32 to exactly 0 are left out
    (the line stops) rather than drawn at an arbitrary floor.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, result in enumerate(results):
        color = f"C{index}"
        lags = result.lags[1:]
        axes.plot(lags, _positive(result.norms[1:]), color=color, label=f"{result.cell} (init)")
        if result.trained_norms is not None:
            trained = _positive(result.trained_norms[1:])
            axes.plot(lags, trained, color=color, linestyle="--", label=f"{result.cell} (trained)")
    axes.set_yscale("log")
    axes.set_xlabel("lag i - j (steps)")
    axes.set_ylabel("mean ||dJ^(i)/dh^(j)||")
    axes.set_title(f"Gradient flow through time (units={results[0].units}, T={results[0].length})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=120)
    return os.fspath(path)


def _positive(values: np.ndarray) -> np.ndarray:
    """NaN where a norm underflowed to 0, so a log-scale line ends there."""
    return np.where(values > 0, values, np.nan)
