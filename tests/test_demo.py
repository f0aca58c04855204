"""`rnnkit demo` builds the stacked residual bidirectional LSTM classifier and runs it."""

import numpy as np

from rnnkit.cli import main
from rnnkit.demo import build_demo_model, demo_batch


def test_demo_prints_summary_and_probabilities(capsys):
    assert main(["demo", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "StackedRNN" in out and "encoder: 3 x bidirectional LSTM (units 16), connection=residual" in out
    assert "class probabilities:" in out


def test_demo_model_is_a_masked_classifier():
    x = demo_batch(seed=1)
    model = build_demo_model(features=x.shape[-1])
    probs = np.asarray(model(x)["probs"])
    assert probs.shape == (x.shape[0], 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Padding does not change the answer: extend every sequence with more zero steps.
    longer = np.concatenate([x, np.zeros((x.shape[0], 5, x.shape[-1]), "float32")], axis=1)
    np.testing.assert_allclose(np.asarray(model(longer)["probs"]), probs, atol=1e-5)
