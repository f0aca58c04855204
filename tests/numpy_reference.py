"""An independent NumPy implementation of the cell equations in rnnkit's docstrings.

It shares nothing with rnnkit's cells but the gate-order constants: every gate block is
sliced by its letter's position in the order string, so a permutation bug in either
implementation shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np

from rnnkit import gate_order


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACTIVATIONS = {"tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda x: np.maximum(x, 0.0), "linear": lambda x: x}


def block(matrix, order: str, gate: str, units: int):
    k = order.index(gate)
    return matrix[..., k * units : (k + 1) * units]


def simple_step(x, state, w, act="tanh"):
    (h,) = state
    kernel, recurrent, bias = w["kernel"], w["recurrent_kernel"], w.get("bias")
    z = x @ kernel + h @ recurrent + (0.0 if bias is None else bias)
    h = ACTIVATIONS[act](z)
    return h, (h,)


def lstm_step(x, state, w, act="tanh", rec_act="sigmoid"):
    h, c = state
    order, units = gate_order.KERAS_LSTM, h.shape[-1]
    f_act, g_act = ACTIVATIONS[rec_act], ACTIVATIONS[act]
    bias = w.get("bias")

    def pre(gate):
        out = x @ block(w["kernel"], order, gate, units) + h @ block(w["recurrent_kernel"], order, gate, units)
        return out if bias is None else out + block(bias, order, gate, units)

    p = w.get("peephole_kernel")
    peep = {} if p is None else {g: p[gate_order.RNNKIT_PEEPHOLE.index(g)] for g in "ifo"}
    i = f_act(pre("i") + (peep["i"] * c if peep else 0.0))
    f = f_act(pre("f") + (peep["f"] * c if peep else 0.0))
    c_new = f * c + i * g_act(pre("c"))
    o = f_act(pre("o") + (peep["o"] * c_new if peep else 0.0))
    h_new = o * g_act(c_new)
    return h_new, (h_new, c_new)


def gru_step(x, state, w, reset_after=True, act="tanh", rec_act="sigmoid"):
    (h,) = state
    order, units = gate_order.KERAS_GRU, h.shape[-1]
    f_act, g_act = ACTIVATIONS[rec_act], ACTIVATIONS[act]
    bias = w.get("bias")
    if bias is None:
        b_in = np.zeros(3 * units)
        b_rec = np.zeros(3 * units)
    elif reset_after:
        b_in, b_rec = bias[0], bias[1]
    else:
        b_in, b_rec = bias, np.zeros(3 * units)

    def x_part(g):
        return x @ block(w["kernel"], order, g, units) + block(b_in, order, g, units)

    def h_part(g, hh):
        return hh @ block(w["recurrent_kernel"], order, g, units)

    z = f_act(x_part("z") + h_part("z", h) + block(b_rec, order, "z", units))
    r = f_act(x_part("r") + h_part("r", h) + block(b_rec, order, "r", units))
    if reset_after:
        cand = g_act(x_part("h") + r * (h_part("h", h) + block(b_rec, order, "h", units)))
    else:
        cand = g_act(x_part("h") + h_part("h", r * h))
    h_new = z * h + (1.0 - z) * cand
    return h_new, (h_new,)


def run(step, xs, state, mask=None, go_backwards=False, zero_output=False):
    """Time loop with Keras semantics: masked steps keep the state and repeat the last
    output (or write zeros with zero_output). Returns (outputs [B,T,H], last, state)."""
    xs = np.asarray(xs, dtype=np.float64)
    batch, steps = xs.shape[:2]
    mask = np.ones((batch, steps), bool) if mask is None else np.asarray(mask, bool)
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    state = tuple(np.asarray(s, np.float64) for s in state)
    prev_out = np.zeros_like(state[0])
    outputs = []
    for t in order:
        out, new_state = step(xs[:, t], state)
        m = mask[:, t][:, None]
        state = tuple(np.where(m, n, s) for n, s in zip(new_state, state))
        out = np.where(m, out, 0.0 if zero_output else prev_out)
        prev_out = out
        outputs.append(out)
    return np.stack(outputs, 1), outputs[-1], state
