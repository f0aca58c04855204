"""gradient_flow: exact against finite differences on tiny float64 cells; table and plot."""

import numpy as np
import pytest

from rnnkit.diagnostics import gradient_flow, gradient_flow_table, plot_gradient_flow, state_gradients
from rnnkit.layers import GRUCell, LSTMCell, SimpleRNNCell

CELL_CLASSES = {"simple": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}


def final_readout(cell, x, readout, perturb_step=None, state_index=0, unit=0, eps=0.0):
    """J = sum_b readout . h_b^(T-1), stepping the cell with plain arrays; optionally add eps
    to state `state_index`, unit `unit`, of every example right after step `perturb_step`."""
    batch, length, _ = x.shape
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    states = [np.zeros((batch, s)) for s in sizes]
    for t in range(length):
        _, new = cell(x[:, t], states)
        states = [np.array(s, dtype=np.float64) for s in new]
        if t == perturb_step:
            states[state_index][:, unit] += eps
    return (states[0] * readout).sum(axis=-1)  # one J per example


@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("state", ["h", "full"])
def test_state_gradients_match_finite_differences(kind, state, rng):
    units, length, batch = 3, 6, 2
    cell = CELL_CLASSES[kind](units, dtype="float64")
    x = rng.normal(size=(batch, length, 2))
    readout = rng.normal(size=units)
    cell.build((batch, 2))
    grads = state_gradients(cell, x, readout, state=state)
    n_states = 2 if (kind == "lstm" and state == "full") else 1
    assert grads.shape == (length, batch, units * n_states)
    eps = 1e-6
    for j in range(length):
        for s in range(n_states):
            for k in range(units):
                up = final_readout(cell, x, readout, j, s, k, eps)
                down = final_readout(cell, x, readout, j, s, k, -eps)
                fd = (up - down) / (2 * eps)
                np.testing.assert_allclose(grads[j, :, s * units + k], fd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grads[-1, :, :units], np.broadcast_to(readout, (batch, units)))  # lag 0: dJ/dh = v


def test_gradient_flow_curve_table_and_plot(tmp_path):
    results = [gradient_flow(kind, 24, units=8, batch=4) for kind in ("simple", "lstm", "gru")]
    for result in results:
        assert result.norms.shape == (24,)
        assert result.at(0) == pytest.approx(1.0, rel=1e-5)  # unit readout
        assert np.all(np.isfinite(result.norms)) and result.trained_norms is None
    again = gradient_flow("lstm", 24, units=8, batch=4)
    np.testing.assert_array_equal(again.norms, results[1].norms)
    table = gradient_flow_table(results, lags=(1, 5, 10, 20, 50))
    lines = table.splitlines()
    assert "simple init" in lines[0] and "lstm init" in lines[0] and "gru init" in lines[0]
    assert lines[2].split("|")[0].strip() == "1" and lines[-1].split("|")[1].strip() == "-"  # lag 50 > T
    path = plot_gradient_flow(results, tmp_path / "flow.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_gradient_flow_after_training():
    result = gradient_flow("gru", 16, units=4, batch=2, train_epochs=1, train_examples=64)
    assert result.trained_norms.shape == (16,) and np.isfinite(result.train_loss)
    assert "gru trained" in gradient_flow_table([result], lags=(1, 5))


def test_gradient_flow_errors_are_pinned():
    with pytest.raises(
        ValueError, match=r"Argument `cell` must be one of \('simple', 'lstm', 'gru'\)\. Received: cell='lsmt'"
    ):
        gradient_flow("lsmt")
    with pytest.raises(ValueError, match=r"Argument `state` must be one of \('h', 'full'\)\. Received: state='c'"):
        gradient_flow("lstm", state="c")
    with pytest.raises(ValueError, match=r"Argument `length` must be an integer >= 2\. Received: length=1"):
        gradient_flow("gru", 1)
