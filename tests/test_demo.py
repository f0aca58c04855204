"""`rnnkit demo`: the main job end to end (short training), and the demo architecture."""

import json

import numpy as np

from rnnkit_cli import main
from rnnkit_cli.demo import build_demo_model, demo_batch


def test_demo_trains_diagnoses_and_exports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--seed", "1", "--epochs", "2", "--out", str(out), "--no-serve"]) == 0
    text = capsys.readouterr().out
    assert "1. train a stacked residual bidirectional LSTM" in text and "validation accuracy" in text
    assert "StackedRNN" in text
    assert "2. gradient flow" in text and (out / "gradient_flow.png").stat().st_size > 1000
    assert "3. export" in text and "parity ok" in text
    manifest = json.loads((out / "models" / "sentiment" / "1" / "rnnkit.json").read_text())
    assert manifest["inputs"][0]["name"] == "sequences" and manifest["inputs"][0]["shape"][1] is None
    assert manifest["op_census"]["LSTM"] == 2 and "Loop" not in manifest["op_census"]
    assert json.loads((out / "run" / "history.json").read_text())["history"]["loss"]


def test_demo_model_is_a_masked_classifier():
    x = demo_batch(seed=1)
    model = build_demo_model(features=x.shape[-1])
    probs = np.asarray(model(x)["probs"])
    assert probs.shape == (x.shape[0], 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Padding does not change the answer: extend every sequence with more zero steps.
    longer = np.concatenate([x, np.zeros((x.shape[0], 5, x.shape[-1]), "float32")], axis=1)
    np.testing.assert_allclose(np.asarray(model(longer)["probs"]), probs, atol=1e-5)
