"""--quantize int8,fp16: the variant graphs' op sets, the accuracy gate (publishing and refusing),
the manifest entries, the Triton step copies and the command line."""

import json
import logging
import os

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rnnkit import layers as rk
from rnnkit_export import export_model, report
from rnnkit_export.variants import load_calibration
from rnnkit_serving.core.repository_format import INT8_EXACT_SESSION_CONFIG

logging.getLogger("tf2onnx").setLevel(logging.ERROR)
VOCAB, CLASSES = 40, 3
FLOAT16 = onnx.TensorProto.FLOAT16


def classifier():
    """Tokens -> masked LSTM -> GRU -> class logits; the head is scaled so classes are well apart
    (an untrained model's scores are near ties, where any rounding flips the arg-max)."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(VOCAB, 8, mask_zero=True, name="embed")(inp)
    h = rk.LSTM(16, return_sequences=True, name="lstm")(h)
    h = rk.GRU(8, name="gru")(h)
    head = keras.layers.Dense(CLASSES, name="head")
    model = keras.Model(inp, {"scores": head(h)})
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 8.0, bias])
    return model


def ops(path):
    counts = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def tokens(rows, steps, seed):
    x = np.random.default_rng(seed).integers(1, VOCAB, size=(rows, steps)).astype("int32")
    x[1::2, steps // 2 :] = 0  # right padding on every other row
    return x


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    model = classifier()
    result = export_model(model, str(base), "clf", quantize="int8,fp16")
    return base, model, result


def test_variant_files_are_published_with_the_version(published):
    base, _, result = published
    names = set(os.listdir(result.path))
    assert {"model.int8.onnx", "model.fp16.onnx", "step.int8.onnx", "step.fp16.onnx"} <= names
    # Triton's sequence-batched step model gets the step variants beside step.onnx
    assert sorted(os.listdir(base / "clf_step" / "1")) == ["step.fp16.onnx", "step.int8.onnx", "step.onnx"]
    manifest = json.load(open(os.path.join(result.path, "rnnkit.json")))
    for file in ("model.int8.onnx", "model.fp16.onnx", "step.int8.onnx", "step.fp16.onnx"):
        assert manifest["files"][file] == os.path.getsize(os.path.join(result.path, file))
    assert not [e for e in os.listdir(base / "clf") if e.startswith(".")]


def test_int8_op_set(published):
    _, _, result = published
    for graph in ("model.int8.onnx", "step.int8.onnx"):
        census = ops(os.path.join(result.path, graph))
        assert census.get("DynamicQuantizeLSTM") == 1 and "LSTM" not in census, census
        assert census.get("MatMulInteger", 0) >= 1 and "MatMul" not in census, census
        assert census.get("GRU") == 1, census  # no quantized GRU in ONNX Runtime: stays float32
        assert "Loop" not in census and "Scan" not in census
    # the float graphs are untouched
    assert "DynamicQuantizeLSTM" not in ops(os.path.join(result.path, "model.onnx"))


def test_fp16_weights_and_float32_interface(published):
    _, _, result = published
    model = onnx.load(os.path.join(result.path, "model.fp16.onnx"))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert weights[lstm.input[1]] == FLOAT16 and weights[lstm.input[2]] == FLOAT16
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"]
    assert [i.type for i in session.get_inputs()] == ["tensor(int32)"]


def test_variants_answer_close_to_keras_on_fresh_inputs(published):
    _, model, result = published
    x = tokens(200, 13, seed=42)
    want = np.asarray(model(x)["scores"])
    for file, limit in (("model.int8.onnx", 0.1), ("model.fp16.onnx", 0.02)):
        options = ort.SessionOptions()
        options.add_session_config_entry(*INT8_EXACT_SESSION_CONFIG)  # as the gate and the server run int8
        session = ort.InferenceSession(os.path.join(result.path, file), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {"tokens": x})[0]
        assert np.abs(got - want).max() < limit * max(1.0, np.abs(want).max()), file
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.97, file


def test_manifest_variant_entries(published):
    _, _, result = published
    manifest = json.load(open(os.path.join(result.path, "rnnkit.json")))
    int8, fp16 = manifest["variants"]["int8"], manifest["variants"]["fp16"]
    assert int8["published"] and int8["reason"] is None
    assert int8["files"] == {"model.onnx": "model.int8.onnx", "step.onnx": "step.int8.onnx"}
    assert fp16["files"] == {"model.onnx": "model.fp16.onnx", "step.onnx": "step.fp16.onnx"}
    assert int8["tolerance"] == report.VARIANT_TOLERANCES["int8"] and int8["min_agreement"] == 0.99
    for key in ("model.onnx/scores", "step.onnx/scores"):
        figures = int8["gate"][key]
        assert figures["rows"] == 8 + 128  # parity cases (1 + 3 + 4 rows) + gate cases (2 x 64)
        assert 0.99 <= figures["argmax_agreement"] <= 1.0
        assert 0 < figures["max_abs_diff"] <= 0.05 * max(1.0, figures["max_abs_fp32"])
    rows = {(r["layer"], r["op"]): r for r in int8["layers"]["model.onnx"]}
    assert rows[("lstm", "LSTM")]["int8"] and rows[("lstm", "LSTM")]["as"] == "DynamicQuantizeLSTM"
    assert rows[("head", "MatMul")]["int8"] and rows[("head", "MatMul")]["as"] == "MatMulInteger"
    assert not rows[("gru", "GRU")]["int8"] and "no quantized GRU" in rows[("gru", "GRU")]["reason"]
    assert "Cast" in {r["op"] for r in fp16["layers"]["model.onnx"]}
    text = result.summary()
    assert "variant int8: published model.int8.onnx, step.int8.onnx" in text
    assert "lstm LSTM->DynamicQuantizeLSTM" in text and "fp32: gru GRU (ONNX Runtime has no quantized GRU" in text


def test_gate_refuses_an_impossible_agreement_and_the_command_says_why(tmp_path, capsys):
    from rnnkit_cli import main

    path = tmp_path / "clf.keras"
    classifier().save(path)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, tokens=tokens(20, 9, seed=5))
    argv = ["export", str(path), "--model_base_path", str(tmp_path / "repo"), "--model_name", "clf"]
    argv += ["--quantize", "int8", "--variant_min_agreement", "1.01", "--calibration_data", str(calibration)]
    assert main(argv) == 0  # the float32 version is published; the variant is not
    out = capsys.readouterr().out
    assert "variant int8: NOT published: model.int8.onnx output 'scores': arg-max agreement with fp32" in out
    assert "is below --variant_min_agreement 1.01" in out
    version = tmp_path / "repo" / "clf" / "1"
    assert "model.onnx" in os.listdir(version) and "model.int8.onnx" not in os.listdir(version)
    assert "step.int8.onnx" not in os.listdir(version)
    assert os.listdir(tmp_path / "repo" / "clf_step" / "1") == ["step.onnx"]
    manifest = json.load(open(version / "rnnkit.json"))
    entry = manifest["variants"]["int8"]
    assert not entry["published"] and entry["files"] == {} and "below --variant_min_agreement 1.01" in entry["reason"]
    assert entry["gate"]["model.onnx/scores"]["rows"] == 8 + 128 + 20  # the calibration rows were compared too
    assert not any("int8" in f for f in manifest["files"])


def test_gate_refuses_a_variant_beyond_the_tolerance(tmp_path, monkeypatch):
    monkeypatch.setitem(report.VARIANT_TOLERANCES, "int8", 1e-9)
    result = export_model(classifier(), str(tmp_path), "clf", quantize="int8", streaming="off")
    entry = result.variants["int8"]
    assert not entry["published"]
    assert "model.int8.onnx output 'scores': max |difference| to fp32" in entry["reason"]
    assert "exceeds the tolerance" in entry["reason"]
    assert "model.int8.onnx" not in os.listdir(result.path)


def test_bad_variant_arguments(tmp_path):
    model = classifier()
    with pytest.raises(ValueError, match=r"argument `quantize` must be a subset of \('int8', 'fp16'\)"):
        export_model(model, str(tmp_path), "m", quantize="int4")
    with pytest.raises(ValueError, match="argument `variant_min_agreement` must be a finite number >= 0"):
        export_model(model, str(tmp_path), "m", quantize="int8", variant_min_agreement=-0.5)
    with pytest.raises(ValueError, match="argument `quantize` needs the 'onnx' format"):
        export_model(model, str(tmp_path), "m", formats="savedmodel", quantize="int8")
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_calibration_file_is_checked(tmp_path):
    from rnnkit_export.analysis.model_io import ModelIO

    inputs = ModelIO.of(classifier()).inputs
    np.savez(tmp_path / "wrong.npz", words=np.ones((2, 3), "int32"))
    with pytest.raises(
        ValueError, match=r"must hold one array per model input \['tokens'\]. Received arrays: \['words'\]"
    ):
        load_calibration(str(tmp_path / "wrong.npz"), inputs)
    np.savez(tmp_path / "rank.npz", tokens=np.ones((2, 3, 4), "int32"))
    with pytest.raises(ValueError, match=r"input 'tokens' expects shape \[None, None\], got \[2, 3, 4\]"):
        load_calibration(str(tmp_path / "rank.npz"), inputs)
    np.savez(tmp_path / "ok.npz", tokens=np.ones((2, 3), "int64"))
    assert load_calibration(str(tmp_path / "ok.npz"), inputs)["tokens"].dtype == np.int32
